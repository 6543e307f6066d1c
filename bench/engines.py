"""Output tokens/s of the vllm and hf backends on the same prompts with the built-in model, and their ratio.

Both engines get the same chat prompts, sampling settings and output budget, one after the other in this one
process (so the same machine state), after a short warm-up each. Run: ``make bench`` or
``python bench/engines.py --prompts 32 --max-tokens 128``.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def prompts(n: int) -> list:
    topics = ["apples", "trains", "a bakery", "a garden", "savings", "a school trip", "paint", "books"]
    return [[{"role": "user", "content": f"Write a short math word problem about {topics[i % len(topics)]} "
              f"with the number {i + 3}, then solve it step by step."}] for i in range(n)]


def measure(backend_name: str, model: str, n: int, max_tokens: int, options: dict, top_p: float) -> dict:
    from psi_ray.backends import SamplingParams, load_backend

    t0 = time.perf_counter()
    b = load_backend(backend_name, model, **options)
    start_s = time.perf_counter() - t0
    params = SamplingParams(temperature=0.8, top_p=top_p, max_tokens=max_tokens, seed=0)
    b.generate(prompts(2), SamplingParams(temperature=0, max_tokens=8))  # warm-up
    t0 = time.perf_counter()
    gens = b.generate(prompts(n), params)
    dt = time.perf_counter() - t0
    b.close()
    out_tokens = sum(g.output_tokens for g in gens)
    return {"backend": backend_name, "prompts": n, "output_tokens": out_tokens, "seconds": round(dt, 2),
            "tokens_per_s": round(out_tokens / dt, 1), "engine_start_s": round(start_s, 1),
            "errors": sum(g.error is not None for g in gens)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--hf-batch", type=int, default=32)
    ap.add_argument("--top-p", type=float, default=0.95,
                    help="0.95 (default: the jobs' sampling default and the README's figure); 1.0 skips vLLM's "
                    "top-p sort, 35%% of its CPU time at 0.95 (py-spy)")
    args = ap.parse_args()
    threads = len(os.sched_getaffinity(0))
    results = [
        measure("hf", args.model, args.prompts, args.max_tokens, {"batch_size": args.hf_batch, "threads": threads},
                args.top_p),
        measure("vllm", args.model, args.prompts, args.max_tokens, {"max_model_len": 1024}, args.top_p),
    ]
    hf, vl = results
    print(f"\n{'backend':<8} {'prompts':>8} {'out tok':>8} {'sec':>8} {'tok/s':>8} {'start s':>8}")
    for r in results:
        print(f"{r['backend']:<8} {r['prompts']:>8} {r['output_tokens']:>8} {r['seconds']:>8} "
              f"{r['tokens_per_s']:>8} {r['engine_start_s']:>8}")
    ratio = vl["tokens_per_s"] / hf["tokens_per_s"]
    print(f"\nvllm / hf output tokens/s: {ratio:.2f}x  (same {args.prompts} prompts, max_tokens={args.max_tokens}, "
          f"top_p={args.top_p}, {threads} cores)")
    print(json.dumps({"engines": results, "vllm_over_hf": round(ratio, 2)}))


if __name__ == "__main__":
    main()
