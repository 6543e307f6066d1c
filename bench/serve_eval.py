"""One model's GSM8K eval as the eval stage runs it, per serving engine, side by side in one run: the model is
served (engine start included, Ray already up), lm-eval scores the first ``--limit`` GSM8K test questions through
the chat endpoint at the eval stage's concurrency, and the app is stopped. Prints each engine's seconds and
scores, and the ratio to the first engine.

Run: ``python bench/serve_eval.py`` (``--engines hf,vllm --limit 50 --max-gen-tokens 256 --concurrency 64``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="built-in name or HF folder")
    ap.add_argument("--engines", default="hf,vllm", help="serving engines, comma-separated, run in this order")
    ap.add_argument("--limit", type=int, default=50, help="first N GSM8K test questions")
    ap.add_argument("--max-gen-tokens", type=int, default=256)
    ap.add_argument("--concurrency", type=int, default=64)
    args = ap.parse_args()

    from psi_ray.evaluate import evaluate
    from psi_ray.models import resolve_model
    from psi_ray.runtime import init_ray

    init_ray()
    model, rows = resolve_model(args.model), []
    for engine in args.engines.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            report = evaluate(model, ["gsm8k"], tmp, limit=args.limit, max_gen_tokens=args.max_gen_tokens,
                              concurrency=args.concurrency, engine=engine)
            rows.append((engine, time.perf_counter() - t0, report["tasks"]["gsm8k"]))
    first = rows[0][1]
    print(f"\nGSM8K eval of {args.model}, {args.limit} questions, {args.max_gen_tokens} tokens, concurrency "
          f"{args.concurrency}, engine start included")
    print("| engine | seconds | vs first | strict | flexible |\n|---|---|---|---|---|")
    for engine, seconds, scores in rows:
        print(f"| {engine} | {seconds:.1f} | {first / seconds:.2f}x | {scores['exact_match,strict-match']:.2f} | "
              f"{scores['exact_match,flexible-extract']:.2f} |")
    print(json.dumps({e: {"seconds": round(s, 1), **sc} for e, s, sc in rows}))


if __name__ == "__main__":
    main()
