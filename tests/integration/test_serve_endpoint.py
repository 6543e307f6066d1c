"""The Serve app on the built-in model: lm-eval log-likelihoods through the endpoint equal ``lm_eval --model
hf`` on the same checkpoint; bad requests get JSON 4xx and the server keeps serving."""

import os

import httpx
import pytest

pytestmark = pytest.mark.integration

KEY_ENV = "PSI_RAY_TEST_SERVE_KEY"


@pytest.fixture(scope="module")
def served(ray_session):
    from psi_ray import serve
    from psi_ray.evaluate.run import free_port
    from psi_ray.models import resolve_model

    os.environ[KEY_ENV] = "test-key-123"
    model_dir = resolve_model("smollm2-135m")
    url = serve.start(model_dir, port=free_port(), name="smol", engine="hf", api_key_env=KEY_ENV, threads=2)
    yield url, model_dir
    serve.stop()


def post(url, path, body, key="test-key-123", **kw):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if isinstance(body, bytes):
        return httpx.post(url + path, content=body, headers={**headers, "Content-Type": "application/json"},
                          timeout=120, **kw)
    return httpx.post(url + path, json=body, headers=headers, timeout=120, **kw)


def test_loglikelihoods_match_lm_eval_hf(served, tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager

    from psi_ray.evaluate.run import write_task_dir

    url, model_dir = served
    tasks = TaskManager(include_path=str(write_task_dir(tmp_path / "tasks")), include_defaults=False)
    os.environ["OPENAI_API_KEY"] = os.environ[KEY_ENV]
    try:
        api = lm_eval.simple_evaluate(
            model="local-completions", tasks=["psi_mmlu"], task_manager=tasks, limit=6, log_samples=True,
            model_args={"base_url": f"{url}/completions", "model": "smol", "tokenizer_backend": "huggingface",
                        "tokenizer": model_dir, "batch_size": 8})
    finally:
        os.environ.pop("OPENAI_API_KEY", None)
    hf = lm_eval.simple_evaluate(model="hf", model_args={"pretrained": model_dir, "dtype": "float32", "device": "cpu"},
                                 tasks=["psi_mmlu"], task_manager=tasks, limit=6, log_samples=True, batch_size=1)
    a = {s["doc_id"]: s["resps"] for s in api["samples"]["psi_mmlu"]}
    b = {s["doc_id"]: s["resps"] for s in hf["samples"]["psi_mmlu"]}
    assert sorted(a) == sorted(b) and len(a) == 6
    pairs = [(x[0][0], y[0][0]) for d in a for x, y in zip(a[d], b[d], strict=True)]
    assert len(pairs) == 24
    assert max(abs(x - y) for x, y in pairs) < 1e-4, pairs
    greedy = [(x[0][1], y[0][1]) for d in a for x, y in zip(a[d], b[d], strict=True)]
    assert all(x == y for x, y in greedy)


def test_bad_requests_get_4xx_and_the_server_keeps_serving(served):
    url, _ = served
    good = {"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}
    cases = [
        (b"{not json", 400, "not valid JSON"),
        ({"max_tokens": 4}, 400, "prompt: Field required"),
        ({"prompt": "x", "max_tokens": "four"}, 400, "max_tokens"),
        ({"prompt": 12}, 400, "prompt"),
        ({"prompt": "x", "max_tokens": 10**6}, 400, "exceeds the model's context"),
        ({"prompt": [10**9]}, 400, "outside the vocabulary"),
        ({**good, "model": "other"}, 404, "not served here"),
        ({"prompt": ["q"] * 300, "n": 16, "max_tokens": 4}, 400, "at most 256"),
        ({**good, "stop": list("abcde")}, 400, "at most 4 stop strings"),
        ({**good, "response_format": {"type": "json_object"}}, 400, "guided decoding"),
        (b'{"prompt": "' + b"x" * (8 * 1024 * 1024) + b'"}', 413, "at most 8,388,608"),
    ]
    for body, code, words in cases:
        r = post(url, "/completions", body)
        assert r.status_code == code and words in r.json()["error"]["message"], (body, r.text)
    assert post(url, "/chat/completions", {"messages": "hi"}).status_code == 400
    for key in (None, "wrong"):
        r = post(url, "/completions", good, key=key)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert httpx.get(f"{url}/models", headers={"Authorization": f"Bearer {key}"} if key else {}).status_code == 401
    r = post(url, "/completions", good)
    assert r.status_code == 200 and r.json()["choices"][0]["text"]


def test_poison_requests_fail_alone(served):
    """Bad requests sent together with 6 normal ones: each bad one gets its own 400, the normal ones their 200
    (before, a 2**64 seed or a 1e-45 temperature failed the whole batch with 500). A vanishing temperature is
    greedy, as vLLM treats it."""
    from concurrent.futures import ThreadPoolExecutor

    url, _ = served
    normal = {"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0.7, "seed": 1}
    bad = [({**normal, "seed": 2**64}, 400), (b'{"prompt": "x", "seed": ' + b"9" * 5000 + b"}", 400),
           (b'{"prompt": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", 400)]
    tiny = {**normal, "temperature": 1e-45}
    bodies = [normal] * 3 + [b for b, _ in bad] + [tiny] + [normal] * 3
    with ThreadPoolExecutor(len(bodies)) as pool:
        got = list(pool.map(lambda b: post(url, "/completions", b), bodies))
    codes = [r.status_code for r in got]
    assert codes == [200] * 3 + [c for _, c in bad] + [200] + [200] * 3, [r.text[:200] for r in got]
    assert all(r.json()["error"]["type"] == "invalid_request_error" for r in got[3:6])
    greedy = post(url, "/completions", {**normal, "temperature": 0}).json()["choices"][0]["text"]
    assert got[6].json()["choices"][0]["text"] == greedy


def test_openai_surface(served):
    url, _ = served
    models = httpx.get(f"{url}/models", headers={"Authorization": "Bearer test-key-123"}).json()
    assert [m["id"] for m in models["data"]] == ["smol"]
    ids = post(url, "/completions", {"prompt": [[504, 3458, 314], [504]], "max_tokens": 3, "temperature": 0,
                                     "echo": True, "logprobs": 2}).json()
    assert len(ids["choices"]) == 2
    lp = ids["choices"][0]["logprobs"]
    assert len(lp["token_logprobs"]) == 3 + 3 and lp["token_logprobs"][0] is None
    assert all(len(t) <= 2 for t in lp["top_logprobs"][1:])
    stop = post(url, "/completions", {"prompt": "1, 2, 3, 4,", "max_tokens": 30, "temperature": 0,
                                      "stop": ["7"]}).json()["choices"][0]
    assert "7" not in stop["text"] and stop["finish_reason"] == "stop"
    chat = post(url, "/chat/completions", {"messages": [{"role": "user", "content": "Say hi."}],
                                           "max_tokens": 8, "temperature": 0}).json()
    assert chat["object"] == "chat.completion" and chat["choices"][0]["message"]["role"] == "assistant"
    assert chat["usage"]["completion_tokens"] > 0
    capped = post(url, "/chat/completions", {"messages": [{"role": "user", "content": "Count to fifty."}],
                                             "max_completion_tokens": 4, "temperature": 0}).json()
    assert 0 < capped["usage"]["completion_tokens"] <= 4  # it was ignored: ~20 tokens came back


def test_two_models_share_the_cluster_and_stop_alone(served, tiny_model):
    """A second model on the same Serve is its own application at its own route: the first keeps serving, the
    same route or the same model id again is refused, and stopping the second leaves the first running."""
    from urllib.parse import urlparse

    from psi_ray import serve
    from psi_ray.errors import PsiRayError
    from psi_ray.evaluate.run import free_port

    url, _ = served
    port = urlparse(url).port
    other_port = free_port()  # Serve already listens on `port`: the second model is served there, and says so
    second = serve.start(str(tiny_model), port=other_port, name="tiny", engine="hf", api_key_env=KEY_ENV, threads=1,
                         route_prefix="/tiny")
    try:
        assert other_port != port and second == f"http://127.0.0.1:{port}/tiny/v1"
        for base, name in ((url, "smol"), (second, "tiny")):
            models = httpx.get(f"{base}/models", headers={"Authorization": "Bearer test-key-123"}).json()
            assert [m["id"] for m in models["data"]] == [name]
            r = post(base, "/completions", {"prompt": "1, 2,", "max_tokens": 2, "temperature": 0})
            assert r.status_code == 200 and r.json()["model"] == name
        taken = r'^could not start the Serve app: Prefix / is being used by application "psi-ray-smol".*route-prefix$'
        with pytest.raises(PsiRayError, match=taken):
            serve.start(str(tiny_model), port=port, name="other", engine="hf", threads=1, timeout_s=60)
        with pytest.raises(PsiRayError, match="'tiny' is already served"):
            serve.start(str(tiny_model), port=port, name="tiny", engine="hf", threads=1, route_prefix="/t2")
    finally:
        serve.stop("tiny")
    assert post(url, "/completions", {"prompt": "1, 2,", "max_tokens": 2}).status_code == 200
    from ray import serve as ray_serve

    assert set(ray_serve.status().applications) == {"psi-ray-smol"}

