"""The OpenAI request layer: every malformed request becomes a 4xx with a message naming the problem."""

import pytest

from psi_ray.serve.protocol import APIError, ChatRequest, CompletionRequest, check_auth, check_budget, parse


def status_of(call):
    """The APIError ``call()`` raises (the test fails if it raises none)."""
    with pytest.raises(APIError) as info:
        call()
    return info.value


def status(body: bytes, schema=CompletionRequest):
    return status_of(lambda: parse(body, schema))


@pytest.mark.parametrize("body, param, words", [
    (b"{not json", None, "not valid JSON"),
    (b"[1, 2]", None, "JSON object"),
    (b'{"max_tokens": 3}', "prompt", "Field required"),
    (b'{"prompt": "x", "max_tokens": "many"}', "max_tokens", "valid integer"),
    (b'{"prompt": "x", "max_tokens": -1}', "max_tokens", "greater than or equal"),
    (b'{"prompt": "x", "temperature": "hot"}', "temperature", "valid number"),
    (b'{"prompt": "x", "logprobs": 99}', "logprobs", "less than or equal"),
    (b'{"prompt": "x", "stream": true}', "stream", "streaming is not supported"),
    (b'\xff\xfe', None, "not valid JSON"),
    (b'{"prompt": "x", "seed": 18446744073709551616}', "seed", "less than"),
    (b'{"prompt": "x", "seed": ' + b"9" * 5000 + b"}", None, "not valid JSON"),
    (b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None, "nested too deeply"),
    (b'{"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}', "stop", "at most 4 stop strings"),
    (b'{"prompt": "x", "response_format": {"type": "json_object"}}', "response_format", "guided decoding"),
])
def test_bad_completion_requests(body, param, words):
    err = status(body)
    assert err.status == 400 and err.param == param and words in err.message
    assert err.body()["error"]["message"] == err.message


def test_bad_chat_requests():
    assert "messages" in status(b'{"model": "m"}', ChatRequest).message
    assert status(b'{"messages": []}', ChatRequest).param == "messages"
    assert status(b'{"messages": [{"role": "wizard", "content": "x"}]}', ChatRequest).param.startswith("messages")


def test_limits_on_work_and_size():
    """One request may not hold a replica for minutes: prompts x n and the body size are capped."""
    from psi_ray.serve.protocol import MAX_BODY_BYTES, MAX_GENERATIONS, check_body_size

    prompts = ", ".join(['"q"'] * 300).encode()
    err = status_of(parse(b'{"prompt": [' + prompts + b'], "n": 16}', CompletionRequest).prompts)
    assert err.status == 400 and err.param == "prompt" and "4800 generations" in err.message
    err = status_of(parse(b'{"prompt": [' + b", ".join([b'"q"'] * 17) + b'], "n": 16}', CompletionRequest).prompts)
    assert err.status == 400 and "272 generations" in err.message
    ok = ", ".join(['"q"'] * (MAX_GENERATIONS // 16)).encode()
    assert len(parse(b'{"prompt": [' + ok + b'], "n": 16}', CompletionRequest).prompts()) == MAX_GENERATIONS // 16
    big = b'{"prompt": "' + b"x" * MAX_BODY_BYTES + b'"}'
    assert status(big).status == 413 and f"{MAX_BODY_BYTES:,}" in status(big).message
    check_body_size(MAX_BODY_BYTES)
    assert status_of(lambda: check_body_size(MAX_BODY_BYTES + 1)).status == 413
    assert parse(b'{"prompt": "x", "stop": ["a", "b", "c", "d"]}', CompletionRequest).stops() == ("a", "b", "c", "d")
    assert parse(b'{"prompt": "x", "response_format": {"type": "text"}}', CompletionRequest).prompts() == ["x"]


def test_max_completion_tokens_is_the_chat_budget():
    chat = b'{"messages": [{"role": "user", "content": "hi"}]'
    assert parse(chat + b', "max_completion_tokens": 4}', ChatRequest).budget() == 4
    assert parse(chat + b', "max_completion_tokens": 4, "max_tokens": 90}', ChatRequest).budget() == 4
    assert parse(chat + b', "max_tokens": 90}', ChatRequest).budget() == 90
    assert parse(chat + b"}", ChatRequest).budget() is None
    assert status(chat + b', "max_completion_tokens": -1}', ChatRequest).param == "max_completion_tokens"


def test_prompt_shapes():
    assert parse(b'{"prompt": "hi"}', CompletionRequest).prompts() == ["hi"]
    assert parse(b'{"prompt": [1, 2, 3]}', CompletionRequest).prompts() == [[1, 2, 3]]
    assert parse(b'{"prompt": [[1], [2, 3]]}', CompletionRequest).prompts() == [[1], [2, 3]]
    assert parse(b'{"prompt": ["a", "b"]}', CompletionRequest).prompts() == ["a", "b"]
    req = parse(b'{"prompt": "x", "stop": "Q:"}', CompletionRequest)
    assert req.stops() == ("Q:",) and req.max_tokens == 16
    assert parse(b'{"prompt": "x", "max_tokens": null, "stop": ""}', CompletionRequest).max_tokens == 16
    assert parse(b'{"prompt": "x", "stop": ""}', CompletionRequest).stops() == ()


def test_auth_and_budget():
    check_auth(None, None)
    check_auth("Bearer k", "k")
    for header in (None, "Bearer wrong", "k"):
        with pytest.raises(APIError) as info:
            check_auth(header, "k")
        assert info.value.status == 401 and "k" not in info.value.message.replace("key", "")
    check_budget(10, 20, 30)
    with pytest.raises(APIError, match="exceeds the model's context of 30"):
        check_budget(10, 21, 30)


def test_serve_builder_arguments_are_typed():
    """``serve run ... key=value`` passes strings: they are converted; an unknown key is an error naming it."""
    import pytest

    from psi_ray.errors import PsiRayError
    from psi_ray.serve.app import build_app
    from psi_ray.serve.args import ServeArgs

    args = ServeArgs.model_validate({"model": "m", "threads": "4", "num_cpus": "0.5", "engine": "hf"})
    assert (args.threads, args.num_cpus, args.served_name("/models/tuned")) == (4, 0.5, "tuned")
    with pytest.raises(PsiRayError, match="max_batch") as err:
        build_app({"model": "m", "max_batch": 8})
    assert "\n" not in str(err.value)
    with pytest.raises(PsiRayError, match="threads"):
        build_app({"model": "m", "threads": 0})


def test_auto_engine_follows_the_replicas_gpus_not_the_builders(monkeypatch):
    """On a cluster Serve builds the app on the head (often GPU-less): stated ``num_gpus`` decides the engine and
    the vLLM settings, and only without it does the builder's own CUDA decide."""
    import psi_ray.runtime
    from psi_ray.serve.args import ServeArgs

    def args(**kw):
        return ServeArgs.model_validate({"model": "m", **kw})

    monkeypatch.setattr(psi_ray.runtime, "cuda_available", lambda: False)
    assert (args().resolved_engine(), args(num_gpus=1).resolved_engine(), args(num_gpus=0).resolved_engine()) == \
        ("hf", "vllm", "hf")
    assert args(num_gpus=1).on_gpu() and not args().on_gpu()
    assert args(engine="hf", num_gpus=1).resolved_engine() == "hf"  # an explicit engine is kept
    monkeypatch.setattr(psi_ray.runtime, "cuda_available", lambda: True)
    assert args().resolved_engine() == "vllm" and args(num_gpus=0).resolved_engine() == "hf"


def test_serve_security_edges():
    """No docs routes (they answered without the key); a non-loopback bind needs a key or an explicit
    ``--allow-no-key``; the printed URL is one a local client can open (IPv6 in brackets)."""
    from psi_ray.errors import PsiRayError
    from psi_ray.serve import base_url, check_exposure
    from psi_ray.serve.app import api

    assert api.openapi_url is None and api.docs_url is None and api.redoc_url is None
    assert base_url("127.0.0.1", 8000) == "http://127.0.0.1:8000/v1"
    assert base_url("0.0.0.0", 8000) == "http://127.0.0.1:8000/v1"
    assert base_url("::1", 8001) == "http://[::1]:8001/v1" and base_url("::", 8001) == "http://[::1]:8001/v1"
    assert base_url("0.0.0.0", 8000, "/tuned/") == "http://127.0.0.1:8000/tuned/v1"
    from psi_ray.serve import app_name

    assert app_name("base") != app_name("tuned")  # one application per served model, never one fixed name
    for host in ("127.0.0.1", "localhost", "::1"):
        check_exposure(host, None, False)
    with pytest.raises(PsiRayError, match="--allow-no-key"):
        check_exposure("0.0.0.0", None, False)
    check_exposure("0.0.0.0", "MY_KEY", False)
    check_exposure("0.0.0.0", None, True)
