"""GPU paths of the loop: DeepSpeed ZeRO-3 in bf16 on CUDA workers, and vLLM serving through ray.serve.llm."""

import httpx
import pytest

pytestmark = pytest.mark.gpu


def test_deepspeed_zero3_bf16_on_gpu(ray_session, chat_dataset, tmp_path):
    import torch

    from psi_ray.config import TrainSpec
    from psi_ray.train import train

    spec = TrainSpec(model="smollm2-135m", strategy="deepspeed", zero_stage=3, use_gpu=True,
                     num_workers=min(2, torch.cuda.device_count()), batch_size=4, max_steps=4, lr=1e-4)
    result = train(chat_dataset, tmp_path, spec, seed=0)
    assert result.steps == 4 and (result.model_dir / "config.json").exists()


def test_vllm_serving_through_ray_serve_llm(ray_session):
    from psi_ray import serve
    from psi_ray.evaluate.run import free_port
    from psi_ray.models import resolve_model

    url = serve.start(resolve_model("smollm2-135m"), port=free_port(), name="smol", engine="vllm",
                      max_model_len=2048)
    try:
        assert [m["id"] for m in httpx.get(f"{url}/models").json()["data"]] == ["smol"]
        r = httpx.post(f"{url}/chat/completions", json={"model": "smol", "max_tokens": 8,
                                                        "messages": [{"role": "user", "content": "Hi"}]}, timeout=300)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
    finally:
        serve.stop()
