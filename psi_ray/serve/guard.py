"""The thin layer psi-ray keeps in front of ``ray.serve.llm``'s OpenAI app: what the library does not do.

:class:`Guard` is ASGI middleware on the library's own FastAPI app (``app.build_app``). Before a
request reaches the ingress it
- requires ``Authorization: Bearer <key>`` on every route, docs and ``/openapi.json`` included, compared in
  constant time (the library's ingress has no key check); with a key set, no websocket opens (no route takes
  one today; one a later library version adds stays shut);
- refuses a body over :data:`~psi_ray.serve.protocol.MAX_BODY_BYTES` with 413 on every route (from
  Content-Length before reading, and while reading);
- validates completions and chat requests with :mod:`~psi_ray.serve.protocol`'s schemas (invalid JSON, huge
  integers, deep nesting, out-of-range seeds and temperatures, more than 4 stop strings, more than 256
  generations, logprobs over 20), so a bad request is a 400 for its sender alone and never reaches a batch;
  a request for a model the app does not serve is an OpenAI-shaped 404.
  Streaming and ``response_format`` pass: vLLM does both.
Errors are OpenAI-shaped JSON. The body is handed on unchanged; responses, streams included, pass through. A
browser's CORS preflight (no key, no body) passes to the library's CORS middleware.
"""

from __future__ import annotations

import json
from collections.abc import Collection

from starlette.datastructures import Secret

from psi_ray.serve.protocol import (
    APIError,
    ChatRequest,
    CompletionRequest,
    check_auth,
    check_body_size,
    parse,
)

CHECKED = {"/v1/completions": CompletionRequest, "/v1/chat/completions": ChatRequest}


def schema_for(path: str):
    """The schema a request path is validated with (None: only the key and size are checked)."""
    return next((s for tail, s in CHECKED.items() if path.rstrip("/").endswith(tail)), None)


def check_request(path: str, body: bytes, served: tuple[str, ...] = ()) -> None:
    """Raise :class:`APIError` when the body of a request to ``path`` is not one the engine should see; with
    ``served`` (the ids of a model and its adapters), a request naming another model is a 404 (the library
    answers it in FastAPI's shape, not OpenAI's)."""
    schema = schema_for(path)
    if schema is None:
        return
    req = parse(body, schema)
    listed = ", ".join(f"'{i}'" for i in served)
    if served and req.model is not None and req.model not in served:
        raise APIError(404, f"model '{req.model}' is not served here; this server serves {listed}",
                       kind="not_found_error", param="model")
    if len(served) > 1 and req.model is None:  # a model and its adapters: the request must say which
        raise APIError(400, f"model: name one of {listed}", param="model")
    if isinstance(req, CompletionRequest):
        req.prompts()  # prompts x n within the per-request limit


class Guard:
    """ASGI middleware: key, size and request checks before ``app`` (see the module docstring).

    ``api_key`` may be a starlette ``Secret`` (what ``build_app`` passes, so the app's middleware list never
    shows the key in a log). ``served``: the model id(s) the app serves, when requests naming another get 404."""

    def __init__(self, app, api_key: str | Secret | None = None, served: Collection[str] = ()):
        self.app = app
        self._api_key = str(api_key) if api_key else None
        self._served = tuple(served)

    def __repr__(self) -> str:  # never show the key
        return "Guard()"

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket" and self._api_key:
            await receive()  # websocket.connect: no route takes a websocket, and none may open without the key
            return await send({"type": "websocket.close", "code": 1008})
        if scope["type"] != "http":
            return await self.app(scope, receive, send)  # lifespan
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if scope.get("method") == "OPTIONS" and "access-control-request-method" in headers:
            return await self.app(scope, receive, send)  # a browser's CORS preflight carries no key and no data
        try:
            check_auth(headers.get("authorization"), self._api_key)
            if scope.get("method") not in BODY_METHODS:
                return await self.app(scope, receive, send)
            declared = headers.get("content-length", "")
            if declared.isascii() and declared.isdigit():
                check_body_size(int(declared))
            body = await read_body(receive)
            if body is None:
                return None  # the client went away mid-body: nobody to answer
            check_request(scope["path"], body, self._served)
        except APIError as exc:
            return await send_json(send, exc.status, exc.body())
        return await self.app(scope, replay(body, receive), send)


BODY_METHODS = ("POST", "PUT", "PATCH")  # every route's body is held to the size limit, checked or not


async def read_body(receive) -> bytes | None:
    """The whole request body (None if the client disconnected first); 413 as soon as it grows past the limit."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        check_body_size(size)
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def replay(body: bytes, receive):
    """A ``receive`` that hands the already-read body on once, then defers to the real one (disconnects)."""
    sent = False

    async def again():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


async def send_json(send, status: int, payload: dict) -> None:
    data = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


__all__ = ["Guard", "check_request"]
