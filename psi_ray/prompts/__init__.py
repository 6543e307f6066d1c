"""Jinja templates for the model-facing stages: ``expand``, ``principles``, ``summarize``, ``instances``,
``verify``. Example labels ("Question:"/"Answer:", "Instruction:"/"Response:") come from the task adapter.

Each renders the user message of one chat prompt; ``psi-ray show-prompt STAGE`` prints one so a person can
read it. Golden tests pin their text.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from psi_ray.errors import PsiRayError

STAGES = ("expand", "principles", "summarize", "instances", "verify")


@cache
def _env():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )


def render(stage: str, **context) -> str:
    """The user message for ``stage`` (one of :data:`STAGES`)."""
    if stage not in STAGES:
        raise PsiRayError(f"unknown prompt '{stage}'; choose one of: {', '.join(STAGES)}")
    return _env().get_template(f"{stage}.j2").render(**context).strip()


def chat(stage: str, **context) -> list[dict[str, str]]:
    """``render`` wrapped as a one-turn chat prompt."""
    return [{"role": "user", "content": render(stage, **context)}]
