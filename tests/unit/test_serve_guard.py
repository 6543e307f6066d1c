"""The guard in front of ``ray.serve.llm``'s ingress, on a small FastAPI app standing in for the library's
(it echoes the body it receives and streams on request): the key on every route, sizes, request checks, and
what passes through unchanged."""

from __future__ import annotations

import json

import pytest
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient
from starlette.datastructures import Secret

from psi_ray.serve.guard import Guard
from psi_ray.serve.protocol import MAX_BODY_BYTES

KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def app_behind_guard(api_key: str | None = KEY, served=("m",)) -> TestClient:
    app = FastAPI()  # docs and /openapi.json on, as in the library's app
    seen: list[bytes] = []

    @app.get("/v1/models")
    async def models():
        return {"data": [{"id": "m"}]}

    async def answer(request: Request):
        body = await request.body()
        seen.append(body)
        if json.loads(body).get("stream"):
            async def chunks():
                for i in range(3):
                    yield f"data: {json.dumps({'i': i})}\n\n"
                yield "data: [DONE]\n\n"
            return StreamingResponse(chunks(), media_type="text/event-stream")
        return {"echo": json.loads(body)}

    app.post("/v1/completions")(answer)
    app.post("/v1/chat/completions")(answer)
    app.post("/tokenize")(answer)
    app.add_middleware(Guard, api_key=Secret(api_key) if api_key else None, served=served)  # as build_app passes it
    client = TestClient(app)
    client.seen = seen
    return client


def test_no_websocket_opens_when_a_key_is_set():
    from starlette.websockets import WebSocketDisconnect

    client = app_behind_guard()

    @client.app.websocket("/ws")  # a websocket route, as a later library version might add
    async def ws(socket: WebSocket):
        await socket.accept()
        await socket.send_text("open")

    for headers in ({}, AUTH):
        with pytest.raises(WebSocketDisconnect) as closed, client.websocket_connect("/ws", headers=headers) as socket:
            socket.receive_text()
        assert closed.value.code == 1008
    with app_behind_guard(api_key=None) as open_client:
        open_client.app.websocket("/ws")(ws)
        with open_client.websocket_connect("/ws") as socket:
            assert socket.receive_text() == "open"


@pytest.mark.parametrize("method,path", [("GET", "/v1/models"), ("GET", "/docs"), ("GET", "/openapi.json"),
                                         ("POST", "/v1/completions"), ("POST", "/tokenize"), ("GET", "/nowhere")])
def test_every_route_needs_the_key(method, path):
    client = app_behind_guard()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        res = client.request(method, path, headers=headers, json={"prompt": "x"})
        assert res.status_code == 401, (path, headers)
        assert res.json()["error"]["type"] == "authentication_error"
    assert client.seen == []
    assert client.request(method, path, headers=AUTH, json={"prompt": "x"}).status_code != 401


def test_without_a_key_everyone_may_call_and_the_body_arrives_unchanged():
    client = app_behind_guard(api_key=None)
    body = {"model": "m", "prompt": ["a", "b"], "max_tokens": 3, "seed": 7, "vllm_extra": {"x": 1}}
    res = client.post("/v1/completions", json=body)
    assert res.status_code == 200 and res.json() == {"echo": body}
    assert json.loads(client.seen[0]) == body


@pytest.mark.parametrize("path,body,needle", [
    ("/v1/completions", {"prompt": "x", "seed": 2**64}, "seed"),
    ("/v1/completions", {"prompt": "x", "temperature": -1}, "temperature"),
    ("/v1/completions", {"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "at most 4 stop strings"),
    ("/v1/completions", {"prompt": ["p"] * 100, "n": 3}, "at most 256"),
    ("/v1/completions", {"prompt": "x", "logprobs": 21}, "logprobs"),
    ("/v1/chat/completions", {"messages": []}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "seed": -2**70}, "seed"),
])
def test_a_bad_request_is_a_400_that_never_reaches_the_engine(path, body, needle):
    client = app_behind_guard()
    res = client.post(path, headers=AUTH, json=body)
    assert res.status_code == 400, res.text
    assert needle in res.json()["error"]["message"]
    assert client.seen == []


def test_a_request_for_another_model_is_an_openai_shaped_404():
    client = app_behind_guard()
    for path, body in (("/v1/completions", {"model": "other", "prompt": "x"}),
                       ("/v1/chat/completions", {"model": "other", "messages": [{"role": "user", "content": "x"}]})):
        res = client.post(path, headers=AUTH, json=body)
        assert res.status_code == 404 and res.json()["error"]["type"] == "not_found_error", res.text
        assert res.json()["error"]["param"] == "model" and "'m'" in res.json()["error"]["message"]
    assert client.seen == []
    assert client.post("/v1/completions", headers=AUTH, json={"model": "m", "prompt": "x"}).status_code == 200
    assert client.post("/v1/completions", headers=AUTH, json={"prompt": "x"}).status_code == 200  # no model: vLLM's


def test_a_model_and_its_adapters_are_each_served_and_nothing_else():
    client = app_behind_guard(served=["m", "lora-a"])
    for model in ("m", "lora-a"):
        assert client.post("/v1/completions", headers=AUTH, json={"model": model, "prompt": "x"}).status_code == 200
    res = client.post("/v1/completions", headers=AUTH, json={"model": "m:lora-a", "prompt": "x"})
    assert res.status_code == 404 and "'m', 'lora-a'" in res.json()["error"]["message"]
    res = client.post("/v1/completions", headers=AUTH, json={"prompt": "x"})  # which one? the request must say
    assert res.status_code == 400 and res.json()["error"]["param"] == "model" and "'lora-a'" in res.text
    assert [json.loads(b)["model"] for b in client.seen] == ["m", "lora-a"]


@pytest.mark.parametrize("raw,needle", [
    (b"{not json", "not valid JSON"),
    (b'{"prompt": "x", "seed": ' + b"9" * 5000 + b"}", "not valid JSON"),
    (b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
])
def test_malformed_bodies_are_400(raw, needle):
    client = app_behind_guard()
    res = client.post("/v1/completions", headers={**AUTH, "Content-Type": "application/json"}, content=raw)
    assert res.status_code == 400 and needle in res.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/v1/completions", "/tokenize"])
def test_a_body_over_the_limit_is_413_on_every_route(path):
    client = app_behind_guard()
    big = json.dumps({"prompt": "x" * (MAX_BODY_BYTES + 1)})
    res = client.post(path, headers={**AUTH, "Content-Type": "application/json"}, content=big)
    assert res.status_code == 413 and client.seen == []
    assert client.post(path, headers=AUTH, json={"prompt": "x" * 1000}).status_code == 200

    def chunked():  # no Content-Length: refused while it is read
        for _ in range(9):
            yield b" " * (1024 * 1024)
    res = client.post("/v1/completions", headers={**AUTH, "Content-Type": "application/json"}, content=chunked())
    assert res.status_code == 413


def test_nulls_vllm_takes_as_defaults_pass():
    client = app_behind_guard()
    res = client.post("/v1/completions", headers=AUTH, json={
        "prompt": "x", "temperature": None, "top_p": None, "n": None, "stream": None, "echo": None,
        "max_tokens": None, "stop": None})
    assert res.status_code == 200, res.text
    res = client.post("/v1/chat/completions", headers=AUTH, json={
        "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": None}],
        "temperature": None, "top_p": None, "n": None, "stream": None, "logprobs": True, "top_logprobs": 2})
    assert res.status_code == 200, res.text


def test_a_cors_preflight_needs_no_key_and_the_key_never_shows():
    client = app_behind_guard()
    res = client.options("/v1/completions", headers={"Origin": "http://x", "Access-Control-Request-Method": "POST"})
    assert res.status_code != 401
    assert KEY not in repr(client.app.user_middleware)


def test_streaming_guided_decoding_and_content_parts_pass_to_vllm():
    client = app_behind_guard()
    res = client.post("/v1/chat/completions", headers=AUTH, json={
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "stream": True,
        "response_format": {"type": "json_object"}, "max_completion_tokens": 4})
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/event-stream")
    assert res.text.count("data: ") == 4 and res.text.endswith("data: [DONE]\n\n")


def test_a_client_gone_mid_body_gets_no_answer_and_the_app_is_not_called():
    import asyncio

    called, sent = [], []

    async def app(scope, receive, send):
        called.append(scope)

    async def receive():
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/completions", "headers": [(b"authorization",
                                                                                       AUTH["Authorization"].encode())]}
    asyncio.run(Guard(app, api_key=KEY)(scope, receive, send))
    assert called == [] and sent == []


def test_an_endless_body_is_refused_once_it_passes_the_limit():
    import asyncio

    from psi_ray.serve.guard import read_body
    from psi_ray.serve.protocol import APIError

    pulled = []

    async def receive():
        pulled.append(1)
        assert len(pulled) < 100, "the body was read past the limit"
        return {"type": "http.request", "body": b" " * (1024 * 1024), "more_body": True}

    with pytest.raises(APIError) as exc:
        asyncio.run(read_body(receive))
    assert exc.value.status == 413 and len(pulled) == MAX_BODY_BYTES // (1024 * 1024) + 1
