"""Filter + dataset write at 10K and 100K rows: time and peak-RSS ratios (targets: time <= 12x, RSS <= 1.2x).

The rows are SYNTHETIC, made by a deterministic text generator in this file (templated GSM8K-style word
problems with correct and wrong calculator steps, exact and near duplicates), not by a model. Each size runs in
its own fresh process through the pipeline's own filter and dataset stages, reading shards from a run folder
as a real run does. Run: ``python bench/scale.py`` (or ``--sizes 10000 100000``).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time

NAMES = ["Ava", "Ben", "Cleo", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lea", "Max", "Nia"]
THINGS = ["apples", "books", "coins", "stamps", "marbles", "pencils", "shells", "cards", "plants", "tickets"]
VERBS = ["buys", "finds", "gets", "collects", "receives", "wins"]


def synthetic_rows(n: int, seed: int = 0) -> list[dict]:
    """Deterministic GSM8K-shaped rows: ~10% exact duplicates, ~10% near duplicates, ~10% wrong steps."""
    rng = random.Random(seed)
    rows: list[dict] = []
    for i in range(n):
        kind = rng.random()
        if rows and kind < 0.1:
            src = rows[rng.randrange(len(rows))]
            q, r = src["instruction"], src["response"]
        elif rows and kind < 0.2:
            src = rows[rng.randrange(len(rows))]
            q, r = src["instruction"].replace("How many", "How many in total"), src["response"]
        else:
            who, what, verb = rng.choice(NAMES), rng.choice(THINGS), rng.choice(VERBS)
            a, b, c = rng.randint(2, 999), rng.randint(2, 99), rng.randint(2, 9)
            total = a + b * c
            q = (f"{who} has {a} {what}. Every day for {c} days {who} {verb} {b} more {what} at store {i}. "
                 f"How many {what} does {who} have at the end?")
            wrong = 1 if kind > 0.9 else 0
            r = (f"{who} {verb} {b} * {c} = <<{b}*{c}={b * c + wrong}>>{b * c + wrong} {what}.\n"
                 f"So {a} + {b * c} = <<{a}+{b * c}={total}>>{total}.\n#### {total}")
        rows.append({"id": f"inst-{i:07d}", "shard": 0, "instruction": q, "response": r, "principle_ids": ["H00"],
                     "example_ids": ["seed-00000"], "generator": "synthetic", "raw_output": r, "error": None,
                     "finish_reason": "stop", "prompt_tokens": 0, "output_tokens": 0, "node_id": None})
    return rows


def job(runs_dir: str, n: int):
    from psi_ray.config import JobConfig

    return JobConfig(runs_dir=runs_dir, instances={"count": n}, carbon={"enabled": False})


def prepare(runs_dir: str, n: int, shard: int) -> None:
    """Write the synthetic rows as instance shards, as a finished instance stage would (not measured)."""
    from psi_ray.rundir import StageDir

    made = StageDir(job(runs_dir, n).run_dir(), 5, "instances")
    rows = synthetic_rows(n)
    for s in range(0, n, shard):
        made.write_part(s // shard, rows[s : s + shard])
    made.write_manifest({"rows": n})


def run_one(runs_dir: str, n: int) -> dict:
    """In a fresh process: time the filter + dataset stages over the shards; report this process's peak RSS."""
    from psi_ray.pipeline import Run, dataset_stage, filter_stage
    from psi_ray.rundir import StageDir
    from psi_ray.stages import seeds

    cfg = job(runs_dir, n)
    r = Run(cfg)
    seed_rows = seeds.load(cfg)
    t0 = time.perf_counter()
    kept = StageDir(r.dir, 6, "filter")
    _, fextra = filter_stage(r, kept, StageDir(r.dir, 5, "instances"), seed_rows)
    kept.write_manifest(fextra)
    _, dextra = dataset_stage(r, StageDir(r.dir, 7, "dataset"), kept, [])
    dt = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"rows": n, "seconds": round(dt, 2), "peak_rss_mb": round(peak_mb, 1), "kept": dextra["valid"],
            "rejected": fextra["rejected"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--shard", type=int, default=1000, help="rows per shard, as instances.shard_size")
    ap.add_argument("--one", nargs=2, metavar=("RUNS_DIR", "ROWS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]))))
        return
    results = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            prepare(tmp, n, args.shard)
            out = subprocess.run([sys.executable, __file__, "--one", tmp, str(n)], capture_output=True, text=True,
                                 check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("synthetic rows from a deterministic generator (bench/scale.py), filter + dataset write")
    print(f"{'rows':>8} {'seconds':>8} {'peak RSS MB':>12} {'kept':>8}  rejected")
    for r in results:
        print(f"{r['rows']:>8} {r['seconds']:>8} {r['peak_rss_mb']:>12} {r['kept']:>8}  {r['rejected']}")
    small, big = results[0], results[-1]
    scale = big["rows"] / small["rows"]
    print(f"\n{scale:.0f}x rows: time {big['seconds'] / small['seconds']:.2f}x (target <= {1.2 * scale:.0f}x), "
          f"peak RSS {big['peak_rss_mb'] / small['peak_rss_mb']:.2f}x (target <= 1.2x)")


if __name__ == "__main__":
    main()
