"""Engine throughput with and without the preloaded CPU libraries (tcmalloc, Intel OpenMP), side by side.

Runs ``bench/engines.py`` in fresh processes (the loader reads ``LD_PRELOAD`` only at process start), the two
settings alternating round by round on the same machine state, and prints the on/off ratio of output tokens/s
per engine. The libraries are those engine actors get (``psi_ray.runtime.engine_preload``).
Run: ``python bench/preload.py [--rounds 1] [--prompts 32]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def engines_run(preload: list[str], prompts: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    if preload:
        env["LD_PRELOAD"] = ":".join(preload)
    out = subprocess.run([sys.executable, str(HERE / "engines.py"), "--prompts", str(prompts)], env=env,
                         capture_output=True, text=True, check=True).stdout
    return {r["backend"]: r["tokens_per_s"] for r in json.loads(out.strip().splitlines()[-1])["engines"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--prompts", type=int, default=32)
    args = ap.parse_args()
    from psi_ray.runtime import engine_preload

    libs = engine_preload()
    if not libs:
        sys.exit("nothing to preload here (install libtcmalloc-minimal4 and intel-openmp, or this is a GPU machine)")
    runs = {"off": [], "on": []}
    for _ in range(args.rounds):
        runs["off"].append(engines_run([], args.prompts))
        runs["on"].append(engines_run(libs, args.prompts))
    print(f"\npreloaded: {', '.join(libs)}")
    ratios = {}
    for engine in ("vllm", "hf"):
        off = [r[engine] for r in runs["off"]]
        on = [r[engine] for r in runs["on"]]
        ratios[engine] = round(sum(on) / sum(off), 2)
        print(f"{engine:<5} off {off} tok/s   on {on} tok/s   on/off {ratios[engine]}x")
    print(json.dumps({"preload": libs, "runs": runs, "on_over_off": ratios}))


if __name__ == "__main__":
    main()
