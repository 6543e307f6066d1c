"""The hf backend's generation core: batched generation equal to one-by-one, stop strings, a vanishing temperature."""

import pytest

from psi_ray.backends.hf_core import CompletionEngine, GenSettings


@pytest.fixture(scope="module")
def engine(tiny_model):
    return CompletionEngine(str(tiny_model), threads=1)


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
