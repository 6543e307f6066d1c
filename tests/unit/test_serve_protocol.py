"""The OpenAI request layer: every malformed request becomes a 4xx with a message naming the problem."""

import pytest

from psi_ray.serve.protocol import APIError, ChatRequest, CompletionRequest, check_auth, parse


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
    (b'\xff\xfe', None, "not valid JSON"),
    (b'{"prompt": "x", "seed": 18446744073709551616}', "seed", "less than"),
    (b'{"prompt": "x", "seed": ' + b"9" * 5000 + b"}", None, "not valid JSON"),
    (b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None, "nested too deeply"),
    (b'{"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}', "stop", "at most 4 stop strings"),
    (b'{"prompt": "x", "temperature": 2.5}', "temperature", "less than or equal"),
    (b'{"prompt": "x", "n": 17}', "n", "less than or equal"),
])
def test_bad_completion_requests(body, param, words):
    err = status(body)
    assert err.status == 400 and err.param == param and words in err.message
    assert err.body()["error"]["message"] == err.message


def test_bad_chat_requests():
    assert "messages" in status(b'{"model": "m"}', ChatRequest).message
    assert status(b'{"messages": []}', ChatRequest).param == "messages"
    assert status(b'{"messages": "hi"}', ChatRequest).param == "messages"


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
    assert parse(b'{"prompt": "x", "stop": ["a", "b", "c", "d"]}', CompletionRequest).stop == ["a", "b", "c", "d"]


def test_prompt_shapes():
    assert parse(b'{"prompt": "hi"}', CompletionRequest).prompts() == ["hi"]
    assert parse(b'{"prompt": [1, 2, 3]}', CompletionRequest).prompts() == [[1, 2, 3]]
    assert parse(b'{"prompt": [[1], [2, 3]]}', CompletionRequest).prompts() == [[1], [2, 3]]
    assert parse(b'{"prompt": ["a", "b"]}', CompletionRequest).prompts() == ["a", "b"]
    # what vLLM takes as its default passes as null; streaming and guided decoding are vLLM's to do
    body = b'{"prompt": "x", "max_tokens": null, "temperature": null, "n": null, "stream": true, ' \
           b'"response_format": {"type": "json_object"}}'
    assert parse(body, CompletionRequest).prompts() == ["x"]
    chat = parse(b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], '
                 b'"max_completion_tokens": 4}', ChatRequest)
    assert chat.max_completion_tokens == 4
    assert status(b'{"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": -1}',
                  ChatRequest).param == "max_completion_tokens"


def test_auth():
    check_auth(None, None)
    check_auth("Bearer k", "k")
    for header in (None, "Bearer wrong", "k"):
        with pytest.raises(APIError) as info:
            check_auth(header, "k")
        assert info.value.status == 401 and "k" not in info.value.message.replace("key", "")


def test_serve_builder_arguments_are_typed():
    """``serve run ... key=value`` passes strings: they are converted; an unknown key is an error naming it."""
    import pytest

    from psi_ray.errors import PsiRayError
    from psi_ray.serve.app import build_app
    from psi_ray.serve.args import ServeArgs

    args = ServeArgs.model_validate({"model": "m", "max_model_len": "1024", "num_cpus": "0.5"})
    assert (args.max_model_len, args.num_cpus, args.served_name("/models/tuned")) == (1024, 0.5, "tuned")
    with pytest.raises(PsiRayError, match="max_batch") as err:
        build_app({"model": "m", "max_batch": 8})
    assert "\n" not in str(err.value)
    with pytest.raises(PsiRayError, match="num_cpus"):
        build_app({"model": "m", "num_cpus": 0})
    with pytest.raises(PsiRayError, match="engine"):  # one serving path: the own deployment's keys are gone
        build_app({"model": "m", "engine": "hf"})


def test_the_replicas_device_follows_num_gpus_not_the_builders(monkeypatch):
    """On a cluster Serve builds the app on the head (often GPU-less): stated ``num_gpus`` decides the vLLM
    settings (CPU or GPU), and only without it does the builder's own CUDA decide."""
    import psi_ray.runtime
    from psi_ray.serve.args import ServeArgs

    def args(**kw):
        return ServeArgs.model_validate({"model": "m", **kw})

    monkeypatch.setattr(psi_ray.runtime, "cuda_available", lambda: False)
    assert (args().on_gpu(), args(num_gpus=1).on_gpu(), args(num_gpus=0).on_gpu()) == (False, True, False)
    monkeypatch.setattr(psi_ray.runtime, "cuda_available", lambda: True)
    assert (args().on_gpu(), args(num_gpus=0).on_gpu()) == (True, False)


def test_serve_security_edges():
    """A non-loopback bind needs a key or an explicit ``--allow-no-key``; the printed URL is one a local client
    can open (IPv6 in brackets)."""
    from psi_ray.errors import PsiRayError
    from psi_ray.serve import base_url, check_exposure

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
