"""vLLM and transformers give the same greedy tokens for the same prompt on the built-in model."""

import pytest

pytestmark = pytest.mark.integration

PROMPT = [{"role": "user", "content": "Explain in one sentence why the sky is blue."}]


def test_vllm_and_hf_same_first_16_greedy_tokens():
    from psi_ray.backends import SamplingParams, load_backend

    params = SamplingParams(temperature=0, max_tokens=16)
    hf = load_backend("hf", "smollm2-135m")
    hf_ids = hf.generate([PROMPT], params)[0].token_ids[:16]
    hf.close()
    vl = load_backend("vllm", "smollm2-135m", max_model_len=512)
    vl_ids = vl.generate([PROMPT], params)[0].token_ids[:16]
    vl.close()
    assert len(hf_ids) == 16
    assert vl_ids == hf_ids
