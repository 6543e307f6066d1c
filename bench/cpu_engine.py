"""Where a CPU vLLM engine's time goes on the default job's instance prompts, and what running it in-process saves.

Starts the ``vllm`` backend the way engine actors do (their preloaded libraries, the job's generator options)
in a fresh process per mode, side by side:

- ``processes``: vLLM's default on CPU, an engine-core process and a worker process (``PSI_RAY_VLLM_IN_PROCESS=0``);
- ``in-process``: psi-ray's default on CPU, the engine core and its worker in the calling process.

For each it prints the engine start, a prefill-only pass (``max_tokens=1``, prefix cache emptied first), the
full pass with the job's sampling, and output tokens/s; the in-process mode also counts the prompt tokens the
engine really computed (the rest came from its prefix cache: prompts repeat ``samples_per_prompt`` times).
Run: ``python bench/cpu_engine.py [--instances 128] [--job jobs/gsm8k_cpu.yaml]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
MODES = {"processes": "0", "in-process": "1"}


def one_mode(job: str, instances: int) -> dict:
    """Measure the engine of this process's mode (``PSI_RAY_VLLM_IN_PROCESS``) and return its figures."""
    sys.path.insert(0, str(HERE))
    from pipeline import plan

    from psi_ray.backends import load_backend
    from psi_ray.config import load_config

    cfg = load_config(job)
    prompts = [r["prompt"] for r in plan(cfg, instances)]
    sampling = cfg.instances.sampling.params()
    t0 = time.perf_counter()
    backend = load_backend("vllm", cfg.generator.model, **cfg.generator.options)
    out = {"start_s": round(time.perf_counter() - t0, 1)}
    computed = scheduled_tokens(backend)
    for name, params in (("prefill", dataclasses.replace(sampling, max_tokens=1)), ("full", sampling)):
        backend.llm.reset_prefix_cache()
        computed.clear()
        t0 = time.perf_counter()
        gens = backend.generate(prompts, params)
        out[f"{name}_s"] = round(time.perf_counter() - t0, 1)
        if name == "prefill":
            out["prompt_tokens"] = sum(g.prompt_tokens for g in gens)
            if computed:
                out["prompt_tokens_computed"] = sum(computed)
        else:
            out["output_tokens"] = sum(g.output_tokens for g in gens)
            out["tokens_per_s"] = round(out["output_tokens"] / out["full_s"], 1)
    backend.close()
    return out


def scheduled_tokens(backend) -> list[int]:
    """A list the in-process engine's scheduler appends each step's token count to (stays empty when the
    engine runs in other processes, where its scheduler cannot be reached)."""
    seen: list[int] = []
    core = getattr(backend.llm.llm_engine.engine_core, "engine_core", None)
    if core is None:
        return seen
    schedule = core.scheduler.schedule

    def counted(*args, **kwargs):
        out = schedule(*args, **kwargs)
        seen.append(out.total_num_scheduled_tokens)
        return out

    core.scheduler.schedule = counted
    return seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--job", default="jobs/gsm8k_cpu.yaml")
    ap.add_argument("--instances", type=int, default=128)
    ap.add_argument("--mode", choices=list(MODES), help=argparse.SUPPRESS)  # one mode, in a child
    args = ap.parse_args()
    if args.mode:
        print("RESULT " + json.dumps(one_mode(args.job, args.instances)), flush=True)
        return
    from psi_ray.runtime import cuda_available, engine_actor_env

    if cuda_available():
        sys.exit("this bench compares CPU engine modes; on a GPU vLLM keeps its own processes")
    results = {}
    for mode, flag in MODES.items():  # each in a fresh process, one after the other
        env = {**os.environ, **engine_actor_env(), "PSI_RAY_VLLM_IN_PROCESS": flag}
        done = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--mode", mode], env=env,
                              capture_output=True, text=True)
        line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{mode}: the engine run failed:\n{done.stderr[-2000:]}")
        results[mode] = json.loads(line[7:])
    print(f"\n{args.instances} instance prompts of {args.job}")
    print(f"{'mode':<11} {'start s':>8} {'prefill s':>10} {'full s':>7} {'out tok':>8} {'tok/s':>7}")
    for mode, r in results.items():
        print(f"{mode:<11} {r['start_s']:>8} {r['prefill_s']:>10} {r['full_s']:>7} {r['output_tokens']:>8} "
              f"{r['tokens_per_s']:>7}")
    inp = results["in-process"]
    if "prompt_tokens_computed" in inp:
        print(f"prompt tokens: {inp['prompt_tokens']}, computed {inp['prompt_tokens_computed']} (the rest from the "
              f"prefix cache); prefill {inp['prompt_tokens_computed'] / inp['prefill_s']:.0f} computed tokens/s; "
              f"prefill is {inp['prefill_s'] / inp['full_s']:.0%} of the full pass")
    ratio = inp["tokens_per_s"] / results["processes"]["tokens_per_s"]
    print(f"in-process / processes: {ratio:.2f}x tok/s, start {inp['start_s']} s vs {results['processes']['start_s']} s")
    print(json.dumps({"modes": results, "ratio": round(ratio, 2)}))


if __name__ == "__main__":
    main()
