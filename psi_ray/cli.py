"""The ``psi-ray`` command line: one verb per job a user does.

Every user-facing failure is a :class:`~psi_ray.errors.PsiRayError`, printed as one line (``psi-ray: error:
...``) with exit status 2; nothing else is caught, so a real bug still shows its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from psi_ray.errors import PsiRayError


def cmd_models(args) -> int:
    """List the built-in models and whether their package and converted folder are present."""
    from psi_ray.models import CATALOGUE, home

    print(f"{'name':<14} {'role':<9} {'installed':<10} {'package':<34} description")
    for m in CATALOGUE.values():
        print(f"{m.name:<14} {m.role:<9} {'yes' if m.installed else 'no':<10} {m.package:<34} {m.description}")
    print(f"\nconverted models are cached under {home() / 'models'} ($PSI_RAY_HOME)")
    return 0


def cmd_generate(args) -> int:
    """Send prompts to one model through one backend and print the completions."""
    from psi_ray.backends import SamplingParams, load_backend
    from psi_ray.backends.base import Generation

    options = {}
    if args.backend == "openai":
        options.update(base_url=args.base_url, api_key_env=args.api_key_env,
                       allow_insecure_key=args.allow_insecure_key)
    backend = load_backend(args.backend, args.model, **options)
    if hasattr(backend, "check"):
        backend.check()
    prompts = [p if args.raw else [{"role": "user", "content": p}] for p in args.prompts]
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
                            n=args.n, seed=args.seed)
    gens: list[Generation] = backend.generate(prompts, params)
    backend.close()
    failed = 0
    for i, g in enumerate(gens):
        if args.json:
            print(json.dumps({"prompt": args.prompts[i // args.n], "text": g.text, "finish_reason": g.finish_reason,
                              "prompt_tokens": g.prompt_tokens, "output_tokens": g.output_tokens, "error": g.error}))
        else:
            print(f"--- [{i}] {g.output_tokens} tokens, {g.finish_reason or 'error'}")
            print(g.text if g.error is None else f"error: {g.error}")
        failed += g.error is not None
    return 1 if failed else 0


def cmd_validate(args) -> int:
    """Validate job YAML files; report every error at once.

    A job that scores an eval task (``eval.enabled``) must not seed from that task's eval questions: its
    seeds are loaded and compared with the shipped eval sets (MMLU dev seeds → scored on MMLU test).
    """
    from psi_ray.config import load_config

    bad = 0
    for path in args.files:
        try:
            cfg = load_config(path)
        except PsiRayError as exc:
            print(str(exc), file=sys.stderr)
            bad += 1
            continue
        try:
            if cfg.eval.enabled:
                from psi_ray.evaluate.questions import check_eval_not_seeded
                from psi_ray.stages import seeds

                check_eval_not_seeded(cfg, seeds.load(cfg))
            print(f"{path}: ok")
        except PsiRayError as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            bad += 1
    return 2 if bad else 0


def build_parser() -> argparse.ArgumentParser:
    from psi_ray import __version__

    parser = argparse.ArgumentParser(
        prog="psi-ray",
        description="PSI on Ray: a large model writes task principles from a few seeds, a small model writes "
        "the dataset guided by them; then train, serve and score a target model.",
    )
    parser.add_argument("--version", action="version", version=f"psi-ray {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser("models", help="list the built-in models", description=cmd_models.__doc__)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("generate", help="send prompts to a model by hand", description=cmd_generate.__doc__)
    p.add_argument("prompts", nargs="+", metavar="PROMPT", help="user message(s); with --raw, plain text to continue")
    p.add_argument("--model", default="smollm2-135m",
                   help="built-in name (see `psi-ray models`), local HF folder, hub id, or served model name")
    p.add_argument("--backend", default="vllm", help="vllm, hf or openai (default: vllm)")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("-n", type=int, default=1, help="completions per prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--raw", action="store_true", help="send the prompt as plain text, without the chat template")
    p.add_argument("--json", action="store_true", help="one JSON object per completion")
    p.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="openai backend: the endpoint")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="openai backend: env var holding the API key")
    p.add_argument("--allow-insecure-key", action="store_true",
                   help="openai backend: send the key over plain http to a non-loopback host (refused otherwise)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("validate", help="validate job YAML files", description=cmd_validate.__doc__)
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(func=cmd_validate)

    for register in _extra_verbs():
        register(sub)
    return parser


def _extra_verbs():
    """Verbs defined beside the stages they drive (kept out of this file to keep it short)."""
    from psi_ray import cli_pipeline

    return cli_pipeline.REGISTER


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except PsiRayError as exc:
        print(f"psi-ray: error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # bad argument values caught by SamplingParams and friends
        print(f"psi-ray: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("psi-ray: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
