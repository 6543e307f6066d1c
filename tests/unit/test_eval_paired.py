"""Paired comparison of base and fine-tuned on the same questions: McNemar's exact test against hand-worked
binomial tails, the bootstrap interval against resampling question indices, and both read from lm-eval's
per-question sample files as the eval stage writes them."""

import json

import numpy as np
import pytest

from psi_ray.evaluate.paired import compare, mcnemar_exact, paired_bootstrap, per_question


@pytest.mark.parametrize("a, b, expected", [
    ([1, 1, 0, 0, 1], [0, 1, 0, 1, 0], (2, 1, 1.0)),  # 3 discordant, 2 vs 1: 2 x (1 + 3) / 8 = 1, capped
    ([0] * 10, [1] * 10, (0, 10, 2 / 1024)),  # 10 vs 0: 2 x 1 / 2**10
    ([1] * 3 + [0] * 7, [1] * 8 + [0] * 2, (0, 5, 2 / 32)),  # concordant questions do not count
    ([1] * 12 + [0] * 2 + [1] * 6, [0] * 12 + [1] * 2 + [1] * 6, (12, 2, 2 * (1 + 14 + 91) / 2**14)),
    ([1, 0, 1], [1, 0, 1], (0, 0, 1.0)),  # no discordant question: no evidence either way
])
def test_mcnemar_exact_against_hand_worked_tails(a, b, expected):
    only_a, only_b, p = mcnemar_exact(a, b)
    assert (only_a, only_b) == expected[:2] and p == pytest.approx(expected[2], abs=1e-12)


def test_bootstrap_interval():
    assert paired_bootstrap([0] * 20, [1] * 20) == (1.0, 1.0, 1.0)  # every question better: no spread
    assert paired_bootstrap([1, 0] * 10, [1, 0] * 10) == (0.0, 0.0, 0.0)
    # 100 questions, the fine-tuned model right on 50 more: 0.5 +- 1.96 x sqrt(0.25 / 100) ~ [0.40, 0.60]
    diff, lo, hi = paired_bootstrap([0] * 100, [1] * 50 + [0] * 50)
    assert diff == 0.5 and lo == pytest.approx(0.402, abs=0.015) and hi == pytest.approx(0.598, abs=0.015)
    # the multinomial draw is the same distribution as resampling question indices with replacement
    rng = np.random.default_rng(7)
    a, b = rng.integers(0, 2, 60).tolist(), rng.integers(0, 2, 60).tolist()
    d = np.asarray(b) - np.asarray(a)
    by_index = np.sort(d[rng.integers(0, 60, size=(20_000, 60))].mean(axis=1))
    diff, lo, hi = paired_bootstrap(a, b, rounds=20_000)
    assert diff == pytest.approx(d.mean()) and lo < diff < hi
    assert lo == pytest.approx(by_index[500], abs=0.02) and hi == pytest.approx(by_index[19_500], abs=0.02)
    assert paired_bootstrap(a, b, seed=3) == paired_bootstrap(a, b, seed=3)  # seeded: the report is stable
    with pytest.raises(ValueError, match="same questions"):
        paired_bootstrap([1, 0], [1])


def write_samples(folder, task, rows):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"samples_{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_compare_reads_the_stage_samples(tmp_path):
    """GSM8K logs each question once per filter; MMLU once; metrics are named as the eval table names them,
    and only questions both models answered are paired."""
    base, tuned = tmp_path / "base", tmp_path / "finetuned"
    strict_b, strict_t = [1, 0, 0, 0], [1, 1, 1, 0]
    flex_b, flex_t = [1, 1, 0, 0], [1, 1, 0, 1]
    write_samples(base, "gsm8k", [{"doc_id": i, "filter": f, "exact_match": s} for i in range(4)
                                  for f, s in (("strict-match", strict_b[i]), ("flexible-extract", flex_b[i]))])
    write_samples(tuned, "gsm8k", [{"doc_id": i, "filter": f, "exact_match": s} for i in range(4)
                                   for f, s in (("strict-match", strict_t[i]), ("flexible-extract", flex_t[i]))])
    write_samples(base, "mmlu", [{"doc_id": i, "filter": "none", "acc": i % 2} for i in range(5)])
    write_samples(tuned, "mmlu", [{"doc_id": i, "filter": "none", "acc": 1} for i in range(4)])  # one missing
    assert set(per_question(base / "samples_gsm8k.jsonl")) == {"exact_match (strict-match)",
                                                               "exact_match (flexible-extract)"}
    got = compare(base, tuned, ["gsm8k", "mmlu", "absent"], rounds=2000)
    assert set(got) == {"gsm8k exact_match (strict-match)", "gsm8k exact_match (flexible-extract)", "mmlu acc"}
    strict = got["gsm8k exact_match (strict-match)"]
    assert (strict["n"], strict["base"], strict["finetuned"], strict["difference"]) == (4, 0.25, 0.75, 0.5)
    assert (strict["only_base"], strict["only_finetuned"], strict["mcnemar_p"]) == (0, 2, 0.5)
    assert strict["ci95"][0] <= 0.5 <= strict["ci95"][1]
    mmlu = got["mmlu acc"]
    assert (mmlu["n"], mmlu["base"], mmlu["only_finetuned"]) == (4, 0.5, 2)  # doc 4 has no fine-tuned answer
