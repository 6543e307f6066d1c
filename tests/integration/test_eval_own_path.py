"""Stages 8 and 9 through the product's own path, on a dataset stage written here (so no weak generator can
leave it empty): the run's train stage (``closing.train_stage``, Ray Train) fine-tunes LoRA adapters of the tiny
model, merged into the run's ``model/`` and kept in ``model/adapter``; the eval stage (``closing.eval_stage`` →
``evaluate_with_adapter``, with ``eval.serve_adapter``; by default each model is its own engine) serves base and
adapter from one vLLM engine with Ray Serve, scores them with lm-eval on GSM8K test (generation, chat endpoint)
and MMLU test (log-likelihood, completions with echo + logprobs), writes ``09_eval/_scores.json``, and the report reads that file. Each score
is counted back from the per-question samples the stage wrote; both stage folders open with pandas."""

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


STEPS = 3


@pytest.fixture(scope="module")
def eval_run(ray_session, tiny_model, chat_dataset, tmp_path_factory):
    import shutil

    from psi_ray.config import JobConfig
    from psi_ray.pipeline import Run, closing
    from psi_ray.rundir import DATASET_FILE, StageDir, atomic_write_text

    cfg = JobConfig(runs_dir=str(tmp_path_factory.mktemp("runs")),
                    train={"enabled": True, "model": str(tiny_model), "num_workers": 1, "batch_size": 2,
                           "max_steps": STEPS, "max_seq_len": 64, "lora": True, "lora_rank": 4, "lr": 1e-2},
                    eval={"enabled": True, "tasks": ["gsm8k", "mmlu"], "limit": LIMIT, "max_gen_tokens": 16,
                          "concurrency": 4, "serve_adapter": True}, carbon={"enabled": False})
    r = Run(cfg)
    atomic_write_text(r.dir / "config.json", cfg.model_dump_json())
    data = StageDir.named(r.dir, "dataset")
    data.path.mkdir(parents=True)
    shutil.copy(chat_dataset, data.path / DATASET_FILE)
    trained = r.stage("train", ("train",), lambda sd: closing.train_stage(r, sd, data))
    sd = r.stage("eval", ("eval", "train"), lambda sd: closing.eval_stage(r, sd, trained))
    return r.dir, sd


def test_train_and_eval_stage_folders_open_as_tables(eval_run):
    import pandas as pd

    run_dir, sd = eval_run
    steps = pd.read_parquet(run_dir / "08_train")
    assert list(steps["step"]) == list(range(1, STEPS + 1)) and steps["loss"].gt(0).all()
    assert (run_dir / "model" / "config.json").is_file()  # the run's model, beside the stage folders
    scores = pd.read_parquet(sd.path)
    assert len(scores) == 3 * 2 and set(scores["model"]) == {"base", "finetuned"}


def test_scores_json_is_where_the_report_reads_it(eval_run):
    from psi_ray.report import collect, write_report

    run_dir, sd = eval_run
    assert sd.path == run_dir / "09_eval"
    scores = json.loads((sd.path / "_scores.json").read_text())
    assert scores["limit"] == LIMIT
    assert set(scores["tasks"]) == {"gsm8k exact_match (strict-match)", "gsm8k exact_match (flexible-extract)",
                                    "mmlu acc"}
    assert all(set(v) == {"base", "finetuned"} and all(0 <= x <= 1 for x in v.values())
               for v in scores["tasks"].values())
    assert scores["models"]["finetuned"] == str(run_dir / "model")
    run = collect.collect(run_dir)
    assert run["eval"] == scores["tasks"] and run["eval_limit"] == LIMIT
    md = write_report(run_dir)["markdown"].read_text()
    assert "## Evaluation scores" in md and f"the first {LIMIT} questions" in md and "mmlu acc" in md
    assert "95% interval (paired bootstrap)" in md and "McNemar p" in md


def test_a_lora_model_is_scored_as_its_adapter_beside_the_base(eval_run):
    """The adapter the train stage kept was served beside the base from one engine (only that path serves them
    as ``eval-base`` and ``eval-finetuned``), and its log-likelihoods are not the base's: the engine applied it."""
    run_dir, sd = eval_run
    adapter = run_dir / "model" / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4
    reports = {m: json.loads((sd.path / "_samples" / m / "scores.json").read_text()) for m in ("base", "finetuned")}
    assert {m: r["served_name"] for m, r in reports.items()} == {"base": "eval-base", "finetuned": "eval-finetuned"}
    assert reports["finetuned"]["adapter"] == str(adapter) and "adapter" not in reports["base"]
    loglik = {m: [float(r[0]) for s in lines(sd.path / "_samples" / m / "samples_mmlu.jsonl")
                  for r in s["filtered_resps"]] for m in reports}
    assert len(loglik["base"]) == 4 * LIMIT and max(map(abs, map(float.__sub__, *loglik.values()))) > 1e-4


def test_the_difference_is_paired_over_the_same_questions(eval_run):
    """_scores.json's ``paired`` section agrees with the scores and is counted back from both models' samples."""
    _, sd = eval_run
    scores = json.loads((sd.path / "_scores.json").read_text())
    assert set(scores["paired"]) == set(scores["tasks"])
    for key, p in scores["paired"].items():
        task, metric = key.split(" ", 1)
        field, _, flt = metric.partition(" (")
        flt = flt.rstrip(")") or "none"
        right = {}
        for model in ("base", "finetuned"):
            rows = [s for s in lines(sd.path / "_samples" / model / f"samples_{task}.jsonl") if s["filter"] == flt]
            right[model] = {s["doc_id"]: s[field] for s in rows}
        assert p["n"] == LIMIT and p["base"] == pytest.approx(scores["tasks"][key]["base"])
        assert p["finetuned"] == pytest.approx(scores["tasks"][key]["finetuned"])
        assert p["only_finetuned"] == sum(right["finetuned"][d] > right["base"][d] for d in right["base"])
        assert p["only_base"] == sum(right["base"][d] > right["finetuned"][d] for d in right["base"])
        assert p["ci95"][0] <= p["difference"] <= p["ci95"][1] and 0 < p["mcnemar_p"] <= 1


def test_mmlu_is_scored_on_the_test_split_by_log_likelihood(eval_run):
    from psi_ray.evaluate.questions import EVAL_FILES

    _, sd = eval_run
    samples = lines(sd.path / "_samples" / "base" / "samples_mmlu.jsonl")
    test = lines(EVAL_FILES["mmlu"])[:LIMIT]
    assert [s["doc"]["question"] for s in samples] == [d["question"] for d in test]
    for s in samples:
        loglik = [float(r[0]) for r in s["filtered_resps"]]  # one (log-likelihood, is_greedy) per choice
        assert len(loglik) == 4 and all(x < 0 for x in loglik)
        assert s["acc"] == float(max(range(4), key=loglik.__getitem__) == s["target"])
    acc = sum(s["acc"] for s in samples) / LIMIT
    assert json.loads((sd.path / "_scores.json").read_text())["tasks"]["mmlu acc"]["base"] == pytest.approx(acc)


def test_gsm8k_is_scored_on_the_test_split_by_exact_match(eval_run):
    from psi_ray.evaluate.questions import EVAL_FILES

    _, sd = eval_run
    samples = lines(sd.path / "_samples" / "base" / "samples_gsm8k.jsonl")
    test = lines(EVAL_FILES["gsm8k"])[:LIMIT]
    scores = json.loads((sd.path / "_scores.json").read_text())["tasks"]
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
