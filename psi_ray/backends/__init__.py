"""A lazy registry of generation backends: ``vllm``, ``hf`` and ``openai``.

Each lives in its own module, imported only when asked for, so ``import psi_ray`` stays light. An unknown
name raises a :class:`~psi_ray.errors.PsiRayError` that lists the valid ones.
"""

from __future__ import annotations

import importlib

from psi_ray.backends.base import Backend, Generation, Prompt, SamplingParams
from psi_ray.errors import PsiRayError

_REGISTRY: dict[str, str] = {
    "vllm": "psi_ray.backends.vllm:VLLMBackend",
    "hf": "psi_ray.backends.hf:HFBackend",
    "openai": "psi_ray.backends.openai:OpenAIBackend",
}

__all__ = ["Backend", "Generation", "Prompt", "SamplingParams", "backend_names", "load_backend"]


def backend_names() -> list[str]:
    return sorted(_REGISTRY)


def backend_class(name: str) -> type:
    """The class registered under ``name``, imported on first use."""
    if name not in _REGISTRY:
        raise PsiRayError(f"unknown backend '{name}'; choose one of: {', '.join(backend_names())}")
    module, _, attr = _REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def load_backend(name: str, model: str, **options) -> Backend:
    """Build backend ``name`` for ``model`` (a built-in name, a local HF folder, a hub id, or, for
    ``openai``, the served model's name)."""
    return backend_class(name)(model=model, **options)
