"""Run one side of a benchmark in a fresh process and read back the figures it prints.

A bench that compares engines or settings side by side runs each in its own process (an engine that ran in a
process leaves threads and memory behind), with its own environment; the child prints ``RESULT <json>``.
"""

from __future__ import annotations

import json
import subprocess
import sys


def child_result(script: str, args: list[str], env: dict | None = None) -> dict:
    """Run ``python script *args`` with ``env``; the JSON of its ``RESULT`` line (a failed child raises)."""
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, check=True,
                         env=env).stdout
    return json.loads(next(x for x in out.splitlines() if x.startswith("RESULT "))[7:])
