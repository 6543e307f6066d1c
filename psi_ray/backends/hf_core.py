"""The ``hf`` backend's generation core: transformers, batched generation with per-request settings.

``generate`` takes token-id prompts (callers tokenize strings and render chat messages first) and a list of
per-request settings, runs one left-padded ``generate`` call per group of equal settings, and cuts each output
at its stop strings, ending sequences and seeding them as vLLM does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from psi_ray.backends.base import cut_at_stop
from psi_ray.errors import require
from psi_ray.runtime import default_device

# Below this temperature a request is greedy, as vLLM treats it; dividing logits by 1e-45 would overflow them to
# inf and fail the whole batch the request shares.
SAMPLING_EPS = 1e-5


@dataclass(frozen=True)
class GenSettings:
    """What one completion asks for; requests with equal settings share a ``generate`` call.

    ``seed`` does not split batches: a batch is seeded with the first seed among its requests, so a seeded
    request repeats exactly when it runs alone (or in the same batch again).
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = field(default=None, compare=False)
    top_k: int | None = None  # None: the whole vocabulary, as vLLM and the OpenAI API sample


@dataclass
class Completion:
    token_ids: list[int]
    text: str
    finish_reason: str


class CompletionEngine:
    """One HF causal LM in float32 (CPU) or bf16 (CUDA) unless ``dtype`` says otherwise, with its tokenizer."""

    def __init__(self, model_dir: str, threads: int | None = None, device: str | None = None,
                 dtype: str | None = None):
        torch = require("torch", "running a model with transformers")
        transformers = require("transformers", "running a model with transformers")
        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.device = device or default_device()
        dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if self.device == "cuda" else torch.float32)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
        self.lm = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(self.device).eval()
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else \
            self.tokenizer.eos_token_id
        eos = self.lm.generation_config.eos_token_id
        self.eos_ids = {t for t in (eos if isinstance(eos, list) else [eos]) if t is not None}
        if self.tokenizer.eos_token_id is not None:
            self.eos_ids.add(self.tokenizer.eos_token_id)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def generate(self, prompts: list[list[int]], settings: list[GenSettings]) -> list[Completion]:
        """One completion per prompt; prompts with equal settings run as one batch."""
        out: list[Completion | None] = [None] * len(prompts)
        groups: dict[GenSettings, list[int]] = {}
        for i, s in enumerate(settings):
            groups.setdefault(s, []).append(i)
        for s, members in groups.items():
            if s.max_tokens == 0:
                for i in members:
                    out[i] = Completion([], "", "length")
                continue
            seed = next((settings[i].seed for i in members if settings[i].seed is not None), None)
            group = [prompts[i] for i in members]
            for i, c in zip(members, self._generate_group(group, s, seed), strict=True):
                out[i] = c
        return out  # type: ignore[return-value]

    def _generate_group(self, prompts: list[list[int]], s: GenSettings, seed: int | None) -> list[Completion]:
        torch = self.torch
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding: every prompt ends where generation starts
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        kwargs = dict(max_new_tokens=s.max_tokens, pad_token_id=self.pad_id)
        if s.temperature >= SAMPLING_EPS:
            kwargs.update(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k)
            if seed is not None:
                torch.manual_seed(seed)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if s.stop:
            kwargs["stopping_criteria"] = [_StopOnText(self.tokenizer, width, s.stop)]
        with torch.inference_mode():
            seqs = self.lm.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), **kwargs)
        results = []
        for row in seqs[:, width:].tolist():
            new, finish = [], "length"
            for t in row:
                new.append(t)  # an end-of-sequence token is kept (not in the text), as vLLM reports it
                if t in self.eos_ids:
                    finish = "stop"
                    break
            text, stopped = cut_at_stop(self.decode(new), s.stop)
            if stopped:
                finish = "stop"
                new = self.encode(text)
            results.append(Completion(new, text, finish))
        return results


class _StopOnText:
    """Finish a sequence once its generated text contains a stop string (OpenAI semantics: anywhere in the
    text, not only at a token boundary, which transformers' ``stop_strings`` does not promise)."""

    def __init__(self, tokenizer, prompt_width: int, stop: tuple[str, ...]):
        self.tokenizer, self.width, self.stop = tokenizer, prompt_width, stop

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        texts = self.tokenizer.batch_decode(input_ids[:, self.width:], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stop) for t in texts], device=input_ids.device)
