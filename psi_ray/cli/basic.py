"""CLI verbs for trying things by hand: ``models``, ``generate``, ``validate``."""

from __future__ import annotations

import json
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


def register(sub) -> None:
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
