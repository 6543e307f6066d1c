"""The hf backend on a tiny random model: shapes, greedy determinism, stop strings, n>1."""

from psi_ray.backends import SamplingParams, load_backend
from psi_ray.backends.base import cut_at_stop


def test_generate_shapes_and_greedy_determinism(tiny_model):
    b = load_backend("hf", str(tiny_model), batch_size=2)
    prompts = [[{"role": "user", "content": "What is 2 + 3?"}], "Question:", [{"role": "user", "content": "hi"}]]
    p = SamplingParams(temperature=0, max_tokens=8)
    a, c = b.generate(prompts, p), b.generate(prompts, p)
    assert len(a) == 3 and [g.text for g in a] == [g.text for g in c]
    assert all(g.error is None and 0 < g.output_tokens <= 8 and g.prompt_tokens > 0 for g in a)
    assert len(b.generate(prompts[:1], SamplingParams(temperature=1.0, max_tokens=4, n=3, seed=1))) == 3


def test_cut_at_stop():
    assert cut_at_stop("abc\nQuestion: x", ("\nQuestion:",)) == ("abc", True)
    assert cut_at_stop("abc", ("zz",)) == ("abc", False)
