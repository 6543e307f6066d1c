"""Stages 8-10 of a run, closing the loop: train M_t on the dataset, serve it, score it against the base.

``train.enabled`` adds ``08_train/`` (its table: the loss of every step; ``_ray/`` the checkpoint and resume
state) and the fine-tuned HF folder ``model/`` in the run directory; ``eval.enabled`` adds ``09_eval/``: each
model is served with Ray Serve in turn and scored by lm-eval on the same questions; its table has one row per
task, metric and model, ``_scores.json`` holds base vs fine-tuned per task and metric (the report's table),
their paired difference with a bootstrap 95% interval and McNemar's exact p (:mod:`psi_ray.evaluate.paired`),
and ``_samples/<model>/`` lm-eval's answers per question.
"""

from __future__ import annotations

import json

from psi_ray.pipeline.runner import StageResult
from psi_ray.rundir import (
    ADAPTER_DIR,
    DATASET_FILE,
    SAMPLES_DIR,
    STAGE_SCORES,
    StageDir,
    atomic_write_text,
    model_dir,
)


def train_stage(r, sd: StageDir, dataset_sd: StageDir):
    """Fine-tune ``train.model`` on the run's dataset; the manifest records steps, losses and the model folder."""
    from psi_ray.train import train

    result = train(dataset_sd.path / DATASET_FILE, sd.path, r.cfg.train, seed=r.cfg.seed,
                   model_dir=model_dir(r.dir))
    steps = [{"step": i, "loss": loss} for i, loss in enumerate(result.losses, 1)]
    return StageResult(steps, {"examples": result.examples, "steps": result.steps, "first_loss": result.losses[0],
                  "final_loss": result.losses[-1], "losses": result.losses, "model": str(result.model_dir),
                  "strategy": r.cfg.train.strategy, "lora": r.cfg.train.lora, "resumed_from": result.resumed_from,
                  "train_seconds": result.seconds})


def eval_stage(r, sd: StageDir, trained: StageDir | None):
    """Serve and score the base M_t (if asked) and the fine-tuned one on the same questions. Each model is its
    own engine, started after the previous one is stopped; with ``eval.serve_adapter`` a LoRA-trained model is
    served as its adapter beside the base instead, one engine for both."""
    from psi_ray.evaluate import TASKS, evaluate, evaluate_with_adapter

    ec = r.cfg.eval
    models = {}
    if ec.compare_base or trained is None:
        models["base"] = r.cfg.train.model
    if trained is not None:
        models["finetuned"] = str(model_dir(r.dir))
    adapter = model_dir(r.dir) / ADAPTER_DIR
    settings = {"limit": ec.limit, "max_gen_tokens": ec.max_gen_tokens, "concurrency": ec.concurrency}
    one_engine = trained is not None and ec.serve_adapter
    if one_engine and not adapter.is_dir():
        print(f"[eval] eval.serve_adapter: {adapter} is missing (not a LoRA run), so the fine-tuned model is "
              "served on its own engine")
        one_engine = False
    if one_engine:
        reports = evaluate_with_adapter(r.cfg.train.model, str(adapter), ec.tasks,
                                        {label: sd.path / SAMPLES_DIR / label for label in models}, models, **settings)
    else:
        reports = {label: evaluate(model, ec.tasks, sd.path / SAMPLES_DIR / label, **settings)
                   for label, model in models.items()}
    rows = score_rows(reports)
    scores = table(reports)
    paired = {}
    if {"base", "finetuned"} <= set(reports):  # same questions: the difference with its interval and test
        from psi_ray.evaluate.paired import compare

        paired = compare(sd.path / SAMPLES_DIR / "base", sd.path / SAMPLES_DIR / "finetuned", ec.tasks)
    atomic_write_text(sd.path / STAGE_SCORES, json.dumps(
        {"limit": ec.limit, "tasks": scores, "models": {k: v["model"] for k, v in reports.items()},
         "main_metric": {t: TASKS[t].main_metric for t in ec.tasks}, "paired": paired}, indent=2))
    return StageResult(rows, {"scores": scores, "limit": ec.limit, "paired": paired})


def score_rows(reports: dict[str, dict]) -> list[dict]:
    """One row per task, metric and model (the eval stage's table); lm-eval's ``"name,filter"`` metric keys
    read as ``"name (filter)"``."""
    rows = []
    for label, report in reports.items():
        for task, metrics in report["tasks"].items():
            for metric, value in metrics.items():
                name, _, flt = metric.partition(",")
                rows.append({"task": task, "metric": name + (f" ({flt})" if flt and flt != "none" else ""),
                             "model": label, "value": value})
    return rows


def table(reports: dict[str, dict]) -> dict[str, dict[str, float]]:
    """``{"<task> <metric>": {"base": x, "finetuned": y}}`` from each model's ``evaluate`` report."""
    out: dict[str, dict[str, float]] = {}
    for row in score_rows(reports):
        out.setdefault(f"{row['task']} {row['metric']}", {})[row["model"]] = row["value"]
    return out
