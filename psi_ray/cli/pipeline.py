"""CLI verbs that drive the PSI pipeline: ``run``, ``principles``, ``show-prompt``."""

from __future__ import annotations

from pathlib import Path

from psi_ray.errors import PsiRayError


def cmd_run(args) -> int:
    """Run (or resume) a generation job: seeds → principles → instances → filtered Parquet dataset."""
    from psi_ray import pipeline
    from psi_ray.config import load_config

    cfg = load_config(args.config, {"method": args.method, "run_id": args.run_id, "runs_dir": args.runs_dir})
    run_dir = pipeline.run(cfg)
    from psi_ray.rundir import StageDir

    manifest = StageDir.named(run_dir, "dataset").manifest()
    print(f"\ndataset: {manifest['dataset']} ({manifest['valid']} valid instances)")
    print(f"run directory: {run_dir}")
    if not args.no_report:
        from psi_ray.report import write_report

        print(f"report: {write_report(run_dir)['html']}")
    return 0


def cmd_compare(args) -> int:
    """Compare PSI with its baselines and ablations on one job at equal budgets: every arm generates until it
    keeps the same number of rows, trains the same number of steps from the same seed, and is scored with the
    untrained base on the same questions, each against student with a paired 95% interval. Writes
    compare.json, compare.md and compare.html in <runs_dir>/<name>-compare/; every step resumes."""
    from psi_ray.config import load_config
    from psi_ray.evaluate.run import parse_tasks
    from psi_ray.pipeline.compare import CompareSpec, compare, parse_arms

    cfg = load_config(args.config, {"runs_dir": args.runs_dir})
    if args.kept < 1 or args.max_attempts < 1 or args.questions < 0:
        raise PsiRayError("--kept must be at least 1, --max-attempts at least 1.0 and --questions at least 0 (all)")
    arms = args.arms
    if args.subsets:
        values = [v.strip() for v in args.subsets.split(",") if v.strip()]
        if not values or not all(v.isdigit() and int(v) > 0 for v in values):
            raise PsiRayError(f"--subsets takes positive whole numbers, comma-separated (e.g. 1,5,10), got {args.subsets!r}")
        arms += "," + ",".join(f"psi-T{int(v)}" for v in values)
    spec = CompareSpec(arms=parse_arms(arms), kept=args.kept, max_attempts=args.max_attempts,
                       questions=args.questions or None, tasks=tuple(parse_tasks(args.tasks or cfg.eval.tasks)),
                       principles_file=args.principles_file)
    out = compare(cfg, spec)
    print(f"\ncompare: {out / 'compare.html'}\n         {out / 'compare.md'}\n         {out / 'compare.json'}")
    return 0


def cmd_principles(args) -> int:
    """Print a run's principle tree: low-level principles by cluster, under each high-level one."""
    from psi_ray.rundir import StageDir

    run_dir = Path(args.run_dir)
    low, high = StageDir.named(run_dir, "cluster"), StageDir.named(run_dir, "summarize")
    if not high.manifest():
        raise PsiRayError(f"{run_dir}: no finished summarize stage ({high.manifest_path.relative_to(run_dir)}); "
                          "only psi runs have principles")
    members = low.read()
    for h in sorted(high.read(), key=lambda x: x["principle_id"]):
        print(f"{h['principle_id']}  {h['text']}")
        for m in members:
            if m["cluster_id"] == h["cluster_id"]:
                print(f"    {m['principle_id']}  {m['text']}")
        print()
    return 0


def cmd_show_prompt(args) -> int:
    """Render one stage's prompt on the built-in seeds so a person can read it."""
    from psi_ray import prompts
    from psi_ray.config import JobConfig
    from psi_ray.stages import expand, instances, principles, seeds, verify
    from psi_ray.tasks import get_adapter

    adapter = get_adapter(args.task)
    cfg = JobConfig(task={"adapter": args.task, "seeds": args.seeds or adapter.builtin_seeds})
    rows = seeds.load(cfg)
    demo_principles = [{"principle_id": "H00", "text": "(high-level principle 1)"},
                       {"principle_id": "H01", "text": "(high-level principle 2)"}]
    if args.stage == "expand":
        msgs = expand.build_prompts(rows, adapter, 1)[0]["prompt"]
    elif args.stage == "principles":
        pool = expand.d_initial(rows, [])
        msgs = principles.build_prompts(pool, adapter, 1, min(4, len(rows)), 0)[0]["prompt"]
    elif args.stage == "summarize":
        msgs = prompts.chat("summarize", task=adapter, principles=["(low-level principle a)", "(low-level principle b)"])
    elif args.stage == "instances":
        msgs = instances.plan(1, 1, 0, demo_principles, rows, 2, 2, adapter)[0]["prompt"]
    elif args.stage == "verify":
        msgs = verify.build_prompts([{"id": "x", "error": None, **rows[0]}], adapter, 1)[0]["prompt"] \
            if adapter.has_answer else prompts.chat("verify", task=adapter, question=rows[0]["instruction"])
    else:
        raise PsiRayError(f"unknown stage '{args.stage}'; choose one of: {', '.join(prompts.STAGES)}")
    for m in msgs:
        print(f"=== {m['role']}\n{m['content']}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("run", help="run or resume a generation job", description=cmd_run.__doc__)
    p.add_argument("config", metavar="JOB.yaml", help="job file, e.g. jobs/gsm8k_cpu.yaml")
    p.add_argument("--method", choices=["psi", "teacher", "student"], default=None,
                   help="psi (default in the job), teacher (M_L writes all) or student (M_g, no principles)")
    p.add_argument("--run-id", default=None, help="run folder name (default: <name>-<method>)")
    p.add_argument("--runs-dir", default=None, help="where run folders go (default: the job's runs_dir)")
    p.add_argument("--no-report", action="store_true", help="skip writing RUN_DIR/report.html at the end")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("compare", help="PSI against its baselines and ablations at equal budgets",
                       description=cmd_compare.__doc__)
    p.add_argument("config", metavar="JOB.yaml", help="job file; its models, sampling, train and eval settings "
                   "are every arm's")
    p.add_argument("--arms", default="psi,student,teacher,placebo,no-cluster,handwritten",
                   help="comma-separated, must include student (default: all six: psi, student, teacher, placebo, "
                   "no-cluster, handwritten); psi-T<k> is psi with k principle subsets")
    p.add_argument("--subsets", default=None, metavar="T1,T2,...",
                   help="the T sweep in the same compare: adds a psi-T<k> arm (psi with principles.subsets=k) for each "
                   "value, e.g. --arms student --subsets 1,5,10")
    p.add_argument("--kept", type=int, default=64, help="kept rows every arm trains on (default 64)")
    p.add_argument("--max-attempts", type=float, default=16.0,
                   help="an arm may generate this many times --kept instances to reach it (default 16: the "
                   "built-in 135M model keeps 11-14%% of what it writes)")
    p.add_argument("--questions", type=int, default=250,
                   help="first N questions of each eval task, the same for every model; 0: all (default 250)")
    p.add_argument("--tasks", default=None, help="eval tasks, comma-separated (default: the job's eval.tasks)")
    p.add_argument("--principles-file", default=None,
                   help="the handwritten arm's principles (default: the task's built-in file)")
    p.add_argument("--runs-dir", default=None, help="where the compare folder goes (default: the job's runs_dir)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("principles", help="print a run's principle tree", description=cmd_principles.__doc__)
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.set_defaults(func=cmd_principles)

    p = sub.add_parser("show-prompt", help="render a stage's prompt", description=cmd_show_prompt.__doc__)
    p.add_argument("stage", metavar="STAGE", help="expand, principles, summarize, instances or verify")
    p.add_argument("--task", default="gsm8k", choices=["gsm8k", "mmlu", "generic"],
                   help="task adapter (default gsm8k); its labels and answer format shape the prompt")
    p.add_argument("--seeds", default=None, help="seed file (default: the adapter's built-in seeds)")
    p.set_defaults(func=cmd_show_prompt)

