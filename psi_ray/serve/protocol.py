"""The OpenAI-compatible requests the Serve app takes, the limits it sets on them, and its JSON errors.

:class:`~psi_ray.serve.guard.Guard` validates each completions and chat body here before vLLM sees it; anything
wrong (invalid JSON, a huge integer, deep nesting, a missing field, a wrong type, an out-of-range seed or
temperature, too much work) becomes a 4xx with ``{"error": {"message", "type", "param", "code"}}`` as OpenAI sends
it. What vLLM checks itself (a prompt past the context, token ids outside the vocabulary, roles) it answers with
its own 400. Pure: the tests call it without Ray or a model.
"""

from __future__ import annotations

import hmac
import json

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MAX_TOP_LOGPROBS = 20
INT64 = 2**63  # seeds outside [-2**63, 2**63) cannot seed a generator (torch and vLLM refuse them)
# Work one request may ask for. One request of 300 prompts x n 16 (4,800 generations) held a replica for minutes
# while every other client waited; lm-eval sends `batch_size` prompts a request (psi-ray eval: its concurrency).
MAX_GENERATIONS = 256  # prompts x n
MAX_STOP = 4  # OpenAI's limit on stop strings
MAX_BODY_BYTES = 8 * 1024 * 1024  # larger bodies get 413 before they are parsed


class APIError(Exception):
    """An error the client caused (or an auth failure), returned as JSON with ``status``."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}}


class _Request(BaseModel):
    """What completions and chat take, as vLLM takes it (null for a default), with the limits vLLM does not set."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-INT64, lt=INT64)
    stream: bool | None = False
    response_format: dict | None = None

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, v):
        if isinstance(v, list) and len(v) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings are allowed, got {len(v)}")
        return v


class CompletionRequest(_Request):
    """``POST /v1/completions``: ``prompt`` is a string, a list of strings, token ids, or a list of those."""

    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool | None = False
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if not p:
            raise APIError(400, "prompt is empty", param="prompt")
        out = [list(p)] if all(isinstance(x, int) for x in p) else list(p)
        self.check_work(len(out))
        return out

    def check_work(self, prompts: int) -> None:
        """400 when ``prompts`` x ``n`` is more generations than one request may ask for."""
        n = self.n or 1  # null: the default
        if prompts * n > MAX_GENERATIONS:
            raise APIError(400, f"{prompts} prompt(s) x n={n} is {prompts * n} generations; one request "
                                f"may ask for at most {MAX_GENERATIONS}: split it into several requests",
                           param="prompt" if prompts > 1 else "n")


class ChatRequest(_Request):
    """``POST /v1/chat/completions``: a message's content may be a string, a list of parts, or null (vLLM checks
    roles and parts)."""

    messages: list[dict] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=0)


def parse(body: bytes, schema: type[BaseModel]):
    """Raw request bytes → a validated request, or an :class:`APIError` that says what is wrong."""
    check_body_size(len(body))
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


def check_body_size(size: int) -> None:
    """413 for a body over :data:`MAX_BODY_BYTES`."""
    if size > MAX_BODY_BYTES:
        raise APIError(413, f"request body is {size:,} bytes; at most {MAX_BODY_BYTES:,} are accepted")


def check_auth(header: str | None, api_key: str | None) -> None:
    """Raise 401 unless ``Authorization: Bearer <api_key>`` matches (no key configured: everyone may call)."""
    if not api_key:
        return
    if not hmac.compare_digest((header or "").encode(), f"Bearer {api_key}".encode()):  # no timing oracle
        raise APIError(401, "missing or wrong API key (send 'Authorization: Bearer <key>')",
                       kind="authentication_error")
