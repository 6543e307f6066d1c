"""Stage 9 through the product's own path: the run's eval stage (``closing.eval_stage`` → ``evaluate``) serves the
tiny model with Ray Serve, scores it with lm-eval on GSM8K test (generation, chat endpoint) and MMLU test
(log-likelihood, completions with echo + logprobs), writes ``09_eval/scores.json``, and the report reads that
file. Each score is counted back from the per-question samples the stage wrote."""

import json
import re

import pytest

pytestmark = pytest.mark.integration

LIMIT = 4


def comparable(text: str) -> str:
    """What psi_gsm8k.yaml's exact_match compares: case folded, these patterns removed from both sides."""
    for pattern in (",", r"\$", r"(?s).*#### ", r"\.$"):
        text = re.sub(pattern, "", text)
    return text.lower()


def lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def eval_run(ray_session, tiny_model, tmp_path_factory):
    from psi_ray.config import JobConfig
    from psi_ray.pipeline import Run, closing
    from psi_ray.rundir import atomic_write_text

    cfg = JobConfig(runs_dir=str(tmp_path_factory.mktemp("runs")), train={"model": str(tiny_model)},
                    eval={"enabled": True, "tasks": ["gsm8k", "mmlu"], "limit": LIMIT, "max_gen_tokens": 16,
                          "concurrency": 4}, carbon={"enabled": False})
    r = Run(cfg)
    atomic_write_text(r.dir / "config.json", cfg.model_dump_json())
    sd = r.stage("eval", ("eval", "train"), lambda sd: closing.eval_stage(r, sd, None))  # base M_t only
    return r.dir, sd


def test_scores_json_is_where_the_report_reads_it(eval_run):
    from psi_ray.report import collect, write_report

    run_dir, sd = eval_run
    assert sd.path == run_dir / "09_eval"
    scores = json.loads((sd.path / "scores.json").read_text())
    assert scores["limit"] == LIMIT
    assert set(scores["tasks"]) == {"gsm8k exact_match (strict-match)", "gsm8k exact_match (flexible-extract)",
                                    "mmlu acc"}
    assert all(set(v) == {"base"} and 0 <= v["base"] <= 1 for v in scores["tasks"].values())
    run = collect.collect(run_dir)
    assert run["eval"] == scores["tasks"] and run["eval_limit"] == LIMIT
    md = write_report(run_dir)["markdown"].read_text()
    assert "## Evaluation scores" in md and f"the first {LIMIT} questions" in md and "mmlu acc" in md


def test_mmlu_is_scored_on_the_test_split_by_log_likelihood(eval_run):
    from psi_ray.evaluate.questions import EVAL_FILES

    _, sd = eval_run
    samples = lines(sd.path / "base" / "samples_mmlu.jsonl")
    test = lines(EVAL_FILES["mmlu"])[:LIMIT]
    assert [s["doc"]["question"] for s in samples] == [d["question"] for d in test]
    for s in samples:
        loglik = [float(r[0]) for r in s["filtered_resps"]]  # one (log-likelihood, is_greedy) per choice
        assert len(loglik) == 4 and all(x < 0 for x in loglik)
        assert s["acc"] == float(max(range(4), key=loglik.__getitem__) == s["target"])
    acc = sum(s["acc"] for s in samples) / LIMIT
    assert json.loads((sd.path / "scores.json").read_text())["tasks"]["mmlu acc"]["base"] == pytest.approx(acc)


def test_gsm8k_is_scored_on_the_test_split_by_exact_match(eval_run):
    from psi_ray.evaluate.questions import EVAL_FILES

    _, sd = eval_run
    samples = lines(sd.path / "base" / "samples_gsm8k.jsonl")
    test = lines(EVAL_FILES["gsm8k"])[:LIMIT]
    scores = json.loads((sd.path / "scores.json").read_text())["tasks"]
    for flt in ("strict-match", "flexible-extract"):
        mine = sorted((s for s in samples if s["filter"] == flt), key=lambda s: s["doc_id"])
        assert [s["doc"]["question"] for s in mine] == [d["question"] for d in test]
        for s in mine:
            answer = s["filtered_resps"][0]
            if flt == "strict-match":  # the "#### n" line of the model's own answer, or nothing
                found = re.search(r"#### (\-?[0-9\.\,]+)", s["resps"][0][0])
                assert answer == (found.group(1) if found else "[invalid]")
            assert s["exact_match"] == float(comparable(answer) == comparable(s["target"]))
        em = sum(s["exact_match"] for s in mine) / LIMIT
        assert scores[f"gsm8k exact_match ({flt})"]["base"] == pytest.approx(em)
