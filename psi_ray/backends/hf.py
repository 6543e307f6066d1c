"""The ``hf`` backend: transformers ``generate``, batched with left padding, in-process.

Slower than vLLM on most machines but needs nothing beyond torch and transformers; also the reference the
vLLM backend is checked against (same greedy tokens). Options: ``batch_size`` (default 16), ``threads``
(torch threads; default: all cores), ``device`` (``cpu``/``cuda``; default: CUDA if present).
"""

from __future__ import annotations

import os

from psi_ray.backends.base import Generation, Prompt, SamplingParams, cut_at_stop, flatten_n, render_prompt
from psi_ray.errors import require
from psi_ray.runtime import default_device


class HFBackend:
    name = "hf"

    def __init__(self, model: str, batch_size: int = 16, threads: int | None = None, device: str | None = None,
                 dtype: str | None = None, **_ignored):
        from psi_ray.models import resolve_model

        torch = require("torch", "the hf backend")
        transformers = require("transformers", "the hf backend")
        self.model = model
        self.path = resolve_model(model)
        self.batch_size = batch_size
        self.device = device or default_device()
        if threads or self.device == "cpu":  # Ray sets OMP_NUM_THREADS=1 in an actor with a CPU share below 1
            torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
        torch_dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if self.device == "cuda" else torch.float32)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.lm = transformers.AutoModelForCausalLM.from_pretrained(self.path, dtype=torch_dtype).to(self.device)
        self.lm.eval()
        self._torch = torch

    @property
    def resources(self) -> dict[str, float]:
        return {"GPU": 1.0} if self.device == "cuda" else {"CPU": 1.0}

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[Generation]:
        texts = [render_prompt(self.tokenizer, p) for p in flatten_n(prompts, params)]
        out: list[Generation] = []
        for start in range(0, len(texts), self.batch_size):
            out.extend(self._generate_batch(texts[start : start + self.batch_size], params, start))
        return out

    def _generate_batch(self, texts: list[str], params: SamplingParams, offset: int) -> list[Generation]:
        torch = self._torch
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        kwargs = dict(max_new_tokens=params.max_tokens, pad_token_id=self.tokenizer.pad_token_id)
        if params.temperature > 0:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
            if params.seed is not None:
                torch.manual_seed(params.seed + offset)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            seqs = self.lm.generate(**enc, **kwargs)
        prompt_len = enc["input_ids"].shape[1]
        eos = self.lm.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}
        gens = []
        for i, row in enumerate(seqs[:, prompt_len:].tolist()):
            ids, finish = [], "length"
            for t in row:
                if t in eos_ids:
                    finish = "stop"
                    break
                ids.append(t)
            text, stopped = cut_at_stop(self.tokenizer.decode(ids, skip_special_tokens=True), params.stop)
            gens.append(Generation(text, "stop" if stopped else finish, int(enc["attention_mask"][i].sum()),
                                   len(ids), token_ids=ids))
        return gens

    def close(self) -> None:
        self.lm = None
