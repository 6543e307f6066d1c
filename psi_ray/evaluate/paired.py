"""Is the fine-tuned model better than the base on the same questions, or is it noise?

Both models answer the same questions, so the comparison is paired, question by question: the difference of
the two scores with a paired bootstrap 95% interval (questions resampled with replacement, both models' answers
kept together), and McNemar's exact test on the questions where exactly one of them is right. On 50 GSM8K
questions one question is 2 points; these say how many points a difference needs before it means anything.
Pure: reads lm-eval's per-question sample files, no model or Ray.
"""

from __future__ import annotations

import json
from math import comb
from pathlib import Path

BOOTSTRAP_ROUNDS = 10_000
METRICS = ("exact_match", "acc")  # the per-question 0/1 fields the sample files carry (psi_ray.evaluate.run)


def per_question(samples_file: Path) -> dict[str, dict[int, float]]:
    """``{"<metric>" or "<metric> (<filter>)": {doc_id: score}}`` from one lm-eval samples file, named as the
    eval stage's table names metrics."""
    out: dict[str, dict[int, float]] = {}
    for line in samples_file.read_text(encoding="utf-8").splitlines():
        s = json.loads(line)
        flt = s.get("filter") or "none"
        for metric in METRICS:
            if s.get(metric) is not None:
                name = metric + (f" ({flt})" if flt != "none" else "")
                out.setdefault(name, {})[int(s["doc_id"])] = float(s[metric])
    return out


def mcnemar_exact(a: list[float], b: list[float]) -> tuple[int, int, float]:
    """(questions only ``a`` got right, questions only ``b`` got right, two-sided exact p): under no difference
    each discordant question is a fair coin, so p is twice the smaller binomial tail, at most 1."""
    only_a = sum(1 for x, y in zip(a, b, strict=True) if x > y)
    only_b = sum(1 for x, y in zip(a, b, strict=True) if y > x)
    n = only_a + only_b
    if n == 0:
        return 0, 0, 1.0
    tail = sum(comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2**n
    return only_a, only_b, min(1.0, 2 * tail)


def paired_bootstrap(a: list[float], b: list[float], rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0
                     ) -> tuple[float, float, float]:
    """(mean(b) - mean(a), and its 2.5th and 97.5th percentiles over ``rounds`` resamples of the questions).

    A resample of n questions is drawn as multinomial counts over the distinct per-question differences (for
    0/1 scores: -1, 0, +1), the same distribution as drawing n indices with replacement, at any n in
    milliseconds."""
    import numpy as np

    n = len(a)
    if n == 0 or n != len(b):
        raise ValueError(f"paired scores need the same questions on both sides, got {len(a)} and {len(b)}")
    values, counts = np.unique(np.asarray(b, float) - np.asarray(a, float), return_counts=True)
    draws = np.random.default_rng(seed).multinomial(n, counts / n, size=rounds)
    means = np.sort(draws @ values / n)
    return float(values @ counts / n), float(means[int(0.025 * rounds)]), \
        float(means[min(rounds - 1, int(0.975 * rounds))])


def compare(base_dir: Path, tuned_dir: Path, tasks: list[str], rounds: int = BOOTSTRAP_ROUNDS) -> dict[str, dict]:
    """``{"<task> <metric>": {n, base, finetuned, difference, ci95, only_base, only_finetuned, mcnemar_p}}`` for
    every task and metric both models were scored on, over the questions both answered."""
    out = {}
    for task in tasks:
        files = [d / f"samples_{task}.jsonl" for d in (base_dir, tuned_dir)]
        if not all(f.exists() for f in files):
            continue
        base, tuned = (per_question(f) for f in files)
        for metric in sorted(set(base) & set(tuned)):
            docs = sorted(set(base[metric]) & set(tuned[metric]))
            if not docs:
                continue
            a, b = [base[metric][d] for d in docs], [tuned[metric][d] for d in docs]
            diff, lo, hi = paired_bootstrap(a, b, rounds)
            only_a, only_b, p = mcnemar_exact(a, b)
            out[f"{task} {metric}"] = {"n": len(docs), "base": sum(a) / len(a), "finetuned": sum(b) / len(b),
                                       "difference": diff, "ci95": [lo, hi], "only_base": only_a,
                                       "only_finetuned": only_b, "mcnemar_p": p}
    return out
