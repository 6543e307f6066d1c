"""The PSI wiring: ``run(cfg)`` reads like the method.

seeds → expand (M_g) → principles (M_L) → cluster → summarize (M_L) → instances (M_g, or M_L for ``teacher``)
→ verify (optional) → filter → dataset → train → eval. Instance generation is sharded: each shard is written
atomically as soon as all its rows are back, so an interrupted run re-does only unfinished shards.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict
from pathlib import Path

from psi_ray.config import JobConfig, ModelSpec
from psi_ray.errors import PsiRayError
from psi_ray.evaluate.questions import check_eval_not_seeded, eval_questions
from psi_ray.pipeline import closing, dataplane
from psi_ray.pipeline.engines import Tally, check_endpoints, generate, stream
from psi_ray.pipeline.runner import Run, StageResult
from psi_ray.rundir import (
    DATASET_CARD,
    DATASET_FILE,
    ParquetSink,
    StageDir,
    atomic_write_text,
    locked,
    read_parquet_rows,
    read_table,
)
from psi_ray.runtime import init_ray
from psi_ray.stages import cluster, dataset, expand, guidance, instances, principles, seeds, summarize, verify
from psi_ray.stages import filter as filters


def run(cfg: JobConfig, reuse: list[Path] = ()) -> Path:
    """Run (or resume) a whole generation job; return the run directory. A stage that a run directory in
    ``reuse`` finished with the same config is copied from there instead of computed."""
    seed_rows = seeds.load(cfg)  # every seed check happens before any model or Ray starts
    check_eval_not_seeded(cfg, seed_rows)
    check_endpoints(cfg)
    if cfg.train.enabled:  # a missing GPU or extra fails now, not after the data is made
        from psi_ray.train.run import check_resources

        check_resources(cfg.train)
    r = Run(cfg, engine_uses(cfg), reuse)
    try:
        r.dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # runs_dir under a file, read-only, ...
        raise PsiRayError(f"cannot create the run directory {r.dir}: {exc.strerror or exc}") from None
    with locked(r.dir):
        atomic_write_text(r.dir / "config.json", cfg.redacted_json(indent=2))  # secrets in options never hit disk
        init_ray()
        try:
            _stages(r, seed_rows)
        finally:
            r.engines.close()
    return r.dir


def engine_uses(cfg: JobConfig) -> list[tuple[str, ModelSpec]]:
    """Which stage generates with which tier, in pipeline order (stages that run no model are absent)."""
    uses = []
    if cfg.method == "psi" and cfg.principles.source != "file":
        uses += [("expand", cfg.generator), ("principles", cfg.large)]
        if cfg.instances.guidance != "low_level":  # the no-clustering ablation summarizes nothing
            uses.append(("summarize", cfg.large))
    uses.append(("instances", cfg.large if cfg.method == "teacher" else cfg.generator))
    if cfg.verify.enabled:
        uses.append(("verify", cfg.large if cfg.verify.tier == "large" else cfg.generator))
    return uses


def seeds_stage(r: Run, seed_rows: list[dict]) -> StageDir:
    """Stage 0: the seeds as read. Its digest covers their content, not only their path, so an edited seed
    file makes every later finished stage a config mismatch instead of a silent reuse."""
    content = hashlib.sha256(json.dumps(seed_rows, sort_keys=True, default=str).encode()).hexdigest()
    return r.stage("seeds", ("task",), lambda sd: StageResult(seed_rows), salt=content)


def _stages(r: Run, seed_rows: list[dict]) -> None:
    """Stages 0-9 in pipeline order; each is skipped when its manifest says it is done."""
    cfg = r.cfg
    seeds_stage(r, seed_rows)
    high: list[dict] = []
    if cfg.method == "psi" and cfg.principles.source == "file":  # curated principles: no M_L, no clustering
        path = cfg.path(cfg.principles.file)
        texts = principles.load_principle_file(path)
        salt = hashlib.sha256("\n".join(texts).encode()).hexdigest()
        low = r.stage("principles", ("principles",), lambda sd: _principles_from(texts, path), salt=salt).read()
        high = r.stage("summarize", ("principles",), lambda sd: _as_high_level(low, "file")).read()
    elif cfg.method == "psi":
        pool = r.stage("expand", ("task", "expand", "generator"), lambda sd: _expand(r, seed_rows)).read()
        low = r.stage("principles", ("principles", "large"), lambda sd: _principles(r, pool)).read()
        if cfg.instances.guidance == "low_level":  # the no-clustering ablation: M_L's principles as they are
            high = r.stage("summarize", ("principles", "large"),
                           lambda sd: _as_high_level(low, "low-level principles, not clustered")).read()
        else:
            clustered = r.stage("cluster", ("cluster", "embedder"), lambda sd: _cluster(r, low)).read()
            high = r.stage("summarize", ("summarize", "large"), lambda sd: _summarize(r, clustered)).read()
    high = [h for h in high if h["text"]]  # a cluster with no usable summary nor member guides nothing
    if cfg.method == "psi" and cfg.instances.guidance == "placebo":  # same lengths, no task information
        high = guidance.placebo(high, cfg.seed)
    waves = ("filter",) if cfg.instances.target_kept else ()  # the filter decides when the waves stop
    made = r.stage("instances", ("instances", "shard_size", "generator", "large", *waves),
                   lambda sd: _instances(r, sd, seed_rows, high))
    if cfg.verify.enabled:
        made = r.stage("verify", ("verify", cfg.verify.tier), lambda sd: verify_stage(r, sd, made))
    kept = r.stage("filter", ("filter",), lambda sd: filter_stage(r, sd, made, seed_rows))
    data = r.stage("dataset", (), lambda sd: dataset_stage(r, sd, kept, high))
    trained = None
    if cfg.train.enabled:
        trained = r.stage("train", ("train",), lambda sd: closing.train_stage(r, sd, data))
    if cfg.eval.enabled:
        r.stage("eval", ("eval", "train"), lambda sd: closing.eval_stage(r, sd, trained))


def _expand(r: Run, seed_rows):
    cfg = r.cfg
    plan = expand.build_prompts(seed_rows, r.adapter, cfg.expand.variants_per_seed)
    got = generate(plan, cfg.generator, cfg.expand.sampling, r.engines)
    variants = expand.parse_outputs(plan, got, r.adapter)
    t = Tally(got)
    return StageResult(expand.d_initial(seed_rows, variants), {"tokens": t.tokens("generator"), "nodes": t.nodes("generator"),
                                                   "valid_variants": sum(v["valid"] for v in variants)})


def _principles(r: Run, pool):
    cfg = r.cfg
    plan = principles.build_prompts(pool, r.adapter, cfg.principles.subsets, cfg.principles.subset_size, cfg.seed)
    got = generate(plan, cfg.large, cfg.principles.sampling, r.engines)
    rows = principles.parse_outputs(plan, got)
    subsets = {p["id"]: p["example_ids"] for p in plan}
    t = Tally(got)
    return StageResult(rows, {"tokens": t.tokens("large"), "nodes": t.nodes("large"), "subsets": subsets,
                  "kept": sum(1 for x in rows if x["valid"]), "rejected": principles.reject_counts(rows)})


def _principles_from(texts: list[str], path: Path):
    rows = principles.rows_from_texts(texts)
    return StageResult(rows, {"source": str(path), "kept": sum(1 for x in rows if x["valid"]),
                  "rejected": principles.reject_counts(rows)})


def _as_high_level(low: list[dict], source: str):
    """Principles that skip clustering and summaries (a file's, or the no-clustering ablation's): each valid
    one becomes its own high-level principle."""
    rows, manifest = guidance.as_high_level(low, source)
    return StageResult(rows, manifest)


def _cluster(r: Run, low):
    cfg = r.cfg
    rows = cluster.cluster_principles(low, cfg.embedder, cfg.cluster.num_clusters, cfg.seed, cfg.cluster.algorithm)
    return StageResult(rows, {"clusters": {str(c): sum(1 for x in rows if x["cluster_id"] == c)
                               for c in sorted({x["cluster_id"] for x in rows})}})


def _summarize(r: Run, clustered):
    plan = summarize.build_prompts(clustered, r.adapter)
    got = generate(plan, r.cfg.large, r.cfg.summarize.sampling, r.engines)
    rows = summarize.parse_outputs(plan, got)
    rejected: dict[str, int] = defaultdict(int)
    for x in rows:
        if x.get("reject_reason"):
            rejected[x["reject_reason"]] += 1
    t = Tally(got)
    return StageResult(rows, {"tokens": t.tokens("large"), "nodes": t.nodes("large"),
                  "summaries_used": sum(1 for x in rows if not x.get("reject_reason")),
                  "rejected": dict(sorted(rejected.items()))})


def _instances(r: Run, sd: StageDir, seed_rows, high):
    """Generate the missing shards only; write each as soon as all its rows are back. With
    ``instances.target_kept``, shards go out in waves until the filter keeps that many rows (or the plan, the
    attempts cap, is used up)."""
    import pyarrow.compute as pc

    cfg, ic = r.cfg, r.cfg.instances
    tier, spec = ("large", cfg.large) if cfg.method == "teacher" else ("generator", cfg.generator)
    plan_args = {"count": ic.count, "shard_size": cfg.shard_size, "seed": cfg.seed,
                 "principles": high if cfg.method == "psi" else [], "seeds": seed_rows,
                 "principles_per_prompt": ic.principles_per_prompt, "examples_per_prompt": ic.examples_per_prompt,
                 "samples_per_prompt": ic.samples_per_prompt}
    shards = list(range(-(-ic.count // cfg.shard_size)))
    done = set(sd.parts())
    if done:
        left = "more in waves" if ic.target_kept else f"{len(set(shards) - done)} to generate"
        print(f"[instances] resuming: {len(done)} shard(s) done, {left}")
    tally = Tally()

    def generate_missing(wanted: list[int]) -> None:
        parts = sd.parts()
        dataplane.generate_shards(sd, [s for s in wanted if s not in parts], plan_args, spec, ic.sampling,
                                  r.engines, r.adapter, tally)

    extra = {}
    target = ic.target_kept
    if target is None:
        generate_missing(shards)
    else:
        plane = dataplane.FilterPlane(r.adapter, seed_rows, cfg.filter, ic.count, parallel=False)
        generated = kept = counted = 0
        while True:
            parts = sd.parts()
            while counted < len(shards) and shards[counted] in parts:  # count finished shards in plan order
                for table, reasons in plane.run([read_table(parts[shards[counted]])]):
                    generated += table.num_rows
                    kept += sum(x is None for x in reasons)
                counted += 1
            rows = instances.next_wave(generated, kept, target, ic.count, cfg.shard_size)
            wave = shards[counted : counted + -(-rows // cfg.shard_size)] if rows > 0 else []
            if not wave:
                break
            print(f"[instances] {kept} of {target} rows kept after {generated}: {len(wave)} more shard(s)")
            generate_missing(wave)
        extra = {"target_kept": target, "kept_when_stopped": kept,
                 "stopped": "target reached" if kept >= target else "attempts cap reached"}
    made = sd.read_table(["id", "error"])
    errors = pc.sum(pc.and_(pc.is_valid(made["error"]), pc.not_equal(made["error"], ""))).as_py() or 0
    extra = {"rows": made.num_rows, "unique_ids": pc.count_distinct(made["id"]).as_py(), "errors": errors,
             "tokens": tally.tokens(tier), "nodes": tally.nodes(tier), "shards": len(sd.parts()),
             "resumed_shards": len(done), "tier": tier, "generator": spec.model, **extra}
    return StageResult(None, extra)


def verify_stage(r: Run, sd: StageDir, made: StageDir):
    """Re-solve each checkable instance k times with the verifier tier; write each part once all its answers
    are back (an interrupted stage re-does only unfinished parts). Parts go through a window at a time
    (:data:`dataplane.VERIFY_WINDOW_PROMPTS` prompts), so the driver never holds a large job's rows.
    ``generate_s`` spans the windows: reading parts, the engines' work, writing."""
    vc = r.cfg.verify
    spec = r.cfg.large if vc.tier == "large" else r.cfg.generator
    done = set(sd.parts())
    if not r.adapter.has_answer:
        print(f"[verify] task '{r.adapter.name}' has no checkable answer: rows pass through unverified")
    todo = {part: path for part, path in made.parts().items() if part not in done}
    t0 = time.time()
    tally = Tally()
    for window in dataplane.part_windows(todo, max(1, dataplane.VERIFY_WINDOW_PROMPTS // vc.samples)):
        _verify_window(r, sd, window, spec, tally)
    unwritten = sorted(set(todo) - set(sd.parts()))
    if unwritten:  # every part's answers came back or it would have been written: a lost answer is a bug
        raise PsiRayError(f"verify: part(s) {unwritten[:5]} did not get all their answers back; re-run to retry")
    flags = sd.read_column("verified")
    return StageResult(None, {"rows": len(flags), "checked": sum(f is not None for f in flags),
                  "verified": sum(f is True for f in flags), "disagreed": sum(f is False for f in flags),
                  "samples": vc.samples, "tier": vc.tier, "verifier": spec.model, "generate_s": time.time() - t0,
                  "tokens": tally.tokens(f"verify ({vc.tier})"), "nodes": tally.nodes(vc.tier)})


def _verify_window(r: Run, sd: StageDir, window: dict[int, Path], spec: ModelSpec, tally: Tally) -> None:
    """Verify the parts of one window: all their prompts in one stream, each part written when whole."""
    vc = r.cfg.verify
    rows_of = {part: read_parquet_rows([path]) for part, path in window.items()}
    plans = {part: verify.build_prompts(rows, r.adapter, vc.samples) for part, rows in rows_of.items()}
    pending: dict[int, list[dict]] = defaultdict(list)
    part_of = {p["id"]: part for part, plan in plans.items() for p in plan}
    for part, plan in plans.items():
        if not plan:
            sd.write_part(part, verify.parse_outputs(rows_of[part], [], r.adapter, vc.min_agreement))
    for batch in stream([p for plan in plans.values() for p in plan], spec, vc.sampling, r.engines):
        tally.add(batch)
        for g in batch:
            part = part_of[g["id"]]
            pending[part].append(g)
            if len(pending[part]) == len(plans[part]):
                sd.write_part(part, verify.parse_outputs(rows_of[part], pending.pop(part), r.adapter,
                                                         vc.min_agreement))


def filter_stage(r: Run, sd: StageDir, made: StageDir, seed_rows):
    """Stream the instance shards through the filters, one output part per input part: row checks in parallel
    checker actors, duplicates decided in part order (:class:`dataplane.FilterPlane`)."""
    import pyarrow as pa

    fc, target = r.cfg.filter, r.cfg.instances.target_kept
    budget = ("over_budget",) if target else ()
    reasons: dict[str, int] = dict.fromkeys((*filters.REASONS, *r.adapter.reject_reasons, *budget), 0)  # zeros too
    total = kept = 0
    parts = made.parts()
    plane = dataplane.FilterPlane(r.adapter, seed_rows, fc, r.cfg.instances.count)
    checkers = len(plane.actors)
    try:
        for part, (table, why) in zip(parts, plane.run(read_table(p) for p in parts.values()), strict=True):
            for i, x in enumerate(why):  # equal budgets: rows past the target are marked, not dropped
                kept += x is None
                if x is None and target and kept > target:
                    why[i] = "over_budget"
            table = table.drop_columns([c for c in ("valid", "reject_reason") if c in table.column_names])
            table = table.append_column("valid", pa.array([x is None for x in why], pa.bool_()))
            sd.write_table(part, table.append_column("reject_reason", pa.array(why, pa.string())))
            total += len(why)
            for x in why:
                key = x or "kept"
                reasons[key] = reasons.get(key, 0) + 1
    finally:
        plane.close()
    return StageResult(None, {"rows": total, "kept": reasons.pop("kept", 0), "rejected": dict(sorted(reasons.items())),
                              "decontaminated_against": {t: len(eval_questions(t)) for t in fc.decontaminate},
                              "checkers": checkers})


def dataset_stage(r: Run, sd: StageDir, kept: StageDir, high):
    """Write the kept rows as chat-format Parquet, part by part into one file, and the dataset card."""
    cfg = r.cfg
    sampling = cfg.instances.sampling.model_dump()
    with ParquetSink(sd.path / DATASET_FILE, dataset.schema()) as sink:
        for path in kept.parts().values():
            sink.write_table(dataset.to_table(read_table(path), cfg.task.adapter, cfg.method, sampling))
    fm = kept.manifest()
    counts = {"instances generated": fm["rows"], "valid instances": sink.rows,
              **{f"rejected: {k}": v for k, v in fm.get("rejected", {}).items()},
              "decontaminated against": ", ".join(f"{t} test ({n} questions)" for t, n in
                                                  fm.get("decontaminated_against", {}).items()) or "none"}
    writer = cfg.large.model if cfg.method == "teacher" else cfg.generator.model
    models = {"M_L (principles)": cfg.large.model, "M_g / writer": writer} if cfg.method == "psi" else \
        {"writer": writer}
    atomic_write_text(sd.path / DATASET_CARD, dataset.card(cfg, high, counts, models))
    return StageResult(None, {"rows": sink.rows, "dataset": str(sd.path / DATASET_FILE), "valid": sink.rows})
