"""``psi-ray compare``: PSI against its baselines and ablations on one job, at equal budgets.

Each arm is a run directory ``<runs_dir>/<name>-compare/<arm>/`` made from the job with the arm's changes
(:data:`ARMS`). What makes the comparison fair:

- **Equal data:** every arm generates in waves until the filter keeps ``kept`` rows
  (``instances.target_kept``), with ``kept × max_attempts`` instances as its cap; rows past the target are
  marked ``over_budget``. An arm that hits the cap trains on fewer rows and the report says so.
- **Equal training:** every M_t trains the same number of steps (those ``kept`` rows take with the job's train
  settings) from the same seed on its own rows; an arm with fewer rows makes more passes over them.
- **Equal questions:** the base model and every arm's M_t answer the same first ``questions`` of each task;
  every arm is compared with ``student`` question by question (paired bootstrap 95% interval, McNemar).
- **One energy boundary:** data generation (stages 0-7) per 1K kept rows; training and eval apart.

An arm reuses the stages an earlier arm finished with the same config (``placebo`` and ``no-cluster`` take
``psi``'s seeds, expand and principles) by copying them: its run directory stays whole, and its energy counts
them as if it had run them alone. Every step resumes: finished stages, trainings and evals are skipped.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from psi_ray.config import JobConfig
from psi_ray.errors import PsiRayError
from psi_ray.report.arms import REFERENCE
from psi_ray.rundir import SCORES_FILE, StageDir, atomic_write_text, model_dir

ARMS = {
    "psi": ("psi", "summaries", "M_g writes, guided by M_L's clustered and summarized principles"),
    "student": ("student", "summaries", "M_g writes with no principles"),
    "teacher": ("teacher", "summaries", "M_L writes everything, no principles"),
    "placebo": ("psi", "placebo", "M_g with task-free filler of the same lengths in the principles' place"),
    "no-cluster": ("psi", "low_level", "M_g with M_L's raw low-level principles: no clustering, no summaries"),
    "handwritten": ("psi", "summaries", "M_g with principles from a file (principles.source: file)"),
}
"""arm → (method, instances.guidance, what it is). Beside these, ``psi-T<k>`` is the psi arm with principles from
``k`` random seed subsets (``principles.subsets``): the paper's T sweep is ``--arms student,psi-T1,psi-T5,psi-T10``."""
SUBSETS_ARM = re.compile(r"psi-T([1-9][0-9]*)")
BUILTIN_PRINCIPLES = {"gsm8k": "builtin:gsm8k_principles.yaml", "mmlu": "builtin:mmlu_principles.yaml"}


@dataclass(frozen=True)
class CompareSpec:
    arms: tuple[str, ...]
    kept: int  # rows every arm trains on
    max_attempts: float  # an arm may generate kept × this many instances
    questions: int | None  # per eval task, the same first N for every model (None: all)
    tasks: tuple[str, ...]
    principles_file: str | None = None  # the handwritten arm's (default: the task's built-in file)


def subsets_of(arm: str) -> int | None:
    """T of a ``psi-T<k>`` arm (None for the named arms)."""
    m = SUBSETS_ARM.fullmatch(arm)
    return int(m[1]) if m else None


def describe(arm: str) -> tuple[str, str, str]:
    """(method, instances.guidance, what it is) of any arm, ``psi-T<k>`` included."""
    t = subsets_of(arm)
    if t is not None:
        return "psi", "summaries", f"psi with principles from T={t} random seed subsets (at most T clusters)"
    return ARMS[arm]


def parse_arms(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(a.strip() for a in text.split(",") if a.strip()))
    unknown = [a for a in names if a not in ARMS and subsets_of(a) is None]
    if unknown or not names:
        raise PsiRayError(f"unknown arm(s) {', '.join(unknown) or '(none given)'}; choose from: {', '.join(ARMS)}, "
                          "or psi-T<k> (psi with k principle subsets, e.g. psi-T5)")
    if REFERENCE not in names:
        raise PsiRayError(f"the arms must include '{REFERENCE}': every arm is compared with it")
    return names


def compare_dir(cfg: JobConfig) -> Path:
    return cfg.path(cfg.runs_dir) / f"{cfg.name}-compare"


def arm_config(cfg: JobConfig, arm: str, spec: CompareSpec) -> JobConfig:
    """The job as arm ``arm`` runs it: its method and guidance, the kept-rows target and attempts cap, its own
    run directory, eval left to the compare (train switched on by :func:`train_arm`)."""
    method, guidance, _ = describe(arm)
    data = cfg.model_dump()
    shards = -(-int(spec.kept * spec.max_attempts) // cfg.shard_size)
    data.update(method=method, runs_dir=str(compare_dir(cfg)), run_id=arm)
    data["instances"].update(guidance=guidance, target_kept=spec.kept, count=max(shards * cfg.shard_size, spec.kept))
    if subsets_of(arm) is not None:  # at most one cluster per subset: the job's count, or T when T is smaller
        data["principles"]["subsets"] = subsets_of(arm)
        data["cluster"]["num_clusters"] = min(cfg.cluster.num_clusters, subsets_of(arm))
    if arm == "handwritten":
        data["principles"].update(source="file", file=str(handwritten_file(cfg, spec)))
    data["train"]["enabled"] = False
    data["eval"].update(enabled=False, tasks=list(spec.tasks), limit=spec.questions)
    return JobConfig.model_validate(data)


def handwritten_file(cfg: JobConfig, spec: CompareSpec) -> Path:
    name = spec.principles_file or BUILTIN_PRINCIPLES.get(cfg.task.adapter)
    if not name:
        raise PsiRayError(f"the handwritten arm needs --principles-file: task '{cfg.task.adapter}' has no built-in "
                          "principles")
    path = cfg.path(name) if name.startswith("builtin:") else Path(name).expanduser().resolve()
    if not path.is_file():
        raise PsiRayError(f"--principles-file {name}: no such file")
    return path


def check(cfg: JobConfig, spec: CompareSpec) -> None:
    """Everything that can be checked before a model starts: the arms' configs, the seeds against the eval
    questions, the principles file."""
    from psi_ray.evaluate.questions import check_eval_not_seeded
    from psi_ray.stages import principles, seeds

    for arm in spec.arms:
        arm_config(cfg, arm, spec)
    eval_on = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"enabled": True, "tasks": list(spec.tasks)})})
    check_eval_not_seeded(eval_on, seeds.load(cfg))
    if "handwritten" in spec.arms:
        principles.load_principle_file(handwritten_file(cfg, spec))


BUDGET_FLAGS = {"kept": "--kept", "max_attempts": "--max-attempts"}


def check_same_budget(out: Path, spec: CompareSpec) -> None:
    """One compare folder, one budget. The arms of a compare made at another ``--kept`` or ``--max-attempts``
    hold instances generated for that budget, which their run directories would refuse arm by arm; say so at
    once, with what to do."""
    saved = out / "compare_spec.json"
    if not saved.is_file():
        return
    old = json.loads(saved.read_text())
    changed = [f"{flag} {old[k]}" for k, flag in BUDGET_FLAGS.items() if k in old and old[k] != getattr(spec, k)]
    if changed:
        now = ", ".join(f"{flag} {getattr(spec, k)}" for k, flag in BUDGET_FLAGS.items())
        raise PsiRayError(f"{out} holds a compare made with {', '.join(changed)} (asked now: {now}); pass another "
                          f"--runs-dir, or delete {out} to start over")


def steps_for(cfg: JobConfig, rows: int) -> int:
    """Training steps ``rows`` examples take with the job's train settings (the steps every arm trains)."""
    from psi_ray.train.loop import total_steps

    t = cfg.train
    return total_steps(rows, t.batch_size, t.num_workers, t.epochs, t.max_steps)


def generate_arm(cfg: JobConfig, arm: str, spec: CompareSpec, done: list[Path]) -> Path:
    from psi_ray.pipeline.psi import run

    print(f"\n=== arm {arm}: {describe(arm)[2]}")
    return run(arm_config(cfg, arm, spec), reuse=done)


def train_arm(cfg: JobConfig, arm: str, spec: CompareSpec, steps: int) -> Path:
    """Train the arm's M_t for exactly ``steps`` steps on its own kept rows (its run's train stage)."""
    from psi_ray.pipeline.psi import run

    arm_cfg = arm_config(cfg, arm, spec)
    rows = StageDir.named(arm_cfg.run_dir(), "dataset").manifest()["valid"]
    if rows == 0:
        raise PsiRayError(f"arm {arm} kept no rows: nothing to train on")
    t = arm_cfg.train
    epochs = t.epochs * max(1.0, spec.kept / rows)  # fewer rows: more passes, the same steps
    data = arm_cfg.model_dump()
    data["train"].update(enabled=True, epochs=epochs, max_steps=steps)
    print(f"\n=== arm {arm}: training {steps} steps on {rows} rows")
    return run(JobConfig.model_validate(data))


def weights_digest(model: str) -> str | None:
    """A digest of a local model folder's files (None for a model name): a retrained arm gets a new one."""
    path = Path(model)
    if not path.is_dir():
        return None
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode())
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()[:16]


def eval_key(model: str, cfg: JobConfig, spec: CompareSpec) -> dict:
    """What an eval's scores depend on; saved scores are reused only when their key is this one."""
    from psi_ray.evaluate.run import SERVED_BY

    return {"model": model, "weights": weights_digest(model), "tasks": list(spec.tasks), "questions": spec.questions,
            "max_gen_tokens": cfg.eval.max_gen_tokens, "engine": SERVED_BY}


def eval_model(model: str, out: Path, cfg: JobConfig, spec: CompareSpec) -> dict:
    """Score one model on the compare's questions (skipped when ``out`` holds scores of the same model, weights
    and questions); its energy beside."""
    from psi_ray import carbon
    from psi_ray.evaluate import evaluate

    key = eval_key(model, cfg, spec)
    if (out / SCORES_FILE).exists():
        saved = json.loads((out / SCORES_FILE).read_text())
        if saved.get("key") == key:
            print(f"[eval] {out.name}: scored already ({out / SCORES_FILE})")
            return saved
        print(f"[eval] {out.name}: the saved scores are of another model, weights or questions; scoring again")
        (out / SCORES_FILE).unlink()
    print(f"\n=== eval {out.name}: {model}")
    cc = cfg.carbon
    with carbon.measure(f"eval-{out.name}", cc.country_iso_code, str(out.parent / ".carbon"), cc.enabled) as energy:
        report = evaluate(model, list(spec.tasks), out, limit=spec.questions, max_gen_tokens=cfg.eval.max_gen_tokens,
                          concurrency=cfg.eval.concurrency)
    report["energy"] = energy  # evaluate writes scores.json last, so its presence marks a finished eval
    report["key"] = key
    atomic_write_text(out / SCORES_FILE, json.dumps(report, indent=2))
    return report


def compare(cfg: JobConfig, spec: CompareSpec) -> Path:
    """Generate, train and score every arm, then write ``compare.json``, ``compare.md`` and ``compare.html``
    in the compare folder; return it."""
    from psi_ray.report.arms import write_compare

    check(cfg, spec)
    out = compare_dir(cfg)
    check_same_budget(out, spec)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "compare_spec.json", json.dumps({**spec.__dict__, "job": cfg.name}, indent=2))
    done: list[Path] = []
    for arm in sorted(spec.arms, key=lambda a: a != "psi"):  # psi first: placebo, no-cluster, psi-T<k> reuse its stages
        done.append(generate_arm(cfg, arm, spec, done))
    steps = steps_for(cfg, spec.kept)
    for arm in spec.arms:
        train_arm(cfg, arm, spec, steps)
    eval_dir = out / "eval"
    eval_model(cfg.train.model, eval_dir / "base", cfg, spec)
    for arm in spec.arms:
        eval_model(str(model_dir(arm_config(cfg, arm, spec).run_dir())), eval_dir / arm, cfg, spec)
    return write_compare(out, spec, steps, {arm: describe(arm)[2] for arm in spec.arms})

