"""The HF generation core (hf backend and Serve): exact per-token log-probabilities, batched generation equal to one-by-one, stops."""

import pytest
import torch

from psi_ray.backends.hf_core import CompletionEngine, GenSettings


@pytest.fixture(scope="module")
def engine(tiny_model):
    return CompletionEngine(str(tiny_model), threads=1)


def test_score_is_log_softmax_of_the_next_token(engine):
    ids = engine.encode("Question: What is 2 + 3? Answer: 5")
    out = engine.score(ids, top_k=2)
    with torch.inference_mode():
        logp = torch.log_softmax(engine.lm(torch.tensor([ids])).logits[0].float(), -1)
    expected = [logp[i, ids[i + 1]].item() for i in range(len(ids) - 1)]
    assert out["token_logprobs"][0] is None and out["top_logprobs"][0] is None
    assert out["token_logprobs"][1:] == pytest.approx(expected, abs=1e-6)
    assert all(len(t) <= 2 and max(t.values()) >= lp - 1e-6
               for t, lp in zip(out["top_logprobs"][1:], out["token_logprobs"][1:], strict=True))
    assert "".join(out["tokens"]) == engine.decode(ids)


def test_batched_greedy_equals_one_by_one(engine):
    prompts = [engine.encode(t) for t in ("Question: What is", "principles of math word problems", "2 + 3")]
    greedy = GenSettings(max_tokens=6, temperature=0)
    batched = engine.generate(prompts, [greedy] * 3)
    single = [engine.generate([p], [greedy])[0] for p in prompts]
    assert [c.token_ids for c in batched] == [c.token_ids for c in single]
    assert all(c.finish_reason in ("length", "stop") for c in batched)


def test_stop_strings_cut_the_text(engine):
    p = engine.encode("Question: What is")
    free = engine.generate([p], [GenSettings(max_tokens=12, temperature=0)])[0]
    assert len(free.text) > 2
    stop = free.text[2:4]
    cut = engine.generate([p], [GenSettings(max_tokens=12, temperature=0, stop=(stop,))])[0]
    assert cut.finish_reason == "stop" and stop not in cut.text and free.text.startswith(cut.text)
    assert engine.generate([p], [GenSettings(max_tokens=0)])[0].text == ""


def test_a_vanishing_temperature_is_greedy(engine):
    """vLLM's rule: below 1e-5 a request is greedy; sampling at 1e-45 would divide the logits into inf."""
    p = engine.encode("Question: What is")
    greedy = engine.generate([p], [GenSettings(max_tokens=8, temperature=0)])[0]
    tiny = engine.generate([p], [GenSettings(max_tokens=8, temperature=1e-45)])[0]
    assert tiny.token_ids == greedy.token_ids


def test_a_request_that_breaks_the_engine_fails_alone(engine):
    """The Serve replica's batch: one job the engine cannot run (a seed past 64 bits slipped past validation)
    gets its exception in its place; the jobs batched with it are answered as if it had not been there."""
    from psi_ray.serve.app import generate_isolated

    p = engine.encode("Question: What is")
    good = GenSettings(max_tokens=4, temperature=0.8, seed=7)
    poison = GenSettings(max_tokens=4, temperature=0.8, seed=2**64)  # equal settings: one batch with the others
    out = generate_isolated(engine.generate, [(p, poison), (p, good), (p, good)])
    assert isinstance(out[0], ValueError) and "Overflow" in str(out[0])
    alone = engine.generate([p], [good])[0]
    assert [c.token_ids for c in out[1:]] == [alone.token_ids] * 2
