"""Instance-generation throughput through the Ray Data pipeline vs the raw vLLM engine, same prompts.

Both paths get the same instance prompts (the job's plan: principles, examples, samples per prompt) and the
same sampling settings. The raw path calls ``vllm.LLM.generate`` on all prompts at once in this process; the
pipeline path sends them through Ray Data ``map_batches`` into an engine actor of an ``EnginePool`` exactly as
``psi-ray run`` does. Output tokens/s exclude engine start-up on every side (the pool is started first). Each side runs in its
own fresh process, every engine with the CPU libraries engine actors preload.

A third side, ``raw vLLM, Ray up``, is the raw path again in a process that is the driver of an idle local Ray
instance (``ray start --head``). In the pipeline the engine also lives in a Ray process beside Ray's own (GCS,
raylet, dashboard, log monitor), so this side says how much of the pipeline's gap to the raw engine comes
before the pipeline does anything, and how much is its own work (planning, Ray Data, parsing). It is not quite
the pipeline's setting: there the engine is an actor, here a driver. The side is skipped, with a line saying
so, when Ray already runs on this machine (it ends with ``ray stop --force``, which stops every Ray instance).
The sides run in a fixed order: raw, pipeline, Ray up.
Run: ``python bench/pipeline.py [--instances 128] [--job jobs/gsm8k_cpu.yaml] [--no-ray-side]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HIGH = [{"principle_id": f"H{i:02d}", "text": t} for i, t in enumerate([
    "Identify every quantity in the problem and what is asked before calculating.",
    "Write each calculation as <<expression=result>> and carry results forward step by step.",
    "State the final number alone on the last line after ####.",
    "Check that the answer is reasonable for the quantities in the question."])]


def plan_args(cfg, n: int) -> dict:
    """The instance plan of ``n`` rows in one shard, as the instances stage describes it to the data plane."""
    from psi_ray.stages import seeds

    ic = cfg.instances
    return {"count": n, "shard_size": n, "seed": cfg.seed, "principles": HIGH, "seeds": seeds.load(cfg),
            "principles_per_prompt": ic.principles_per_prompt, "examples_per_prompt": ic.examples_per_prompt,
            "samples_per_prompt": ic.samples_per_prompt}


def plan(cfg, n: int) -> list[dict]:
    """The same plan's rows, built whole (the raw side)."""
    from psi_ray.stages import instances
    from psi_ray.tasks import get_adapter

    a = {k: v for k, v in plan_args(cfg, n).items() if k != "count"}
    return instances.plan_range(0, n, adapter=get_adapter(cfg.task.adapter), **a)


def raw_engine(cfg, rows) -> dict:
    from psi_ray.backends import load_backend

    b = load_backend("vllm", cfg.generator.model, **cfg.generator.options)
    t0 = time.perf_counter()
    gens = b.generate([r["prompt"] for r in rows], cfg.instances.sampling.params())
    dt = time.perf_counter() - t0
    b.close()
    tokens = sum(g.output_tokens for g in gens)
    return {"path": "raw vLLM", "output_tokens": tokens, "seconds": round(dt, 1), "tokens_per_s": round(tokens / dt, 1)}


def ray_pipeline(cfg, n: int) -> dict:
    """The instances stage's own path: ``dataplane.generate_shards`` (Ray Data tasks plan, send to the engine
    actor and parse; the driver writes the shard) into a scratch stage folder."""
    import tempfile
    from pathlib import Path

    from psi_ray import pipeline
    from psi_ray.pipeline import Tally, dataplane
    from psi_ray.rundir import StageDir
    from psi_ray.tasks import get_adapter

    pipeline.init_ray()
    tally = Tally()
    with pipeline.engine_pool() as pool, tempfile.TemporaryDirectory() as tmp:
        sd = StageDir(Path(tmp), 5, "instances")
        sd.path.mkdir(parents=True)
        t0 = time.time()
        pool.actors_for(cfg.generator)
        ready = time.time()
        dataplane.generate_shards(sd, [0], plan_args(cfg, n), cfg.generator, cfg.instances.sampling, pool,
                                  get_adapter(cfg.task.adapter), tally)
        end = time.time()
    tokens = tally.output_tokens
    return {"path": "Ray Data pipeline", "output_tokens": tokens, "seconds": round(end - ready, 1),
            "tokens_per_s": round(tokens / (end - ready), 1), "with_engine_start_s": round(end - t0, 1)}


def one_side(args) -> dict:
    """Measure one path in this process and return its figures."""
    from psi_ray.config import load_config

    cfg = load_config(args.job)
    if args.batch_size:
        cfg.generator.batch_size = args.batch_size
    if args.side == "pipeline":
        return ray_pipeline(cfg, args.instances)
    if args.side == "raw-ray":  # connect to the idle instance main() started, as its driver
        import ray

        ray.init(address=os.environ["RAY_ADDRESS"], logging_level="WARNING")
    out = raw_engine(cfg, plan(cfg, args.instances))
    return {**out, "path": "raw vLLM, Ray up"} if args.side == "raw-ray" else out


def run_side(side: str, env: dict) -> dict:
    """One side in a fresh process; its figures."""
    from children import child_result  # bench/children.py

    return child_result(__file__, [*sys.argv[1:], "--side", side], env)


def ray_running() -> bool:
    """Whether a Ray instance runs on this machine: a raylet or GCS process, what ``ray stop`` would stop."""
    import psutil

    return any(p.info["name"] in ("raylet", "gcs_server") for p in psutil.process_iter(["name"]))


def raw_beside_ray(env: dict, ray_env: dict) -> dict | None:
    """The raw side with an idle local Ray instance up (started without the preloaded libraries, as a run's
    Ray is), stopped afterwards; None, with a line, when Ray already runs here (stopping it would stop that)."""
    import shutil

    ray_bin = shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray"
    ray_env = {k: v for k, v in ray_env.items() if k != "RAY_ADDRESS"}
    if ray_running():
        print("note: Ray already runs on this machine, so the 'raw vLLM, Ray up' side is skipped")
        return None
    try:  # "auto": the instance this machine started last, this one
        subprocess.run([ray_bin, "start", "--head", "--port", "0", "--disable-usage-stats"], env=ray_env,
                       capture_output=True, text=True, check=True)
        return run_side("raw-ray", {**env, "RAY_ADDRESS": "auto"})
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=ray_env, capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--job", default="jobs/gsm8k_cpu.yaml")
    ap.add_argument("--instances", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=None, help="prompts per engine call (default: the job's)")
    ap.add_argument("--no-ray-side", action="store_true", help="skip the raw side with an idle Ray instance up")
    ap.add_argument("--side", choices=["raw", "raw-ray", "pipeline"], help=argparse.SUPPRESS)  # one, in a child
    args = ap.parse_args()
    if args.side:
        print("RESULT " + json.dumps(one_side(args)), flush=True)
        return
    # Each side in a fresh process: an engine that ran in this process first leaves threads and memory behind
    # that slowed the next one by half in a shared process. The raw side gets the engine actors' preloaded
    # libraries; the pipeline's driver does not (Ray's own processes would inherit them, Intel OpenMP's
    # spinning threads included), its engine actor gets them from its runtime env as in a run.
    from psi_ray.runtime import engine_actor_env

    base = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    preload = {"LD_PRELOAD": engine_actor_env()["LD_PRELOAD"]} if "LD_PRELOAD" in engine_actor_env() else {}
    results = [run_side("raw", {**base, **preload}), run_side("pipeline", base)]
    if not args.no_ray_side and (beside := raw_beside_ray({**base, **preload}, base)):
        results.append(beside)
    from psi_ray.config import load_config

    cfg = load_config(args.job)
    print(f"\n{args.instances} instance prompts, {cfg.generator.model}, batch_size="
          f"{args.batch_size or cfg.generator.batch_size}, samples_per_prompt={cfg.instances.samples_per_prompt}")
    for r in results:
        print(f"{r['path']:<18} {r['output_tokens']:>7} tokens {r['seconds']:>7}s {r['tokens_per_s']:>7} tok/s")
    ratio = results[1]["tokens_per_s"] / results[0]["tokens_per_s"]
    print(f"pipeline / raw engine: {ratio:.2f}x (target >= 1.0)")
    ratios = {"ratio": round(ratio, 2)}
    if len(results) > 2:
        ray_up = results[2]["tokens_per_s"] / results[0]["tokens_per_s"]
        ratios.update(raw_ray_up_ratio=round(ray_up, 2), pipeline_vs_raw_ray_up=round(ratio / ray_up, 2))
        print(f"raw engine as a Ray driver, Ray up / raw engine: {ray_up:.2f}x (before the pipeline does anything); "
              f"pipeline / that: {ratio / ray_up:.2f}x (the pipeline's own work)")
    print(json.dumps({"pipeline": results, **ratios}))


if __name__ == "__main__":
    main()
