"""The ``hf`` backend: transformers ``generate``, batched with left padding, in-process
(:class:`~psi_ray.backends.hf_core.CompletionEngine`).

Slower than vLLM on most machines but needs nothing beyond torch and transformers; also the reference the
vLLM backend is checked against (same greedy tokens). Options: ``batch_size`` (default 16), ``threads``
(torch threads; default: all cores), ``device`` (``cpu``/``cuda``; default: CUDA if present), ``dtype``
(default float32 on CPU, bfloat16 on CUDA). Unlike vLLM it samples from the 50 likeliest tokens (transformers'
default, which this backend always used); like vLLM it counts the end-of-sequence token in a finished answer's
tokens and stops a sequence once a stop string appears.
"""

from __future__ import annotations

import os

from psi_ray.backends.base import Generation, Prompt, SamplingParams, flatten_n, render_prompt
from psi_ray.backends.hf_core import CompletionEngine, GenSettings
from psi_ray.runtime import default_device

# The hf backend has always sampled with transformers' default top-k of 50 (vLLM and the Serve app use the
# whole vocabulary); kept so that jobs on this backend write what they always wrote.
HF_TOP_K = 50


class HFBackend:
    name = "hf"

    def __init__(self, model: str, batch_size: int = 16, threads: int | None = None, device: str | None = None,
                 dtype: str | None = None):
        from psi_ray.models import resolve_model

        self.model = model
        self.path = resolve_model(model)
        self.batch_size = batch_size
        device = device or default_device()
        if device == "cpu" and not threads:  # Ray sets OMP_NUM_THREADS=1 in an actor with a CPU share below 1
            threads = len(os.sched_getaffinity(0))
        self.core = CompletionEngine(self.path, threads=threads, device=device, dtype=dtype)
        self.device = self.core.device
        self.tokenizer = self.core.tokenizer

    @property
    def resources(self) -> dict[str, float]:
        return {"GPU": 1.0} if self.device == "cuda" else {"CPU": 1.0}

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[Generation]:
        """Batches of ``batch_size`` prompts; batch ``b`` is seeded with ``seed + its offset``, so a seeded
        job gives the same text however many engines share it."""
        ids = [self.core.encode(render_prompt(self.tokenizer, p)) for p in flatten_n(prompts, params)]
        out: list[Generation] = []
        for start in range(0, len(ids), self.batch_size):
            batch = ids[start : start + self.batch_size]
            settings = GenSettings(params.max_tokens, params.temperature, params.top_p, tuple(params.stop or ()),
                                   None if params.seed is None else params.seed + start, top_k=HF_TOP_K)
            for prompt, c in zip(batch, self.core.generate(batch, [settings] * len(batch)), strict=True):
                out.append(Generation(c.text, c.finish_reason, len(prompt), len(c.token_ids), token_ids=c.token_ids))
        return out

    def close(self) -> None:
        self.core = None
