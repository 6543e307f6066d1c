"""vLLM and transformers give the same greedy tokens for the same prompt on the built-in model."""

import pytest

from psi_ray.errors import PsiRayError

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
    try:
        assert len(hf_ids) == 16
        assert vl_ids == hf_ids
        calls_at_once_answer_as_one_call(vl)
        a_failed_step_fails_its_calls_and_the_engine_goes_on(vl)
    finally:
        vl.close()
    with pytest.raises(PsiRayError, match="closed"):
        vl.generate([PROMPT], params)


def a_failed_step_fails_its_calls_and_the_engine_goes_on(vl):
    """An engine step that raises fails the calls waiting on it with the reason (none hangs); their requests
    are aborted, and the next call is answered as before."""
    from psi_ray.backends import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=4)
    engine, before = vl.llm.llm_engine, vl.generate([PROMPT], params)[0].token_ids

    def broken_step():
        raise RuntimeError("step broke")

    engine.step = broken_step
    try:
        with pytest.raises(PsiRayError, match="step broke"):
            vl.generate([PROMPT], params)
    finally:
        del engine.step
    assert not engine.has_unfinished_requests()
    assert vl.generate([PROMPT], params)[0].token_ids == before


def calls_at_once_answer_as_one_call(vl):
    """Two threads calling the vLLM engine at once (an engine actor takes two batches in flight): each gets
    its own answers, in its own order, the same greedy tokens as one call with every prompt."""
    from concurrent.futures import ThreadPoolExecutor

    from psi_ray.backends import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=8)
    prompts = [[{"role": "user", "content": f"What is {i} plus {i + 1}?"}] for i in range(6)]
    alone = vl.generate(prompts, params)
    with ThreadPoolExecutor(2) as pool:
        first, second = pool.submit(vl.generate, prompts[:4], params), pool.submit(vl.generate, prompts[4:], params)
        together = first.result(timeout=300) + second.result(timeout=300)
    assert len(together) == 6 and all(g.output_tokens for g in together)
    assert [g.token_ids for g in together] == [g.token_ids for g in alone]
