"""The ``openai`` backend: any OpenAI-compatible HTTP server (vLLM's ``api_server``, Ray Serve, a hosted API).

Why: the large "teacher" model often runs elsewhere, behind a server; this adapter lets the same pipeline
call it without knowing what serves it. Chat-message prompts go to ``POST {base_url}/chat/completions``
(the server applies the chat template), plain strings to ``POST {base_url}/completions``. One request per
prompt carries all ``n`` samples; at most ``concurrency`` requests are in flight (a thread pool over one
``httpx`` client).

Failures are data, not exceptions: 429, 5xx, timeouts, connection errors and malformed JSON are retried
with exponential backoff and jitter (``max_retries`` times); whatever still fails, or any other 4xx at
once, becomes ``Generation(text="", error=...)`` on that prompt's ``n`` rows. Output order matches input
order, ``n`` consecutive generations per prompt.

The API key is read from the environment variable named by ``api_key_env`` (default ``OPENAI_API_KEY``)
when the backend is built and again when the first request is made, and lives only in the HTTP client's
headers: it never appears in ``repr``, logs or error messages. A key is never sent over plain ``http://`` to a
host other than this machine (anyone on the path could read it): such a backend is refused with one line
unless the job sets ``allow_insecure_key: true``; use ``https://``, a loopback address (an SSH tunnel or
``kubectl port-forward``), or no key. :meth:`OpenAIBackend.check` probes ``GET {base_url}/models`` so the CLI
can fail early with one line when the endpoint is unreachable.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx

from psi_ray.backends.base import Generation, Prompt, SamplingParams, check_key_transport
from psi_ray.errors import PsiRayError

_MAX_BACKOFF_S = 30.0
_ERROR_BODY_CHARS = 300


class _Retryable(Exception):
    """A failure worth another attempt (rate limit, server error, timeout, broken response)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class _Permanent(Exception):
    """A failure no retry will fix (a 4xx other than 429)."""


class OpenAIBackend:
    name = "openai"

    def __init__(self, model: str, base_url: str = "http://127.0.0.1:8000/v1", api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 16, max_retries: int = 4, timeout: float = 60.0, backoff: float = 0.5,
                 allow_insecure_key: bool = False):
        if concurrency < 1:
            raise PsiRayError("openai backend: concurrency must be >= 1")
        if max_retries < 0:
            raise PsiRayError("openai backend: max_retries must be >= 0")
        if not timeout > 0 or not backoff >= 0:
            raise PsiRayError("openai backend: timeout must be > 0 and backoff >= 0")
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PsiRayError(f"openai backend: base_url '{base_url}' is not an http:// or https:// URL "
                              "(e.g. http://127.0.0.1:8000/v1)")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout = timeout
        self.backoff = backoff
        self.allow_insecure_key = allow_insecure_key
        self._client: httpx.Client | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._api_key()  # refuse an insecure key now, before any stage starts, not at the first request

    def __repr__(self) -> str:
        return (f"OpenAIBackend(model={self.model!r}, base_url={self.base_url!r}, "
                f"api_key_env={self.api_key_env!r}, concurrency={self.concurrency})")

    __str__ = __repr__

    def __getstate__(self):
        # Ray may ship a backend to another process: send the settings, never a live client (nor its key).
        state = self.__dict__.copy()
        state.update(_client=None, _pool=None, _lock=None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def resources(self) -> dict[str, float]:
        return {"CPU": 0.1}

    # -- public API ---------------------------------------------------------------------------------------

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[Generation]:
        client, pool = self._session()
        groups = list(pool.map(lambda p: self._one_prompt(client, p, params), prompts))
        return [g for group in groups for g in group]

    def check(self, timeout: float | None = None) -> list[str]:
        """``GET {base_url}/models``; return the served model ids, or raise a one-line :class:`PsiRayError`."""
        served = served_models(self.base_url, client=self._session()[0], timeout=timeout or min(self.timeout, 10.0),
                               scrub=self._scrub)
        if served and self.model not in served:
            raise PsiRayError(f"model '{self.model}' is not served at {self.base_url}; "
                              f"it serves: {', '.join(served)}")
        return served

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            if self._client is not None:
                self._client.close()
            self._client, self._pool = None, None

    # -- one request per prompt ---------------------------------------------------------------------------

    def _session(self) -> tuple[httpx.Client, ThreadPoolExecutor]:
        """The shared client and pool, built on first use in the process that uses them."""
        with self._lock:
            if self._client is None:
                headers = {"Content-Type": "application/json"}
                key = self._api_key()  # read again: this may be another process (a Ray worker), another env
                if key:
                    headers["Authorization"] = f"Bearer {key}"
                limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
                self._client = httpx.Client(headers=headers, timeout=self.timeout, limits=limits)
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="psi-ray-openai")
            return self._client, self._pool

    def _one_prompt(self, client: httpx.Client, prompt: Prompt, params: SamplingParams) -> list[Generation]:
        url, body = self._request(prompt, params)
        chat = isinstance(prompt, list)
        last: _Retryable | None = None
        for attempt in range(self.max_retries + 1):
            if last is not None:
                time.sleep(self._delay(attempt, last.retry_after))
            try:
                return self._parse(self._post(client, url, body), params.n, chat)
            except _Permanent as exc:
                return self._errors(str(exc), params.n)
            except _Retryable as exc:
                last = exc
            except Exception as exc:  # a bug or a surprise: still one row's error, never the batch's
                return self._errors(f"unexpected {type(exc).__name__}: {self._describe(exc)}", params.n)
        return self._errors(f"{last} (gave up after {self.max_retries + 1} attempts)", params.n)

    def _request(self, prompt: Prompt, params: SamplingParams) -> tuple[str, dict]:
        body: dict = {"model": self.model, "temperature": params.temperature, "top_p": params.top_p,
                      "max_tokens": params.max_tokens, "n": params.n}
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop:
            body["stop"] = list(params.stop)
        if isinstance(prompt, str):
            return f"{self.base_url}/completions", {**body, "prompt": prompt}
        return f"{self.base_url}/chat/completions", {**body, "messages": [dict(m) for m in prompt]}

    def _post(self, client: httpx.Client, url: str, body: dict) -> dict:
        try:
            resp = client.post(url, json=body)
        except httpx.TimeoutException as exc:
            raise _Retryable(f"timeout after {self.timeout:g}s ({type(exc).__name__})") from None
        except httpx.RequestError as exc:  # connect/read/write errors, protocol errors, undecodable bodies
            raise _Retryable(f"connection error: {self._describe(exc)}") from None
        if resp.status_code == 429 or resp.status_code >= 500:
            raise _Retryable(f"HTTP {resp.status_code}: {self._excerpt(resp.text)}", _retry_after(resp))
        if resp.status_code >= 400:
            raise _Permanent(f"HTTP {resp.status_code}: {self._excerpt(resp.text)}")
        try:
            return resp.json()
        except ValueError:
            raise _Retryable(f"malformed JSON in HTTP {resp.status_code} response: "
                             f"{self._excerpt(resp.text)}") from None

    def _parse(self, data: dict, n: int, chat: bool) -> list[Generation]:
        try:
            choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
            texts = [(c["message"].get("content") if chat else c["text"]) or "" for c in choices]
            finishes = [c.get("finish_reason") for c in choices]
            usage = data.get("usage") or {}
            prompt_tokens = int(usage.get("prompt_tokens") or 0)
            completion_tokens = int(usage.get("completion_tokens") or 0)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise _Retryable(f"malformed response ({type(exc).__name__}: {exc}): "
                             f"{self._excerpt(json.dumps(data))}") from None
        if not choices:
            raise _Retryable("malformed response: no choices")
        # Servers report one completion total per request; share it out (the remainder to the first choices).
        share, extra = divmod(completion_tokens, len(choices))
        gens = [Generation(text, finish, prompt_tokens, share + (i < extra))
                for i, (text, finish) in enumerate(zip(texts, finishes, strict=True))][:n]
        if len(gens) < n:
            gens += self._errors(f"server returned {len(choices)} of {n} choices", n - len(gens))
        return gens

    # -- helpers ------------------------------------------------------------------------------------------

    def _api_key(self) -> str | None:
        """The key in ``$api_key_env`` (None when unset or empty); refused for plain http to another host."""
        key = (os.environ.get(self.api_key_env) or "").strip() if self.api_key_env else ""
        check_key_transport(self.base_url, key, self.api_key_env, self.allow_insecure_key,
                            "the option allow_insecure_key: true (openai backend)")
        return key or None

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter (0.5x-1.5x), at least the server's Retry-After when it sent one."""
        delay = min(self.backoff * 2 ** (attempt - 1), _MAX_BACKOFF_S) * (0.5 + random.random())
        return max(delay, min(retry_after or 0.0, _MAX_BACKOFF_S))

    @staticmethod
    def _errors(message: str, n: int) -> list[Generation]:
        return [Generation(text="", error=message) for _ in range(n)]

    def _excerpt(self, text: str) -> str:
        return _excerpt(text, self._scrub)

    def _describe(self, exc: Exception) -> str:
        return _describe(exc, self._scrub)

    def _scrub(self, text: str) -> str:
        """Hide the API key should a server (or an exception) echo it back."""
        keys = {os.environ.get(self.api_key_env, "") if self.api_key_env else ""}
        if self._client is not None:
            keys.add(self._client.headers.get("authorization", "").removeprefix("Bearer "))
        for key in keys - {""}:
            text = text.replace(key, "***")
        return text


def served_models(base_url: str, api_key: str | None = None, timeout: float = 10.0, client: httpx.Client | None = None,
                  scrub=lambda text: text) -> list[str]:
    """``GET {base_url}/models`` → the ids it serves; anything else is one :class:`PsiRayError` line.

    The one probe of an OpenAI-compatible endpoint: the openai backend's check, Serve's readiness wait and
    eval's served-name lookup all use it. ``client`` (with its own auth header) or ``api_key`` authenticates;
    ``scrub`` hides a key an error text might echo.
    """
    url = f"{base_url}/models"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    scrub_key = (lambda text: scrub(text.replace(api_key, "***"))) if api_key else scrub
    try:
        resp = (client or httpx).get(url, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise PsiRayError(f"cannot reach OpenAI-compatible endpoint at {url}: {_describe(exc, scrub_key)}") from None
    excerpt = _excerpt(resp.text, scrub_key)
    if resp.status_code != 200:
        raise PsiRayError(f"OpenAI-compatible endpoint at {url} answered HTTP {resp.status_code}: {excerpt}")
    try:
        return [m["id"] for m in resp.json()["data"]]
    except (ValueError, KeyError, TypeError):
        raise PsiRayError(f"OpenAI-compatible endpoint at {url} sent an unreadable model list: {excerpt}") from None


def _excerpt(text: str, scrub) -> str:
    """A response body as one short line, any key hidden."""
    return scrub(" ".join(text.split())[:_ERROR_BODY_CHARS]) or "(empty body)"


def _describe(exc: Exception, scrub) -> str:
    """An exception as one line, any key hidden."""
    return scrub(" ".join(str(exc).split())) or type(exc).__name__


def _retry_after(resp: httpx.Response) -> float | None:
    try:
        return float(resp.headers["retry-after"])
    except (KeyError, ValueError):
        return None
