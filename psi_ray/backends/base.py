"""The one generation interface every engine adapter implements.

``Backend.generate(prompts, params) -> list[Generation]``: a prompt is either chat messages
(``[{"role": ..., "content": ...}, ...]``, rendered with the model's chat template) or a plain string
(sent as-is, for base models). Each adapter converts at its own edge; generic code never asks which
engine it holds. Failures of single requests come back as ``Generation.error`` so a batch never crashes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Protocol, runtime_checkable

Message = dict[str, str]
Prompt = str | list[Message]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample: the subset of knobs every engine understands."""

    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 256
    n: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        if self.n < 1:
            raise ValueError("n must be >= 1")
        object.__setattr__(self, "stop", tuple(self.stop))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d


@dataclass
class Generation:
    """One completion. ``error`` is set (and ``text`` empty) when the request failed after retries."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None
    token_ids: list[int] = field(default_factory=list)


@runtime_checkable
class Backend(Protocol):
    """An engine that turns prompts into generations.

    ``resources`` says what one instance needs from Ray (e.g. ``{"CPU": 1}`` or ``{"GPU": 1}``), so the
    pipeline can place it without knowing which engine it is.
    """

    name: str
    model: str

    @property
    def resources(self) -> dict[str, float]: ...

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[Generation]: ...

    def close(self) -> None: ...


def flatten_n(prompts: list[Prompt], params: SamplingParams) -> list[Prompt]:
    """Repeat each prompt ``n`` times, for engines that take one sample per request."""
    return [p for p in prompts for _ in range(params.n)]


def render_prompt(tokenizer, prompt: Prompt) -> str:
    """Chat messages → the model's chat template text (with the assistant turn opened); strings pass as-is.

    A last message with role ``assistant`` is a started answer that the model continues.

    Both local engines render through this one function, so they see the same prompt text.
    """
    if isinstance(prompt, str):
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        # A base model: join the turns as plain text and let it continue after the last one.
        return "\n\n".join(m["content"] for m in prompt) + "\n\n"
    if prompt[-1]["role"] == "assistant":  # a started answer: the model continues it
        return tokenizer.apply_chat_template(list(prompt), tokenize=False, continue_final_message=True)
    return tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """Truncate ``text`` at the first stop string; say whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
