"""Instance-generation throughput through the Ray Data pipeline vs the raw vLLM engine, same prompts.

Both paths get the same instance prompts (the job's plan: principles, examples, samples per prompt) and the
same sampling settings. The raw path calls ``vllm.LLM.generate`` on all prompts at once in this process; the
pipeline path sends them through Ray Data ``map_batches`` into an engine actor of an ``EnginePool`` exactly as
``psi-ray run`` does. Output tokens/s exclude engine start-up on both sides (the pool is started first).
Run: ``python bench/pipeline.py [--instances 128] [--job jobs/gsm8k_cpu.yaml]``.
"""

from __future__ import annotations

import argparse
import json
import time


def plan(cfg, n: int) -> list[dict]:
    from psi_ray.stages import instances, seeds
    from psi_ray.tasks import get_adapter

    high = [{"principle_id": f"H{i:02d}", "text": t} for i, t in enumerate([
        "Identify every quantity in the problem and what is asked before calculating.",
        "Write each calculation as <<expression=result>> and carry results forward step by step.",
        "State the final number alone on the last line after ####.",
        "Check that the answer is reasonable for the quantities in the question."])]
    ic = cfg.instances
    return instances.plan(n, n, cfg.seed, high, seeds.load(cfg), ic.principles_per_prompt, ic.examples_per_prompt,
                          get_adapter(cfg.task.adapter), ic.samples_per_prompt)


def raw_engine(cfg, rows) -> dict:
    from psi_ray.backends import load_backend

    b = load_backend("vllm", cfg.generator.model, **cfg.generator.options)
    t0 = time.perf_counter()
    gens = b.generate([r["prompt"] for r in rows], cfg.instances.sampling.params())
    dt = time.perf_counter() - t0
    b.close()
    tokens = sum(g.output_tokens for g in gens)
    return {"path": "raw vLLM", "output_tokens": tokens, "seconds": round(dt, 1), "tokens_per_s": round(tokens / dt, 1)}


def ray_pipeline(cfg, rows) -> dict:
    from psi_ray import pipeline

    pipeline.init_ray()
    with pipeline.engine_pool() as pool:
        t0 = time.time()
        pool.actors_for(cfg.generator)
        ready = time.time()
        got = pipeline.generate(rows, cfg.generator, cfg.instances.sampling, pool)
        end = time.time()
    tokens = sum(g["output_tokens"] for g in got)
    return {"path": "Ray Data pipeline", "output_tokens": tokens, "seconds": round(end - ready, 1),
            "tokens_per_s": round(tokens / (end - ready), 1), "with_engine_start_s": round(end - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--job", default="jobs/gsm8k_cpu.yaml")
    ap.add_argument("--instances", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=None, help="prompts per engine call (default: the job's)")
    args = ap.parse_args()
    from psi_ray.config import load_config

    cfg = load_config(args.job)
    if args.batch_size:
        cfg.generator.batch_size = args.batch_size
    rows = plan(cfg, args.instances)
    results = [raw_engine(cfg, rows), ray_pipeline(cfg, rows)]
    print(f"\n{args.instances} instance prompts, {cfg.generator.model}, batch_size={cfg.generator.batch_size}, "
          f"samples_per_prompt={cfg.instances.samples_per_prompt}")
    for r in results:
        print(f"{r['path']:<18} {r['output_tokens']:>7} tokens {r['seconds']:>7}s {r['tokens_per_s']:>7} tok/s")
    ratio = results[1]["tokens_per_s"] / results[0]["tokens_per_s"]
    print(f"pipeline / raw engine: {ratio:.2f}x (target >= 0.9)")
    print(json.dumps({"pipeline": results, "ratio": round(ratio, 2)}))


if __name__ == "__main__":
    main()
