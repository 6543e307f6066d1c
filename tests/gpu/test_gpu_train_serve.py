"""GPU paths of the loop: DeepSpeed ZeRO-3 in bf16 on CUDA workers, and vLLM serving through ray.serve.llm."""

import httpx
import pytest

from tests.gpu.conftest import needs

pytestmark = pytest.mark.gpu


@needs("ray", "deepspeed")
def test_deepspeed_zero3_bf16_on_gpu(ray_session, chat_dataset, tmp_path):
    """Trains in bf16, and the ZeRO-3 checkpoint round-trips: the fp32 weights rebuilt from the per-rank
    shards, cast to bf16, equal the gathered bf16 weights the checkpoint's model holds, and the exported
    float32 model holds those same values."""
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from safetensors.torch import load_file

    from psi_ray.config import TrainSpec
    from psi_ray.train import train

    spec = TrainSpec(model="smollm2-135m", strategy="deepspeed", zero_stage=3, use_gpu=True,
                     num_workers=min(2, torch.cuda.device_count()), batch_size=4, max_steps=4, lr=1e-4)
    result = train(chat_dataset, tmp_path, spec, seed=0)
    assert result.steps == 4 and (result.model_dir / "config.json").exists()

    [checkpoint] = [p for p in (tmp_path / "_ray" / "train").glob("checkpoint_*") if p.is_dir()]
    gathered = {}
    for f in sorted((checkpoint / "model").glob("*.safetensors")):
        gathered.update(load_file(str(f)))
    assert gathered and all(t.dtype == torch.bfloat16 for t in gathered.values())  # bf16 training
    shards = list((checkpoint / "deepspeed" / "zero").glob("*optim_states.pt"))
    assert len(shards) == spec.num_workers  # one ZeRO partition per rank
    rebuilt = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint / "deepspeed"), tag="zero")
    assert set(gathered) <= set(rebuilt)
    for name, tensor in gathered.items():
        assert torch.equal(rebuilt[name].to(torch.bfloat16), tensor), name
    exported = {}
    for f in sorted(result.model_dir.glob("*.safetensors")):
        exported.update(load_file(str(f)))
    assert set(exported) == set(gathered)
    for name, tensor in gathered.items():
        assert exported[name].dtype == torch.float32 and torch.equal(exported[name], tensor.float()), name


@needs("ray", "vllm")
def test_vllm_serving_through_ray_serve_llm(ray_session):
    from psi_ray import serve
    from psi_ray.evaluate.run import free_port
    from psi_ray.models import resolve_model

    url = serve.start(resolve_model("smollm2-135m"), port=free_port(), name="smol", max_model_len=2048)
    try:
        assert [m["id"] for m in httpx.get(f"{url}/models").json()["data"]] == ["smol"]
        r = httpx.post(f"{url}/chat/completions", json={"model": "smol", "max_tokens": 8,
                                                        "messages": [{"role": "user", "content": "Hi"}]}, timeout=300)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
    finally:
        serve.stop()


@needs("ray", "vllm", "peft")
def test_a_lora_adapter_is_served_beside_its_base_on_gpu(ray_session, tmp_path):
    """vLLM's GPU LoRA kernels through ray.serve.llm, in bfloat16 (the kernels take no float32): the adapter's
    log-probabilities are the merged model's in transformers within 5e-2, and the base's are not; 8 prompt
    log-probability requests at once (lm-eval's MMLU shape), base and adapter mixed, are each answered."""
    from concurrent.futures import ThreadPoolExecutor

    from psi_ray import serve
    from psi_ray.evaluate.run import free_port
    from psi_ray.models import resolve_model
    from tests.conftest import random_lora, token_logprobs

    base = resolve_model("smollm2-135m")
    text = "Question: Tom has 3 apples and buys 4 more. How many apples does he have?\nAnswer: 7"
    expected = token_logprobs(random_lora(base, tmp_path / "adapter"), base, text)
    url = serve.start(base, port=free_port(), name="smol", max_model_len=2048,
                      adapters={"tuned": str(tmp_path / "adapter")})
    try:
        def echo(name):
            r = httpx.post(f"{url}/completions", json={"model": name, "prompt": text, "max_tokens": 1, "echo": True,
                                                       "logprobs": 0, "temperature": 0}, timeout=300)
            assert r.status_code == 200, r.text
            return name, r.json()["choices"][0]["logprobs"]["token_logprobs"][1:len(expected) + 1]

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(echo, ["smol", "tuned"] * 4))
        for name, got in answers:
            gap = max(abs(a - b) for a, b in zip(got, expected, strict=True))
            assert gap <= 5e-2 if name == "tuned" else gap > 0.1, (name, gap)
    finally:
        serve.stop()
