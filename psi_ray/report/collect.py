"""Read a run directory into plain dicts for the report: what ran, how long, at what energy, with what result.

Everything comes from the files a run leaves behind (``config.json``, each stage's ``_manifest.json``, the
cluster and summarize parts, ``09_eval/_scores.json`` once M_t has been scored), so a report can be made
for a run that is still going, on any machine, without Ray or a model. A stage folder without a manifest is
unfinished: it is listed as in progress and never read, because its parts may be incomplete.

``collect(run_dir)`` gives one run; ``compare(runs)`` lines several up against the teacher run's per-1K figures.
"""

from __future__ import annotations

import json
from pathlib import Path

from psi_ray.carbon import FIELDS
from psi_ray.errors import PsiRayError
from psi_ray.rundir import StageDir, read_parquet_rows, scores_file, stage_dirs

STAGES = ("seeds", "expand", "principles", "cluster", "summarize", "instances", "filter", "dataset")
PSI_ONLY = ("expand", "principles", "cluster", "summarize")
ENERGY = FIELDS  # what carbon.measure records per stage
PER_1K = ("energy_kwh", "emissions_kg")
CLOSING = ("train", "eval")  # stages that use the data: their energy is reported apart from making it
TIERS = {"large": "M_L", "generator": "M_g"}
SAME_MODEL_NOTE = ("M_L and M_g are the same model ({model}), so the energy ratio between methods reflects token counts only, "
                   "not a model-size saving.")


def _read_json(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PsiRayError(f"{path}: cannot read it as JSON ({exc})") from None


def _models(cfg: dict, method: str) -> dict:
    """The two tiers' models and who wrote what, from the job config."""
    large = (cfg.get("large") or {}).get("model")
    gen = (cfg.get("generator") or {}).get("model")
    if method == "psi":
        writers = {"M_L (principles)": large, "M_g (instances)": gen}
    elif method == "teacher":
        writers = {"M_L (instances)": large}
    else:
        writers = {"M_g (instances)": gen}
    return {"large": large, "generator": gen, "same": large is not None and large == gen, "writers": writers}


def _stage_row(sd: StageDir, m: dict) -> dict:
    e = m.get("energy") or {}
    duration = float(e.get("duration_s") or 0.0)
    finished = m.get("finished_at")
    return {
        "index": int(sd.path.name[:2]), "name": sd.name, "folder": sd.path.name,
        "rows": m.get("rows"), "errors": m.get("errors", 0), "duration_s": duration, "finished_at": finished,
        "started_at": finished - duration if finished is not None else None,
        "measured": "energy_kwh" in e, **{k: float(e.get(k) or 0.0) for k in ENERGY},
        "power_source": e.get("power_source"), "energy_nodes": e.get("nodes"),
        "tokens": m.get("tokens") or {}, "tiers": sorted({tier_of(k) for k in m.get("tokens") or {}}),
    }


def tier_of(token_key: str) -> str:
    """The tier behind a manifest's token tally key: ``large``, ``generator``, or a use of one, which names it in
    brackets (the verify stage's ``verify (generator)``)."""
    return token_key[token_key.rindex("(") + 1:-1] if token_key.endswith(")") and "(" in token_key else token_key


def _stages(run_dir: Path) -> tuple[list[dict], list[dict], dict]:
    """Finished stages (in order, with timeline offsets), in-progress stage folders, and manifests by name."""
    done, running, manifests = [], [], {}
    for sd in stage_dirs(run_dir):
        m = _read_json(sd.manifest_path)
        if m is None:
            running.append({"index": int(sd.path.name[:2]), "name": sd.name, "folder": sd.path.name,
                            "parts": len(sd.parts())})
            continue
        manifests[sd.name] = m
        done.append(_stage_row(sd, m))
    starts = [s["started_at"] for s in done if s["started_at"] is not None]
    t0 = min(starts) if starts else 0.0
    for s in done:
        s["offset_s"] = s["started_at"] - t0 if s["started_at"] is not None else None
    return done, running, manifests


def _tokens(stages: list[dict], models: dict) -> tuple[dict, list[dict]]:
    """Per tier: requests, tokens, summed stage time and output tokens per second; and the per-stage entries.

    The time is the stage's wall time (engine start-up included), so this is the throughput a run got, not
    the engine's peak.
    """
    tiers: dict[str, dict] = {}
    per_stage = []
    for s in stages:
        for tier, t in s["tokens"].items():
            agg = tiers.setdefault(tier, {"tier": tier, "label": TIERS.get(tier, tier),
                                          "model": models.get(tier_of(tier)), "requests": 0, "prompt_tokens": 0,
                                          "output_tokens": 0, "duration_s": 0.0, "stages": []})
            for k in ("requests", "prompt_tokens", "output_tokens"):
                agg[k] += int(t.get(k) or 0)
            agg["duration_s"] += s["duration_s"]
            agg["stages"].append(s["name"])
            out = int(t.get("output_tokens") or 0)
            per_stage.append({"stage": s["name"], "tier": tier, "label": TIERS.get(tier, tier),
                              "output_tokens": out, "duration_s": s["duration_s"],
                              "tokens_per_s": out / s["duration_s"] if s["duration_s"] > 0 else None})
    for agg in tiers.values():
        agg["tokens_per_s"] = agg["output_tokens"] / agg["duration_s"] if agg["duration_s"] > 0 else None
    order = [t for t in TIERS if t in tiers] + sorted(t for t in tiers if t not in TIERS)
    return {t: tiers[t] for t in order}, per_stage


def _principles(run_dir: Path, manifests: dict) -> tuple[list[dict] | None, list[dict] | None]:
    """The principle tree (high-level → low-level members) and the 2-D projection points, where finished."""
    low = read_parquet_rows(list(StageDir.named(run_dir, "cluster").parts().values())) \
        if "cluster" in manifests else None
    tree = None
    if "summarize" in manifests:
        high = read_parquet_rows(list(StageDir.named(run_dir, "summarize").parts().values()))
        by_id = {r["principle_id"]: r for r in low or []}
        tree = []
        for h in sorted(high, key=lambda r: r["principle_id"]):
            ids = list(h.get("member_ids") or [r["principle_id"] for r in low or []
                                                if r["cluster_id"] == h["cluster_id"]])
            tree.append({"id": h["principle_id"], "cluster_id": h.get("cluster_id"), "text": h.get("text") or "",
                         "error": h.get("error"),
                         "members": [{"id": i, "text": (by_id.get(i) or {}).get("text", "")} for i in ids]})
    points = None
    if low is not None:
        names = {h["cluster_id"]: h["id"] for h in tree or []}
        points = [{"id": r["principle_id"], "cluster_id": r["cluster_id"], "high_id": names.get(r["cluster_id"]),
                   "x": float(r["x"]), "y": float(r["y"]), "text": r.get("text", "")}
                  for r in low if r.get("x") is not None and r.get("y") is not None]
    return tree, points


def _validity(manifests: dict) -> dict | None:
    f = manifests.get("filter")
    if f is None:
        return None
    generated = int(f.get("rows") or 0)
    kept = int(f.get("kept") or 0)
    rejected = {str(k): int(v) for k, v in sorted((f.get("rejected") or {}).items(), key=lambda kv: -kv[1])}
    return {"generated": generated, "kept": kept, "rejected": rejected,
            "valid_rate": kept / generated if generated else None}


def _hygiene(manifests: dict) -> dict | None:
    """Principle hygiene: kept and rejected-by-reason counts of the principles and summarize manifests."""
    out = {}
    for stage in ("principles", "summarize"):
        m = manifests.get(stage)
        if m is not None and "rejected" in m:
            kept = m.get("kept", m.get("summaries_used"))
            out[stage] = {"kept": int(kept or 0), "rejected": {str(k): int(v) for k, v in m["rejected"].items()}}
    return out or None


def _scores(data: dict | None) -> dict | None:
    """The eval stage's scores file's ``tasks`` as {task: {metric: value}}; a bare number becomes ``{"score": value}``."""
    tasks = (data or {}).get("tasks") if isinstance(data, dict) else None
    if not tasks:
        return None
    return {str(t): v if isinstance(v, dict) else {"score": v} for t, v in tasks.items()}


def is_run_dir(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and ((path / "config.json").exists() or any(sd.manifest_path.exists()
                                                                      for sd in stage_dirs(path)))


def collect(run_dir) -> dict:
    """One run as a plain dict: config, stages, totals, per-1K figures, tokens, principles, validity, eval."""
    run_dir = Path(run_dir)
    if not is_run_dir(run_dir):
        raise PsiRayError(f"{run_dir} is not a run directory (no config.json and no stage manifest); "
                          "pass runs/<run_id> as written by `psi-ray run`")
    cfg = _read_json(run_dir / "config.json") or {}
    stages, running, manifests = _stages(run_dir)
    method = cfg.get("method") or next((m.get("method") for m in manifests.values() if m.get("method")), "psi")
    models = _models(cfg, method)
    source = (manifests.get("summarize") or {}).get("source")  # principles that skipped M_L or clustering
    skipped = ("expand", "cluster") if source == "file" else ("cluster",) if source else ()
    expected = [s for s in STAGES if (method == "psi" or s not in PSI_ONLY) and s not in skipped]
    finished = "dataset" in manifests
    totals = {k: sum(s[k] for s in stages) for k in ENERGY}
    totals["duration_s"] = sum(s["duration_s"] for s in stages)
    ends = [s["finished_at"] for s in stages if s["finished_at"] is not None]
    starts = [s["started_at"] for s in stages if s["started_at"] is not None]
    totals["wall_s"] = max(ends) - min(starts) if ends else 0.0
    making = {k: sum(s[k] for s in stages if s["name"] not in CLOSING) for k in ENERGY}  # the data's own cost
    measured = any(s["measured"] for s in stages)
    sources = {s["power_source"] for s in stages if s["measured"]}
    power = None if not sources else "rapl" if sources == {"rapl"} else "estimate"
    validity = _validity(manifests)
    valid = manifests["dataset"].get("valid", manifests["dataset"].get("rows")) if finished else None
    if valid is None and validity:
        valid = validity["kept"]
    generated = validity["generated"] if validity else (manifests.get("instances") or {}).get("rows")
    per_1k = None
    if finished and measured and valid:
        per_1k = {k: making[k] / valid * 1000 for k in PER_1K}
    tokens, tokens_by_stage = _tokens(stages, models)
    tree, points = _principles(run_dir, manifests)
    scores = _read_json(scores_file(run_dir))
    notes = [SAME_MODEL_NOTE.format(model=models["large"])] if models["same"] else []
    return {
        "run_id": run_dir.name, "path": str(run_dir), "method": method, "seed": cfg.get("seed"),
        "task": (cfg.get("task") or {}).get("adapter"), "models": models,
        "instances_requested": (cfg.get("instances") or {}).get("count"),
        "finished": finished, "stages": stages, "running": running,
        "missing": [s for s in expected if s not in manifests and s not in {r["name"] for r in running}],
        "totals": totals, "making": making, "measured": measured, "power_source": power,
        "generated": generated, "valid": valid,
        "valid_rate": valid / generated if valid is not None and generated else None,
        "per_1k_valid": per_1k, "tokens": tokens, "tokens_by_stage": tokens_by_stage,
        "principles": tree, "projection": points, "validity": validity, "hygiene": _hygiene(manifests),
        "eval": _scores(scores), "eval_limit": (scores or {}).get("limit") if isinstance(scores, dict) else None,
        "eval_paired": (scores.get("paired") or {}) if isinstance(scores, dict) else {},
        "dataset": (manifests.get("dataset") or {}).get("dataset"), "notes": notes,
    }


def compare(runs: list[dict]) -> dict:
    """All runs in one table, with each run's per-1K-valid figures divided by the teacher run's.

    The teacher run is the first run of method ``teacher`` that has per-1K figures; without one there are no
    ratios. The same-model note is added when any run's M_L and M_g are one model.
    """
    teacher = next((r for r in runs if r["method"] == "teacher" and r["per_1k_valid"]), None)
    rows = []
    for r in runs:
        p = r["per_1k_valid"]
        ratio = None
        if teacher and p:
            t = teacher["per_1k_valid"]
            ratio = {k: p[k] / t[k] if t[k] else None for k in PER_1K}
        rows.append({
            "run_id": r["run_id"], "method": r["method"], "writers": r["models"]["writers"],
            "finished": r["finished"], "generated": r["generated"], "valid": r["valid"],
            "valid_rate": r["valid_rate"], "energy_kwh": r["making"]["energy_kwh"],
            "emissions_kg": r["making"]["emissions_kg"], "measured": r["measured"], "per_1k": p,
            "ratio_to_teacher": ratio,
            "output_tokens": {t: v["output_tokens"] for t, v in r["tokens"].items()}, "eval": r["eval"] or {},
        })
    same = sorted({r["models"]["large"] for r in runs if r["models"]["same"]})
    notes = [SAME_MODEL_NOTE.format(model=", ".join(same))] if same else []
    tasks = sorted({t for r in runs for t in (r["eval"] or {})})
    return {"rows": rows, "teacher": teacher["run_id"] if teacher else None, "notes": notes, "eval_tasks": tasks}
