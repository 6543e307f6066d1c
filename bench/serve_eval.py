"""One model's GSM8K eval as the eval stage runs it: the model is served (engine start included, Ray already
up), lm-eval scores the first ``--limit`` GSM8K test questions through the chat endpoint at the eval stage's
concurrency, and the app is stopped. Prints the seconds, the start's share and the scores. (At 44a9cf6 this
bench ran psi-ray's former own transformers deployment beside vLLM in one run: the README's serving table.)

Run: ``python bench/serve_eval.py`` (``--limit 50 --max-gen-tokens 256 --concurrency 64``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="built-in name or HF folder")
    ap.add_argument("--limit", type=int, default=50, help="first N GSM8K test questions")
    ap.add_argument("--max-gen-tokens", type=int, default=256)
    ap.add_argument("--concurrency", type=int, default=64)
    args = ap.parse_args()

    from psi_ray import serve
    from psi_ray.evaluate import evaluate
    from psi_ray.models import resolve_model
    from psi_ray.runtime import init_ray

    init_ray()
    started: list[float] = []
    original = serve.start

    def timed_start(*a, **kw):  # how much of the eval is the engine's start
        t = time.perf_counter()
        url = original(*a, **kw)
        started.append(time.perf_counter() - t)
        return url

    serve.start = timed_start
    try:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            report = evaluate(resolve_model(args.model), ["gsm8k"], tmp, limit=args.limit,
                              max_gen_tokens=args.max_gen_tokens, concurrency=args.concurrency)
            seconds = time.perf_counter() - t0
    finally:
        serve.start = original
    scores = report["tasks"]["gsm8k"]
    print(f"\nGSM8K eval of {args.model}: {args.limit} questions, {args.max_gen_tokens} tokens, concurrency "
          f"{args.concurrency}: {seconds:.1f} s, of which the engine start {started[0]:.1f} s; strict "
          f"{scores['exact_match,strict-match']:.2f}, flexible {scores['exact_match,flexible-extract']:.2f}")
    print(json.dumps({"seconds": round(seconds, 1), "start_s": round(started[0], 1), **scores}))


if __name__ == "__main__":
    main()
