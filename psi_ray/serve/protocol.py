"""The OpenAI-compatible request and response shapes the Serve app speaks, and its JSON errors.

Requests are validated with pydantic; anything wrong (invalid JSON, a missing field, a wrong type, a
``max_tokens`` past the model's context) becomes a 4xx with ``{"error": {"message", "type", "param",
"code"}}`` as OpenAI sends it. Pure: the tests call it without Ray or a model.
"""

from __future__ import annotations

import hmac
import json
import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MAX_TOP_LOGPROBS = 20
INT64 = 2**63  # seeds outside [-2**63, 2**63) cannot seed a generator (torch and vLLM refuse them)


class APIError(Exception):
    """An error the client caused (or an auth failure), returned as JSON with ``status``."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}}


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = Field(None, ge=0)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-INT64, lt=INT64)
    stream: bool = False

    @field_validator("stream")
    @classmethod
    def _no_stream(cls, v):
        if v:
            raise ValueError("streaming is not supported by this server; send stream: false")
        return v

    def stops(self) -> tuple[str, ...]:
        if not self.stop:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(s for s in self.stop if s)


class CompletionRequest(_Request):
    """``POST /v1/completions``: ``prompt`` is a string, a list of strings, token ids, or a list of those."""

    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    max_tokens: int | None = Field(16, ge=0)

    @field_validator("max_tokens")
    @classmethod
    def _default_budget(cls, v):
        return 16 if v is None else v  # OpenAI treats null as the default

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if not p:
            raise APIError(400, "prompt is empty", param="prompt")
        if all(isinstance(x, int) for x in p):
            return [list(p)]
        return list(p)


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class ChatRequest(_Request):
    """``POST /v1/chat/completions``."""

    messages: list[Message] = Field(min_length=1)


def parse(body: bytes, schema: type[BaseModel]):
    """Raw request bytes → a validated request, or an :class:`APIError` that says what is wrong."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:  # ValueError: malformed, or an integer past 4,300 digits
        raise APIError(400, f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise APIError(400, "request body is not valid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise APIError(400, f"request body must be a JSON object, got {type(data).__name__}")
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or None
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())
        raise APIError(400, problems, param=field) from None


def check_auth(header: str | None, api_key: str | None) -> None:
    """Raise 401 unless ``Authorization: Bearer <api_key>`` matches (no key configured: everyone may call)."""
    if not api_key:
        return
    if not hmac.compare_digest((header or "").encode(), f"Bearer {api_key}".encode()):  # no timing oracle
        raise APIError(401, "missing or wrong API key (send 'Authorization: Bearer <key>')",
                       kind="authentication_error")


def check_budget(prompt_len: int, max_tokens: int, max_model_len: int, param: str = "max_tokens") -> None:
    if prompt_len + max_tokens > max_model_len:
        raise APIError(400, f"max_tokens ({max_tokens}) plus the prompt ({prompt_len} tokens) exceeds the "
                            f"model's context of {max_model_len} tokens", param=param)


def completion_response(model: str, choices: list[dict], prompt_tokens: int, kind: str = "text_completion") -> dict:
    completion_tokens = sum(c.pop("_tokens", 0) for c in choices)
    return {
        "id": f"{'cmpl' if kind == 'text_completion' else 'chatcmpl'}-{uuid.uuid4().hex[:24]}",
        "object": kind, "created": int(time.time()), "model": model, "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


def models_response(name: str) -> dict:
    return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "psi-ray"}]}
