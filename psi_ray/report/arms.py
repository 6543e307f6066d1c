"""The report of ``psi-ray compare``: ``compare.json`` (for other tools), ``compare.md`` and ``compare.html``.

Per arm: the data's quality without training (kept share, verified share, distinct questions, mean lengths,
rows caught as seed copies or eval contamination), generation energy per 1K kept rows with its ratio to
``teacher``, output tokens per tier, the training (steps, loss, energy) and the scores, each arm against
``student`` question by question (paired bootstrap 95% interval and McNemar's exact p,
:mod:`psi_ray.evaluate.paired`). Reads only the compare folder; no model or Ray.
"""

from __future__ import annotations

import json
from pathlib import Path

from psi_ray.report.fmt import num, pct, ratio

REFERENCE = "student"  # every arm is compared with the small model writing alone


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def data_quality(run_dir: Path) -> dict:
    """What the arm's data looks like before any training: from its filter manifest and dataset."""
    import pyarrow.parquet as pq

    from psi_ray.rundir import DATASET_FILE, StageDir
    from psi_ray.stages.filter import normalize

    made = StageDir.named(run_dir, "instances").manifest() or {}
    filt = StageDir.named(run_dir, "filter").manifest() or {}
    verify = StageDir.named(run_dir, "verify").manifest()
    rejected = filt.get("rejected", {})
    generated = filt.get("rows") or 0
    passed = filt.get("kept", 0) + rejected.get("over_budget", 0)  # what the filter accepted, budget aside
    path = StageDir.named(run_dir, "dataset").path / DATASET_FILE
    msgs = pq.read_table(path, columns=["messages"]).column("messages").to_pylist() if path.exists() else []
    questions = [m[0]["content"] for m in msgs]
    answers = [m[1]["content"] for m in msgs]
    return {
        "generated": generated, "kept": len(msgs), "kept_share": passed / generated if generated else None,
        "verified_share": verify["verified"] / verify["checked"] if verify and verify.get("checked") else None,
        "distinct_questions": len({normalize(q) for q in questions}),
        "mean_question_words": sum(len(q.split()) for q in questions) / len(questions) if questions else None,
        "mean_answer_words": sum(len(a.split()) for a in answers) / len(answers) if answers else None,
        "seed_copies_caught": rejected.get("copies_seed", 0), "eval_overlap_caught": rejected.get("contaminated", 0),
        "stopped": made.get("stopped"), "cap": made.get("rows"),
    }


def arm_row(out: Path, arm: str, tasks: list[str]) -> dict:
    from psi_ray.evaluate.paired import compare as paired
    from psi_ray.report.collect import collect
    from psi_ray.rundir import StageDir

    run = collect(out / arm)
    train = StageDir.named(out / arm, "train").manifest() or {}
    scores = _json(out / "eval" / arm / "scores.json")
    vs = {}
    if arm != REFERENCE:
        vs = {k: {"n": v["n"], REFERENCE: v["base"], arm: v["finetuned"], "difference": v["difference"],
                  "ci95": v["ci95"], f"only_{REFERENCE}": v["only_base"], f"only_{arm}": v["only_finetuned"],
                  "mcnemar_p": v["mcnemar_p"]}
              for k, v in paired(out / "eval" / REFERENCE, out / "eval" / arm, tasks).items()}
    return {
        "method": run["method"], "quality": data_quality(out / arm),
        "generation": {"energy_kwh": run["making"]["energy_kwh"], "emissions_kg": run["making"]["emissions_kg"],
                       "measured": run["measured"], "per_1k_kept": run["per_1k_valid"],
                       "output_tokens": {t: v["output_tokens"] for t, v in run["tokens"].items()}},
        "train": {"steps": train.get("steps"), "examples": train.get("examples"),
                  "final_loss": train.get("final_loss"), "energy": train.get("energy")},
        "eval": {"scores": scores.get("tasks"), "energy": scores.get("energy"), "vs_student": vs},
    }


def collect_compare(out: Path, spec, steps: int, described: dict[str, str]) -> dict:
    """The whole comparison as one dict (``compare.json``); ``described`` says what each arm is."""
    from psi_ray.evaluate.paired import compare as paired

    tasks = list(spec.tasks)
    rows = {arm: {"description": described[arm], **arm_row(out, arm, tasks)} for arm in spec.arms}
    teacher = (rows.get("teacher") or {}).get("generation", {}).get("per_1k_kept")
    for r in rows.values():
        p = r["generation"]["per_1k_kept"]
        r["generation"]["ratio_to_teacher"] = (
            {k: p[k] / teacher[k] if teacher[k] else None for k in ("energy_kwh", "emissions_kg")}
            if p and teacher else None)
    base = _json(out / "eval" / "base" / "scores.json")
    base_vs = paired(out / "eval" / REFERENCE, out / "eval" / "base", tasks) if base else {}
    return {"job": out.name.removesuffix("-compare"), "reference": REFERENCE, "kept_target": spec.kept,
            "max_attempts": spec.max_attempts, "train_steps": steps, "questions": spec.questions, "tasks": tasks,
            "main_metric": {t: main_metric(t) for t in tasks}, "arms": rows,
            "base": {"model": base.get("model"), "scores": base.get("tasks"),
                     "vs_student": {k: {"difference": v["difference"], "ci95": v["ci95"], "n": v["n"],
                                        "mcnemar_p": v["mcnemar_p"]} for k, v in base_vs.items()}}}


def main_metric(task: str) -> str:
    """The ``"<metric> (<filter>)"`` key the paired comparison uses for ``task``'s headline metric."""
    from psi_ray.evaluate import TASKS

    return metric_label(TASKS[task].main_metric)


def metric_label(key: str) -> str:
    """lm-eval's ``"name,filter"`` as the paired comparison names it: ``"name (filter)"``."""
    name, _, flt = key.partition(",")
    return name + (f" ({flt})" if flt and flt != "none" else "")


def reading(data: dict) -> list[str]:
    """The honest reading of the scores: which arms differ from student beyond their interval, per metric."""
    lines = []
    for task in data["tasks"]:
        for metric in sorted({k.split(" ", 1)[1] for r in data["arms"].values() for k in r["eval"]["vs_student"]
                              if k.startswith(task + " ")}):
            key = f"{task} {metric}"
            found = {a: r["eval"]["vs_student"].get(key) for a, r in data["arms"].items() if a != REFERENCE}
            found = {a: v for a, v in found.items() if v}
            if not found:
                continue
            beyond = [f"{a} ({v['difference']:+.3f}, interval {v['ci95'][0]:+.3f} … {v['ci95'][1]:+.3f})"
                      for a, v in found.items() if v["ci95"][0] > 0 or v["ci95"][1] < 0]
            n = next(iter(found.values()))["n"]
            lines.append(f"{key}, {n} questions: " + (
                "no arm differs from student: every 95% interval holds 0." if not beyond
                else "differs from student beyond its 95% interval: " + "; ".join(beyond) + "."))
    return lines


# ---- rendering -----------------------------------------------------------------------------------------------

def tables(data: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of each table, in the order both pages print them."""
    arms = data["arms"]
    quality = [[a, r["method"], num(q["generated"]), num(q["kept"]), pct(q["kept_share"]), pct(q["verified_share"]),
                num(q["distinct_questions"]), num(q["mean_question_words"]), num(q["mean_answer_words"]),
                num(q["seed_copies_caught"]), num(q["eval_overlap_caught"]), q["stopped"] or "–"]
               for a, r in arms.items() for q in [r["quality"]]]
    energy = []
    for a, r in arms.items():
        g, p, q = r["generation"], r["generation"]["per_1k_kept"] or {}, r["generation"]["ratio_to_teacher"] or {}
        t, e, v = r["train"], (r["train"]["energy"] or {}), (r["eval"]["energy"] or {})
        energy.append([a, num(g["energy_kwh"]) if g["measured"] else "–", num(p.get("energy_kwh")),
                       num(p.get("emissions_kg")), ratio(q.get("energy_kwh")),
                       num(g["output_tokens"].get("large")), num(g["output_tokens"].get("generator")),
                       num(t["steps"]), num(t["final_loss"]), num(e.get("energy_kwh")), num(v.get("energy_kwh"))])
    scores = []
    for task in data["tasks"]:
        for key in sorted({k for r in arms.values() for k in (r["eval"]["scores"] or {}).get(task, {})}):
            metric = metric_label(key)
            base = (data["base"]["scores"] or {}).get(task, {}).get(key)
            bvs = data["base"]["vs_student"].get(f"{task} {metric}")
            scores.append([f"{task} {metric}", "base (untrained)", num(base), *_vs(bvs)])
            for a, r in arms.items():
                v = r["eval"]["vs_student"].get(f"{task} {metric}")
                scores.append(["", a, num((r["eval"]["scores"] or {}).get(task, {}).get(key)),
                               *(_vs(v) if a != REFERENCE else ["(reference)", "", ""])])
    return [
        ("Data quality, before training", ["arm", "method", "generated", "kept", "kept share", "verified share",
                                           "distinct questions", "question words", "answer words",
                                           "seed copies caught", "eval overlap caught", "generation stopped"],
         quality),
        ("Energy and training", ["arm", "kWh (generation)", "kWh / 1K kept", "kgCO2e / 1K kept",
                                 "kWh / 1K ÷ teacher", "M_L output tokens", "M_g output tokens", "train steps",
                                 "final loss", "kWh (train)", "kWh (eval)"], energy),
        ("Scores against student (same questions)", ["task, metric", "model", "score", "− student",
                                                     "95% interval (paired bootstrap)", "McNemar p"], scores),
    ]


def _vs(v: dict | None) -> list[str]:
    if not v:
        return ["–", "–", "–"]
    return [f"{v['difference']:+.3f}", f"{v['ci95'][0]:+.3f} … {v['ci95'][1]:+.3f}", f"{v['mcnemar_p']:.3g}"]


def summary(data: dict) -> list[str]:
    q = data["questions"]
    return [f"Job `{data['job']}`, arms {', '.join(data['arms'])}: each generated until {data['kept_target']} rows "
            f"were kept (at most {data['max_attempts']:g}× as many attempts), trained {data['train_steps']} steps "
            f"from the same seed, and was scored with the untrained base on "
            f"{'the first ' + str(q) if q else 'all'} questions of {', '.join(data['tasks'])}.",
            "Generation energy counts stages 0-7 of each arm, shared stages included in every arm that uses them; "
            "training and eval are reported apart."]


def fig_intervals(data: dict) -> str | None:
    """Each arm's difference from student on each task's headline metric, with its 95% interval."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from psi_ray.report.figures import RC, _png

    points = []
    for task in data["tasks"]:
        key = f"{task} {data['main_metric'][task]}"
        for a, r in [("base", data["base"]), *data["arms"].items()]:
            v = (r.get("vs_student") if a == "base" else r["eval"]["vs_student"]).get(key)
            if v:
                points.append((f"{a} · {task}", v["difference"], v["ci95"]))
    if not points:
        return None
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(9, 0.5 * len(points) + 1.4), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for i, (_, d, (lo, hi)) in enumerate(points):
            ax.errorbar(d, i, xerr=[[d - lo], [hi - d]], fmt="o", color="#2e86c1", capsize=4)
        ax.axvline(0, color="#7f8c8d", linewidth=1)
        ax.set_yticks(range(len(points)), [p[0] for p in points])
        ax.invert_yaxis()
        ax.set_xlabel("score − student's, with paired bootstrap 95% interval")
        return _png(fig)


def render_markdown(data: dict) -> str:
    from psi_ray.report.render import _md_table

    lines = ["# psi-ray compare", "", *summary(data), "", "## Reading", "", *[f"- {x}" for x in reading(data)], ""]
    for title, head, body in tables(data):
        lines += [f"## {title}", "", _md_table(head, body), ""]
    return "\n".join(lines)


def render_html(data: dict) -> str:
    from psi_ray.report.render import _e, _table

    fig = fig_intervals(data)
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>psi-ray compare</title><style>"
             "body{font-family:sans-serif;max-width:75em;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em}"
             "td.n{text-align:right}</style></head><body><h1>psi-ray compare</h1>",
             *[f"<p>{_e(x)}</p>" for x in summary(data)], "<h2>Reading</h2><ul>",
             *[f"<li>{_e(x)}</li>" for x in reading(data)], "</ul>"]
    if fig:
        parts.append(f"<img alt='each arm minus student, with 95% intervals' src='data:image/png;base64,{fig}'>")
    for title, head, body in tables(data):
        parts += [f"<h2>{_e(title)}</h2>", str(_table((head, body)))]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_compare(out: Path, spec, steps: int, described: dict[str, str]) -> Path:
    """Write ``compare.json``, ``compare.md`` and ``compare.html`` in ``out``; return ``out``."""
    from psi_ray.rundir import atomic_write_text

    data = collect_compare(out, spec, steps, described)
    atomic_write_text(out / "compare.json", json.dumps(data, indent=2))
    atomic_write_text(out / "compare.md", render_markdown(data))
    atomic_write_text(out / "compare.html", render_html(data))
    return out
