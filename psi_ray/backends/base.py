"""The one generation interface every engine adapter implements.

``Backend.generate(prompts, params) -> list[Generation]``: a prompt is either chat messages
(``[{"role": ..., "content": ...}, ...]``, rendered with the model's chat template) or a plain string
(sent as-is, for base models). Each adapter converts at its own edge; generic code never asks which
engine it holds. Failures of single requests come back as ``Generation.error`` so a batch never crashes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit

from psi_ray.errors import PsiRayError

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


def is_loopback_host(host: str | None) -> bool:
    """``localhost`` or a loopback IP literal (127.0.0.0/8, ::1, ::ffff:127.x). Names are not resolved: a DNS
    answer can change between this check and the request, so only what is loopback by definition counts."""
    if not host:
        return False
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


def sends_in_clear(url: str) -> bool:
    """True when a request to ``url`` would cross a network unencrypted: plain ``http://`` (or no scheme,
    which HTTP clients read as http) to a host that is not this machine. A bearer secret sent that way can be
    read by anyone on the path, so callers refuse to attach one unless the user says so."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    return parts.scheme.lower() != "https" and not is_loopback_host(parts.hostname)


def check_key_transport(url: str, key: str | None, key_env: str | None, allow_insecure: bool, switch: str) -> None:
    """Refuse (``PsiRayError``) to send ``key`` (read from ``$key_env``) to ``url`` over plain http to another
    host, unless ``allow_insecure`` (the user's explicit ``switch``) says so."""
    if key and sends_in_clear(url) and not allow_insecure:
        host = urlsplit(url if "://" in url else f"http://{url}").hostname
        raise PsiRayError(
            f"refusing to send the API key from ${key_env} over plain http to {host} ({url}), where anyone on "
            f"the network path can read it; use https://, a loopback address (an SSH tunnel), unset the key, or "
            f"pass {switch}")
