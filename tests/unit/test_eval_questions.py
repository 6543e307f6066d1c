"""Eval sets never see the seeds: the shipped MMLU eval file is the test split, and a job that would score its
own seed questions is refused by `psi-ray validate`."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from psi_ray.evaluate.questions import (
    EVAL_FILES,
    check_eval_not_seeded,
    eval_questions,
    normalize,
    question_stem,
    seed_overlap,
)
from psi_ray.tasks import get_adapter
from tests.conftest import ROOT, SHARED_DATA, run_cli

GSM8K_SEEDS = ROOT / "psi_ray" / "data" / "gsm8k_seeds.jsonl"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_questions_module_is_light():
    import subprocess

    code = (
        "import sys, psi_ray.evaluate.questions as q; q.eval_questions('mmlu'); "
        "heavy = [m for m in ('lm_eval', 'torch', 'ray', 'psi_ray.pipeline', 'psi_ray.cli') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def read_mmlu_test_csvs() -> list[dict]:
    rows = []
    for path in sorted((SHARED_DATA / "mmlu" / "test").glob("*_test.csv")):
        with path.open(newline="", encoding="utf-8") as fh:
            rows += [{"subject": path.name.removesuffix("_test.csv"), **r} for r in csv.DictReader(fh)]
    return rows


def dev_stems() -> set[str]:
    dev = get_adapter("mmlu").load_seeds(SHARED_DATA / "mmlu" / "dev")
    assert len(dev) == 285
    return {normalize(question_stem(r["instruction"])) for r in dev}


def test_mmlu_eval_file_is_the_test_split_less_dev_questions():
    rows = read_jsonl(EVAL_FILES["mmlu"])
    source = read_mmlu_test_csvs()
    assert len(source) == 4887
    # count back: the 6 rows left out are exactly those whose normalized stem is a dev question's
    dev = dev_stems()
    kept = [r for r in source if normalize(r["question"]) not in dev]
    assert len(source) - len(kept) == 6
    assert len(rows) == 4881
    assert len({r["subject"] for r in rows}) == 28
    assert [r["subject"] for r in rows] == sorted(r["subject"] for r in rows)
    assert all(set(r) == {"subject", "question", "choices", "answer"} for r in rows)
    assert rows == [
        {
            "subject": r["subject"],
            "question": r["question"],
            "choices": [r[f"choice{j}"] for j in range(4)],
            "answer": int(r["answer"]),
        }
        for r in kept
    ]
    assert any("\n" in r["question"] for r in rows)  # quoted newlines survived the csv reader


def test_mmlu_eval_file_holds_no_dev_question():
    test_stems = {normalize(r["question"]) for r in read_jsonl(EVAL_FILES["mmlu"])}
    assert not dev_stems() & test_stems
    dev = get_adapter("mmlu").load_seeds(SHARED_DATA / "mmlu" / "dev")
    assert seed_overlap([r["instruction"] for r in dev], ["mmlu", "gsm8k"]) == {"mmlu": 0, "gsm8k": 0}
    # the guard does fail on the full test split: the raw csv rows hold 6 dev stems
    raw = [r["question"] for r in read_mmlu_test_csvs()]
    assert len({normalize(q) for q in raw} & dev_stems()) == 6


def test_eval_question_counts_and_shape():
    assert len(eval_questions("gsm8k")) == 1319
    mmlu = eval_questions("mmlu")
    assert len(mmlu) == 4881
    lines = mmlu[0].splitlines()
    assert [line[:3] for line in lines[-4:]] == ["A. ", "B. ", "C. ", "D. "]
    assert eval_questions("mmlu") is mmlu  # cached


def test_normalize_and_stem():
    assert normalize("  What IS 2+3?\n(Show work.) ") == "what is 2 3 show work"
    text = "Which of these lists A. and B.?\nA. one\nB. two\nC. three\nD. four"
    assert question_stem(text) == "Which of these lists A. and B.?"
    assert question_stem("A plain question?") == "A plain question?"


def test_seed_overlap_counts_planted_copies():
    gsm = eval_questions("gsm8k")
    planted = [gsm[3].upper(), "  " + gsm[10] + " ", gsm[200].replace(" ", "  ")]
    train = [r["question"] for r in read_jsonl(GSM8K_SEEDS)]
    assert seed_overlap(train + planted, ["gsm8k", "mmlu"]) == {"gsm8k": 3, "mmlu": 0}
    # MMLU: a seed instruction in the adapter's shape (stem + A-D lines) matches on its stem
    mmlu = eval_questions("mmlu")
    assert seed_overlap(mmlu[:40] + train, ["mmlu", "gsm8k"]) == {"mmlu": 40, "gsm8k": 0}


def test_builtin_seeds_do_not_overlap():
    seeds = [r["question"] for r in read_jsonl(GSM8K_SEEDS)]
    assert len(seeds) == 64
    assert seed_overlap(seeds, ["gsm8k", "mmlu"]) == {"gsm8k": 0, "mmlu": 0}


def test_check_eval_not_seeded_raises_with_task_and_count():
    from psi_ray.config import JobConfig
    from psi_ray.errors import PsiRayError

    rows = [{"instruction": q} for q in eval_questions("gsm8k")[:5]]
    cfg = JobConfig.model_validate({"eval": {"enabled": True, "tasks": ["gsm8k"]}})
    with pytest.raises(PsiRayError, match=r"eval task gsm8k scores 5 of this job's 5 seed questions"):
        check_eval_not_seeded(cfg, rows)
    check_eval_not_seeded(JobConfig.model_validate({"eval": {"enabled": False}}), rows)
    check_eval_not_seeded(cfg, [{"instruction": "What is 2 + 3?"}])


def write_job(tmp_path: Path, enabled: bool) -> Path:
    seeds = tmp_path / "seeds.jsonl"
    test_rows = read_jsonl(SHARED_DATA / "gsm8k" / "test.jsonl")[:8]
    assert all(r["answer"].strip().splitlines()[-1].startswith("#### ") for r in test_rows)
    seeds.write_text("".join(json.dumps(r) + "\n" for r in test_rows), encoding="utf-8")
    job = tmp_path / f"job-{enabled}.yaml"
    job.write_text(
        f"task: {{adapter: gsm8k, seeds: {seeds}}}\n"
        f"eval: {{enabled: {str(enabled).lower()}, tasks: [gsm8k]}}\n",
        encoding="utf-8",
    )
    return job


def test_validate_refuses_a_job_that_scores_its_seeds(tmp_path):
    job = write_job(tmp_path, enabled=True)
    res = run_cli("validate", str(job))
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1
    assert str(job) in err and "gsm8k" in err and "scores 8 of" in err


def test_validate_accepts_the_job_without_eval_and_reports_every_file(tmp_path):
    off = write_job(tmp_path, enabled=False)
    res = run_cli("validate", str(off))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{off}: ok" in res.stdout
    on = write_job(tmp_path, enabled=True)
    res = run_cli("validate", str(on), str(off))
    assert res.returncode == 2
    assert f"{off}: ok" in res.stdout and "gsm8k" in res.stderr
