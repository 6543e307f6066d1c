"""Task adapters by name: ``gsm8k``, ``mmlu``, ``generic``."""

from __future__ import annotations

from psi_ray.errors import PsiRayError
from psi_ray.tasks.base import ParseError
from psi_ray.tasks.generic import GenericAdapter
from psi_ray.tasks.gsm8k import GSM8KAdapter
from psi_ray.tasks.mmlu import MMLUAdapter

ADAPTERS = {a.name: a for a in (GSM8KAdapter, MMLUAdapter, GenericAdapter)}

__all__ = ["ADAPTERS", "ParseError", "get_adapter"]


def get_adapter(name: str):
    if name not in ADAPTERS:
        raise PsiRayError(f"unknown task adapter '{name}'; choose one of: {', '.join(ADAPTERS)}")
    return ADAPTERS[name]()
