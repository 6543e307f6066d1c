"""Print pip's configured package sources as ``uv pip install`` flags, so uv resolves what pip would here.

``make install`` installs with uv (the same 246 packages as pip on the CPU stack, in 81 s instead of ~300 s)
but uv reads no pip configuration: a machine whose wheels come from pip's ``find-links``, extra indexes or a
``constraint`` file would otherwise resolve differently. This reads ``pip config list`` (config files and
``PIP_*`` variables, later ones overriding earlier ones, as pip does) and prints the matching flags; pip's
rule of taking the best version from every index becomes ``--index-strategy unsafe-best-match``.
Run with the venv's Python: ``python tools/uv_flags.py``.
"""

from __future__ import annotations

import ast
import shlex
import subprocess
import sys

# pip option -> (uv flag, takes a whitespace-separated list)
FLAGS = {
    "index-url": ("--index-url", False),
    "extra-index-url": ("--extra-index-url", True),
    "find-links": ("--find-links", True),
    "constraint": ("--constraint", True),
}


def pip_config(lines: list[str]) -> dict[str, str]:
    """``section.key='value'`` lines of ``pip config list`` -> {key: value} for the install command; a later
    line overrides an earlier one (pip lists global and user files first, environment variables last)."""
    found: dict[str, str] = {}
    for line in lines:
        name, sep, raw = line.partition("=")
        section, _, key = name.rpartition(".")
        if not sep or section not in ("global", "install", ":env:"):
            continue
        try:
            found[key] = str(ast.literal_eval(raw))
        except (ValueError, SyntaxError):
            found[key] = raw.strip("'\"")
    return found


def uv_flags(config: dict[str, str]) -> list[str]:
    flags = ["--index-strategy", "unsafe-best-match"]
    for key, (flag, is_list) in FLAGS.items():
        for value in (config.get(key, "").split() if is_list else [config.get(key, "")]):
            if value:
                flags += [flag, value]
    if config.get("no-index", "").lower() in ("1", "true", "yes", "on"):
        flags.append("--no-index")
    return flags


def main() -> None:
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    print(shlex.join(uv_flags(pip_config(out.stdout.splitlines()))))


if __name__ == "__main__":
    main()
