"""The transformers path on CUDA (the hf backend's ``CompletionEngine``): on a GPU it loads in bf16 there by
default, generates, stops at a stop string, and its token log-probabilities match the float32 CPU engine's to
bf16 precision. Needs only torch and transformers, so it runs on any CUDA machine."""

import pytest

pytestmark = pytest.mark.gpu

PROMPT = "Question: What is 2 + 3? Answer: 2 + 3 = <<2+3=5>>5\n#### 5"


def test_hf_backend_defaults_to_bf16_on_cuda(tiny_model):
    import torch

    from psi_ray.backends import SamplingParams, load_backend

    b = load_backend("hf", str(tiny_model), batch_size=4)
    param = next(b.core.lm.parameters())
    assert b.device == "cuda" and b.resources == {"GPU": 1.0}
    assert param.device.type == "cuda" and param.dtype == torch.bfloat16
    gens = b.generate([[{"role": "user", "content": "What is 2 + 3?"}]] * 6,
                      SamplingParams(temperature=0.8, max_tokens=24, seed=0))
    assert len(gens) == 6 and all(g.error is None and 0 < g.output_tokens <= 24 for g in gens)
    assert [g.text for g in gens] == [g.text for g in b.generate(
        [[{"role": "user", "content": "What is 2 + 3?"}]] * 6, SamplingParams(temperature=0.8, max_tokens=24,
                                                                                 seed=0))]  # seeded: repeats
    b.close()


def test_cuda_bf16_scores_like_cpu_float32(tiny_model):
    from psi_ray.backends.hf_core import CompletionEngine

    gpu, cpu = CompletionEngine(str(tiny_model)), CompletionEngine(str(tiny_model), device="cpu")
    assert gpu.device == "cuda" and cpu.device == "cpu"
    ids = cpu.encode(PROMPT)

    def token_logprobs(engine) -> list[float]:  # log p(ids[i] | ids[:i]) for i >= 1
        import torch

        with torch.inference_mode():
            logits = engine.lm(torch.tensor([ids], device=engine.device)).logits[0, :-1].float()
        return torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:], device=logits.device)[:, None])[:, 0].tolist()

    a, b = token_logprobs(gpu), token_logprobs(cpu)
    assert len(a) == len(b) == len(ids) - 1
    worst = max(abs(x - y) for x, y in zip(a, b, strict=True))
    assert worst < 0.1, worst  # bf16 keeps ~3 significant digits of each logit


def test_cuda_generation_stops_at_a_stop_string(tiny_model):
    from psi_ray.backends.hf_core import CompletionEngine, GenSettings

    engine = CompletionEngine(str(tiny_model))
    prompt = engine.encode("Question:")
    seeded = GenSettings(max_tokens=48, temperature=1.0, seed=0)  # a seeded request alone repeats exactly
    free = engine.generate([prompt], [seeded])[0]
    text = free.text
    # a two-character string that first occurs in the second half of the text
    at = next((i for i in range(len(text) // 2, len(text) - 1) if text.find(text[i:i + 2]) == i), None)
    assert at is not None, f"no stop string to cut at in {text!r}"
    stop = text[at:at + 2]
    cut = engine.generate([prompt], [GenSettings(48, 1.0, 1.0, (stop,), seed=0)])[0]
    assert cut.finish_reason == "stop" and cut.text == text[:at], (text, stop, cut.text)
    assert len(cut.token_ids) < len(free.token_ids)
