"""The ``psi-ray`` command line: one verb per job a user does, registered from one flat table (:data:`VERBS`).

Every user-facing failure is a :class:`~psi_ray.errors.PsiRayError`, printed as one line (``psi-ray: error:
...``) with exit status 2; nothing else is caught, so a real bug still shows its traceback. The verbs live
beside what they drive: ``basic`` (models, generate, validate), ``pipeline`` (run, principles, show-prompt),
``loop`` (train, serve, eval), ``report`` and ``cluster`` (submit).
"""

from __future__ import annotations

import argparse
import os
import sys

from psi_ray.cli import basic, cluster, loop, pipeline, report
from psi_ray.errors import PsiRayError

VERBS = (basic.register, pipeline.register, loop.register, report.register, cluster.register)


def build_parser() -> argparse.ArgumentParser:
    from psi_ray import __version__

    parser = argparse.ArgumentParser(
        prog="psi-ray",
        description="PSI on Ray: a large model writes task principles from a few seeds, a small model writes "
        "the dataset guided by them; then train, serve and score a target model.",
    )
    parser.add_argument("--version", action="version", version=f"psi-ray {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    for register in VERBS:
        register(sub)
    return parser


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

