"""Filter + dataset write at 10K and 100K rows: time and memory-growth ratios (targets: time <= 12x, memory
growth <= 1.2x for 10x the rows), and every planted row counted back against the filter's verdict.

The rows are SYNTHETIC, made by a deterministic generator in this file (templated GSM8K-style word problems),
not by a model. The generator records what it plants, row by row: distinct valid rows, exact duplicates and
near duplicates (one word changed: word 3-gram Jaccard ~0.92 with their source, above the 0.8 threshold) of
earlier distinct rows, and rows with a wrong calculator step (~10% each). Each size runs in its own fresh
process through the pipeline's own filter and dataset stages, reading shards from a run folder as a real run
does. Memory is the growth of the resident set over a baseline taken after every import and the seed load,
up to its peak during the two stages (Linux ``/proc/self/clear_refs`` resets the peak at the baseline), so the
interpreter and library imports do not hide how the stages scale. Run: ``python bench/scale.py`` (or
``--sizes 10000 100000``).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter

NAMES = ["Ava", "Ben", "Cleo", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lea", "Max", "Nia"]
THINGS = ["apples", "books", "coins", "stamps", "marbles", "pencils", "shells", "cards", "plants", "tickets"]
VERBS = ["buys", "finds", "gets", "collects", "receives", "wins"]
KEPT = "kept"  # the planted label (and the outcome) of a row the filter must keep


def near_copy(question: str) -> str:
    """The last word changed: one word 3-gram of the question differs from its source's."""
    return question.removesuffix("at the end?") + "at the finish?"


def synthetic_rows(n: int, seed: int = 0) -> tuple[list[dict], list[str]]:
    """Deterministic GSM8K-shaped rows and, for each, what was planted: ``kept`` (a distinct valid row),
    ``exact_duplicate`` or ``near_duplicate`` (of an earlier distinct valid row), ``wrong_equation``."""
    rng = random.Random(seed)
    rows: list[dict] = []
    planted: list[str] = []
    sources: list[int] = []  # distinct valid rows, the only rows copied
    for i in range(n):
        kind = rng.random()
        if sources and kind < 0.1:
            src = rows[sources[rng.randrange(len(sources))]]
            q, r, label = src["instruction"], src["response"], "exact_duplicate"
        elif sources and kind < 0.2:
            src = rows[sources[rng.randrange(len(sources))]]
            q, r, label = near_copy(src["instruction"]), src["response"], "near_duplicate"
        else:
            who, what, verb = rng.choice(NAMES), rng.choice(THINGS), rng.choice(VERBS)
            a, b, c = rng.randint(2, 999), rng.randint(2, 99), rng.randint(2, 9)
            wrong = 1 if kind > 0.9 else 0
            q = (f"{who} has {a} {what}. Every day for {c} days {who} {verb} {b} more {what} at store {i}. "
                 f"How many {what} does {who} have at the end?")
            step = b * c + wrong
            r = (f"{who} {verb} {b} * {c} = <<{b}*{c}={step}>>{step} {what}.\n"
                 f"So {a} + {step} = <<{a}+{step}={a + step}>>{a + step}.\n#### {a + step}")
            label = "wrong_equation" if wrong else KEPT
            if not wrong:
                sources.append(i)
        planted.append(label)
        rows.append({"id": f"inst-{i:07d}", "shard": 0, "instruction": q, "response": r, "principle_ids": ["H00"],
                     "example_ids": ["seed-00000"], "generator": "synthetic", "raw_output": r, "error": None,
                     "finish_reason": "stop", "prompt_tokens": 0, "output_tokens": 0, "node_id": None})
    return rows, planted


def near_jaccard(rows: list[dict], planted: list[str], sample: int = 200) -> float:
    """Mean word 3-gram Jaccard of planted near duplicates with their sources (the filter's own shingles)."""
    from psi_ray.stages.filter import shingles

    by_text = {r["instruction"]: r for r, p in zip(rows, planted, strict=True) if p == KEPT}
    values = []
    for r, p in zip(rows, planted, strict=True):
        if p == "near_duplicate" and len(values) < sample:
            src = by_text[r["instruction"].removesuffix("at the finish?") + "at the end?"]
            a, b = set(shingles(r["instruction"])), set(shingles(src["instruction"]))
            values.append(len(a & b) / len(a | b))
    return sum(values) / max(1, len(values))


def job(runs_dir: str, n: int):
    from psi_ray.config import JobConfig

    return JobConfig(runs_dir=runs_dir, instances={"count": n}, carbon={"enabled": False})


def prepare(runs_dir: str, rows: list[dict], shard: int) -> None:
    """Write the synthetic rows as instance shards, as a finished instance stage would (not measured)."""
    from psi_ray.rundir import StageDir

    made = StageDir(job(runs_dir, len(rows)).run_dir(), 5, "instances")
    for s in range(0, len(rows), shard):
        made.write_part(s // shard, rows[s : s + shard])
    made.write_manifest({"rows": len(rows)})


def memory_kb() -> dict[str, int]:
    """This process's resident set now (``VmRSS``) and at its peak (``VmHWM``), in KiB."""
    status = open("/proc/self/status").read()
    return {k: int(re.search(rf"{k}:\s+(\d+)", status).group(1)) for k in ("VmRSS", "VmHWM")}


def run_one(runs_dir: str, n: int) -> dict:
    """In a fresh process: time the filter + dataset stages over the shards; memory growth over a baseline."""
    import datasketch  # noqa: F401  every module the stages use is imported before the baseline
    import pyarrow.parquet  # noqa: F401
    import pybloomfilter  # noqa: F401

    from psi_ray.pipeline import Run, dataset_stage, filter_stage
    from psi_ray.rundir import StageDir
    from psi_ray.stages import seeds

    cfg = job(runs_dir, n)
    r = Run(cfg)
    seed_rows = seeds.load(cfg)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set to the current one
    baseline = memory_kb()["VmRSS"]
    t0 = time.perf_counter()
    kept = StageDir(r.dir, 6, "filter")
    fextra = filter_stage(r, kept, StageDir(r.dir, 5, "instances"), seed_rows).manifest
    kept.write_manifest(fextra)
    dextra = dataset_stage(r, StageDir(r.dir, 7, "dataset"), kept, []).manifest
    dt = time.perf_counter() - t0
    peak = memory_kb()["VmHWM"]
    return {"rows": n, "seconds": round(dt, 2), "baseline_mb": round(baseline / 1024, 1),
            "growth_mb": round((peak - baseline) / 1024, 1), "kept": dextra["valid"], "rejected": fextra["rejected"]}


def count_back(runs_dir: str, n: int, planted: list[str]) -> dict[str, dict[str, int]]:
    """Per planted label, what the filter made of those rows (``kept`` or a reject reason), row by row."""
    from psi_ray.rundir import StageDir

    sd = StageDir(job(runs_dir, n).run_dir(), 6, "filter")
    ids, reasons = sd.read_column("id"), sd.read_column("reject_reason")
    assert ids == [f"inst-{i:07d}" for i in range(n)], "the filter lost, added or reordered rows"
    table: dict[str, Counter] = {}
    for label, reason in zip(planted, reasons, strict=True):
        table.setdefault(label, Counter())[reason or KEPT] += 1
    return {label: dict(c.most_common()) for label, c in sorted(table.items())}


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
        rows, planted = synthetic_rows(n)
        with tempfile.TemporaryDirectory() as tmp:
            prepare(tmp, rows, args.shard)
            out = subprocess.run([sys.executable, __file__, "--one", tmp, str(n)], capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(out.stderr[-3000:])
            res = json.loads(out.stdout.strip().splitlines()[-1])
            res["planted"], res["outcome"] = dict(Counter(planted)), count_back(tmp, n, planted)
            res["near_jaccard"] = round(near_jaccard(rows, planted), 3)
        results.append(res)
    print("synthetic rows from a deterministic generator (bench/scale.py), filter + dataset write")
    print(f"{'rows':>8} {'seconds':>8} {'growth MB':>10} {'baseline MB':>12} {'kept':>8}  rejected")
    for r in results:
        rejected = {k: v for k, v in r["rejected"].items() if v}
        print(f"{r['rows']:>8} {r['seconds']:>8} {r['growth_mb']:>10} {r['baseline_mb']:>12} {r['kept']:>8}  {rejected}")
    for r in results:
        print(f"\n{r['rows']} rows, planted vs what the filter did (near duplicates: mean Jaccard "
              f"{r['near_jaccard']} with their source):")
        for label, outcome in r["outcome"].items():
            hit = outcome.get(label, 0)
            other = ", ".join(f"{k} {v}" for k, v in outcome.items() if k != label) or "none"
            print(f"  {label:<16} planted {r['planted'][label]:>7}  as planted {hit:>7}  otherwise: {other}")
    small, big = results[0], results[-1]
    scale = big["rows"] / small["rows"]
    print(f"\n{scale:.0f}x rows: time {big['seconds'] / small['seconds']:.2f}x (target <= {1.2 * scale:.0f}x), "
          f"memory growth {big['growth_mb'] / max(small['growth_mb'], 0.1):.2f}x (target <= 1.2x; "
          f"{small['growth_mb']} → {big['growth_mb']} MB over a {small['baseline_mb']} MB baseline)")


if __name__ == "__main__":
    main()
