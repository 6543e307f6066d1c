"""The whole generation pipeline at 10K, 100K (and 1M) instances, with the model taken out: rows/s and the
driver's peak memory, so what is measured is psi-ray's orchestration, not an engine.

The engine is SYNTHETIC and lives in this file only (never registered as a backend a job can name): an engine
actor that answers every instance prompt at once with a templated GSM8K problem, unique per instance id, in
the format the GSM8K adapter parses. Everything else is the real ``psi-ray run`` path: the job config, the
seed load, Ray, the engine pool and its actors, Ray Data ``map_batches`` feeding them, instance shards written
as they complete, manifests, the filter (dedup, decontamination against GSM8K and MMLU test), the dataset
Parquet and its card. The job is ``method: student`` (no principle stages: their cost does not grow with N)
with D_initial the seeds alone. Each size runs in its own fresh process. Driver memory is the growth of its
resident set over a baseline taken after imports and Ray start-up, up to the peak during the run (Linux
``/proc/self/clear_refs`` resets the peak at the baseline). Run: ``python bench/orchestration.py`` (or
``--sizes 10000 100000 1000000``; ``--verify K`` adds the verify stage, K re-solutions per instance).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

from scale import memory_kb  # bench/scale.py: resident set now and at its peak


class SyntheticEngineActor:
    """BENCHMARK TEST DOUBLE: the engine actor's interface (``ready``, ``generate``, ``close``) with no model.
    Each answer is a GSM8K problem and worked solution made from the instance id, so every row is distinct; a
    verify request for instance k gets instance k's solution again, so the verifier agrees."""

    def __init__(self, spec: dict):
        import ray

        self.node_id = ray.get_runtime_context().get_node_id()

    def ready(self) -> None:
        return None

    def generate(self, batch: dict, params: dict) -> dict:
        ids = [str(i) for i in batch["id"]]
        texts = []
        for i in ids:
            k = int(i.rsplit("-", 1)[-1].split("#")[0])  # a verify request asks instance k's question again
            a, b, c = 2 + k % 997, 2 + k % 89, 2 + k % 7
            texts.append(f" Sam has {a} coins and finds {b} more coins on each of {c} days, box {k}. How many coins "
                         f"does Sam have now?\nAnswer: Sam finds {b} * {c} = <<{b}*{c}={b * c}>>{b * c} coins.\n"
                         f"So {a} + {b * c} = <<{a}+{b * c}={a + b * c}>>{a + b * c}.\n#### {a + b * c}")
        n = len(ids)
        return {"id": ids, "raw_output": texts, "finish_reason": ["stop"] * n, "prompt_tokens": [0] * n,
                "output_tokens": [len(t.split()) for t in texts], "error": [""] * n, "node_id": [self.node_id] * n}

    def close(self) -> None:
        return None


def job(runs_dir: str, n: int, shard: int, batch: int, verify: int = 0):
    from psi_ray.config import JobConfig

    return JobConfig(name="orchestration", method="student", runs_dir=runs_dir, shard_size=shard,
                     task={"adapter": "gsm8k", "seeds": "builtin:gsm8k_seeds.jsonl", "num_seeds": 8},
                     generator={"model": "smollm2-135m", "backend": "hf", "batch_size": batch},
                     expand={"variants_per_seed": 0}, instances={"count": n, "examples_per_prompt": 1},
                     carbon={"enabled": False},
                     verify={"enabled": verify > 0, "tier": "generator", "samples": max(verify, 1)})


def run_one(runs_dir: str, n: int, shard: int, batch: int, verify: int = 0) -> dict:
    """In a fresh process: the real pipeline with the synthetic engine actor; seconds, rows/s, driver memory."""
    import psi_ray.pipeline.engines as engines
    from psi_ray.pipeline.psi import run
    from psi_ray.runtime import init_ray
    from psi_ray.stages import filter as _filters  # noqa: F401  imported before the baseline

    engines.EngineActor = SyntheticEngineActor  # the pool starts this class instead of a model's engine
    cfg = job(runs_dir, n, shard, batch, verify)
    init_ray()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    baseline = memory_kb()["VmRSS"]
    t0 = time.perf_counter()
    run_dir = run(cfg)
    dt = time.perf_counter() - t0
    peak = memory_kb()["VmHWM"]
    manifests = {p.parent.name: json.loads(p.read_text()) for p in run_dir.glob("0*/_manifest.json")}
    return {"rows": n, "seconds": round(dt, 1), "rows_per_s": round(n / dt), "baseline_mb": round(baseline / 1024),
            "growth_mb": round((peak - baseline) / 1024), "kept": manifests["07_dataset"]["valid"],
            "stage_s": {k[3:]: round(m["energy"]["duration_s"], 1) for k, m in sorted(manifests.items())}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--shard", type=int, default=1000, help="instances.shard_size (default 1000)")
    ap.add_argument("--batch", type=int, default=256, help="prompts a batch sent to the engine (default 256)")
    ap.add_argument("--verify", type=int, default=0, metavar="K",
                    help="also run the verify stage with K samples per instance (default 0: off)")
    ap.add_argument("--one", nargs=2, metavar=("RUNS_DIR", "ROWS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args.shard, args.batch, args.verify)))
        return
    results = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run([sys.executable, __file__, "--one", tmp, str(n), "--shard", str(args.shard),
                                  "--batch", str(args.batch), "--verify", str(args.verify)],
                                 capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(out.stderr[-3000:])
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    print("\nSYNTHETIC engine (bench/orchestration.py, no model): the real pipeline, seeds to dataset, "
          f"shards of {args.shard}, batches of {args.batch}" +
          (f", verify with {args.verify} samples per instance" if args.verify else ""))
    print(f"{'rows':>9} {'seconds':>8} {'rows/s':>8} {'driver growth MB':>17} {'baseline MB':>12} {'kept':>9}")
    for r in results:
        print(f"{r['rows']:>9} {r['seconds']:>8} {r['rows_per_s']:>8} {r['growth_mb']:>17} {r['baseline_mb']:>12} "
              f"{r['kept']:>9}")
    for r in results:
        print(f"{r['rows']} rows, seconds per stage: {r['stage_s']}")
    if len(results) > 1:
        small, big = results[-2], results[-1]
        print(f"\n{big['rows'] // small['rows']}x rows: driver memory growth "
              f"{big['growth_mb'] / max(small['growth_mb'], 1):.2f}x (target <= 1.2x), rows/s "
              f"{big['rows_per_s']} (target >= 5,000)")


if __name__ == "__main__":
    main()
