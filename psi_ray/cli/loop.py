"""CLI verbs that close the loop after the dataset: ``train``, ``serve``, ``eval``."""

from __future__ import annotations

import signal
import threading
from pathlib import Path


def cmd_train(args) -> int:
    """Fine-tune a target model M_t on a psi-ray dataset with Ray Train; re-running the same command resumes
    from the last checkpoint. Writes an HF model folder (LoRA merged) to OUT/model, or to RUN_DIR/model when
    given a run directory and no --out, as a run's train stage does."""
    from psi_ray.config import TrainSpec, validated
    from psi_ray.rundir import StageDir, model_dir
    from psi_ray.train import train
    from psi_ray.train.run import resolve_dataset

    dataset = resolve_dataset(args.source)
    fields = {name: getattr(args, dest) for name, dest in TRAIN_FLAGS.items() if getattr(args, dest) is not None}
    if args.gpu and args.strategy is None:
        fields["strategy"] = "deepspeed"  # ZeRO in bf16 is the GPU default
    spec = validated(TrainSpec, fields, "arguments")
    run_dir = Path(args.source) if Path(args.source).is_dir() and not args.out else None
    out = Path(args.out) if args.out else (StageDir.named(run_dir, "train").path if run_dir
                                           else dataset.parent / "train")
    result = train(dataset, out, spec, seed=args.seed, model_dir=model_dir(run_dir) if run_dir else None)
    print(f"\n{result.steps} steps on {result.examples} examples in {result.seconds:.0f}s; "
          f"loss {result.losses[0]:.4f} → {result.losses[-1]:.4f}" + (f" (resumed from step {result.resumed_from})"
                                                                    if result.resumed_from else ""))
    print(f"model: {result.model_dir}")
    return 0


def cmd_serve(args) -> int:
    """Serve a model folder (or built-in model) as an OpenAI-compatible API with Ray Serve: /v1/models,
    /v1/completions (string or token-id prompts, echo, logprobs, stop) and /v1/chat/completions, with LoRA
    adapters (--adapter) beside the model in its one engine. Blocks until Ctrl-C."""
    from psi_ray import serve

    url = serve.start(args.model, host=args.host, port=args.port, name=args.name, api_key_env=args.api_key_env,
                      num_cpus=args.num_cpus, max_model_len=args.max_model_len, allow_no_key=args.allow_no_key,
                      request_timeout_s=args.request_timeout, route_prefix=args.route_prefix,
                      adapters=args.adapter)
    print(f"serving {args.model} at {url} (Ctrl-C to stop)", flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        stopped.wait()
    except KeyboardInterrupt:
        pass
    serve.stop()
    return 0


def cmd_eval(args) -> int:
    """Score an endpoint (http://HOST:PORT/v1) or a model folder (served for the run) with lm-eval on tasks
    shipped in the package; prints the scores and writes OUT/scores.json plus per-question samples."""
    from psi_ray.evaluate import TASKS, evaluate

    out = Path(args.out) if args.out else Path("runs") / "eval" / _slug(args.target)
    report = evaluate(args.target, args.tasks, out, limit=args.limit, tokenizer=args.tokenizer,
                      api_key_env=args.api_key_env, max_gen_tokens=args.max_gen_tokens,
                      concurrency=args.concurrency, allow_insecure_key=args.allow_insecure_key, model=args.model)
    print(f"\n{'task':<8} {'metric':<30} value")
    for task, metrics in report["tasks"].items():
        for metric, value in metrics.items():
            star = " *" if metric == TASKS[task].main_metric else ""
            print(f"{task:<8} {metric:<30} {value:.4f}{star}")
    print(f"\nscores: {out / 'scores.json'}")
    return 0


def _slug(target: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in target.rstrip("/").split("/")[-1]) or "model"


# TrainSpec fields the train verb takes as flags (field -> argparse dest); help, type, choices and default of each
# flag come from the field itself, so the CLI and a job's ``train:`` section cannot drift apart.
TRAIN_FLAGS = {"model": "model", "strategy": "strategy", "zero_stage": "zero_stage", "lora": "lora",
               "lora_rank": "lora_rank", "use_gpu": "gpu", "num_workers": "num_workers",
               "cpus_per_worker": "cpus_per_worker", "epochs": "epochs", "batch_size": "batch_size", "lr": "lr",
               "max_seq_len": "max_seq_len", "max_steps": "max_steps", "checkpoint_every": "checkpoint_every"}


def add_spec_flags(p) -> None:
    """One ``--flag`` per :data:`TRAIN_FLAGS` entry, described by its ``TrainSpec`` field."""
    import typing

    from psi_ray.config import TrainSpec

    for name, dest in TRAIN_FLAGS.items():
        field = TrainSpec.model_fields[name]
        default = f"default {field.default}" if field.default is not None else "unset by default"
        text = f"{field.description or name.replace('_', ' ')} ({default}" + \
            ("; deepspeed with --gpu)" if name == "strategy" else ")")
        flag = "--" + dest.replace("_", "-")
        if field.annotation is bool:
            p.add_argument(flag, dest=dest, action="store_const", const=True, default=None, help=text)
            continue
        kind = typing.get_args(field.annotation) or (field.annotation,)
        if typing.get_origin(field.annotation) is typing.Literal:
            p.add_argument(flag, dest=dest, type=type(kind[0]), choices=list(kind), default=None, help=text)
        else:
            p.add_argument(flag, dest=dest, type=next(k for k in kind if k is not type(None)), default=None,
                           help=text)


def register(sub) -> None:
    p = sub.add_parser("train", help="fine-tune M_t on a dataset with Ray Train", description=cmd_train.__doc__)
    p.add_argument("source", metavar="RUN_DIR|DATASET", help="a run directory or a Parquet file with 'messages'")
    p.add_argument("--out", default=None, help="output folder for checkpoints, the step log and the model "
                   "(default RUN_DIR/08_train, the model then in RUN_DIR/model)")
    add_spec_flags(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the data order and of LoRA's initialisation (default 0)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("serve", help="serve a model as an OpenAI-compatible API", description=cmd_serve.__doc__)
    p.add_argument("model", metavar="MODEL_DIR", help="HF model folder (e.g. RUN_DIR/model) or built-in name")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; 0.0.0.0 to expose)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--name", default=None, help="model name clients send (default: the folder name)")
    p.add_argument("--api-key-env", default=None, metavar="VAR",
                   help="require 'Authorization: Bearer <key>' with the key read from env var VAR")
    p.add_argument("--num-cpus", type=float, default=1,
                   help="CPUs the engine reserves from Ray on a CPU node (default 1; it computes on every core)")
    p.add_argument("--max-model-len", type=int, default=None,
                   help="context length in tokens (default: the model's own, at most 4096)")
    p.add_argument("--allow-no-key", action="store_true",
                   help="serve on a non-loopback --host without --api-key-env (refused otherwise)")
    p.add_argument("--route-prefix", default="/", metavar="PATH",
                   help="serve under http://HOST:PORT/PATH/v1 (default /), so several models share one cluster")
    p.add_argument("--request-timeout", type=float, default=600, metavar="S",
                   help="a request still unanswered after S seconds gets 408 (default 600)")
    p.add_argument("--adapter", action="append", metavar="NAME=DIR",
                   help="serve the PEFT LoRA adapter in DIR as model NAME from the same engine (repeatable; "
                   "psi-ray train --lora keeps its adapter in MODEL/adapter; on a cluster, a path the engine's "
                   "node sees too)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("eval", help="score an endpoint or model with lm-eval", description=cmd_eval.__doc__)
    p.add_argument("target", metavar="ENDPOINT|MODEL_DIR", help="http://HOST:PORT/v1, a model folder or a built-in")
    p.add_argument("--tasks", default="gsm8k", help="comma-separated: gsm8k, mmlu (default gsm8k)")
    p.add_argument("--limit", type=int, default=None, help="first N questions per task (default: all)")
    p.add_argument("--out", default=None, help="output folder (default runs/eval/<name>)")
    p.add_argument("--tokenizer", default=None, help="the endpoint model's tokenizer folder (log-likelihood tasks)")
    p.add_argument("--model", default=None, metavar="ID", help="the served model id to score, e.g. an adapter "
                   "served with --adapter (default: the first the endpoint lists)")
    p.add_argument("--api-key-env", default=None, metavar="VAR", help="env var holding the endpoint's API key")
    p.add_argument("--allow-insecure-key", action="store_true",
                   help="send the key over plain http to a non-loopback endpoint (refused otherwise)")
    p.add_argument("--max-gen-tokens", type=int, default=256, help="generation budget per answer (default 256)")
    p.add_argument("--concurrency", type=int, default=64,
                   help="requests in flight; the engine runs them as one batch (default 64)")
    p.set_defaults(func=cmd_eval)

