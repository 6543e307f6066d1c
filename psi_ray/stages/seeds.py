"""Stage 0, seeds: read the seed file through the task adapter and check it can feed the job.

Writes ``seed_id, instruction, response, answer``. Every check runs before any model loads, so bad seeds
fail fast: missing or empty file, wrong columns, invalid UTF-8, task format errors (e.g. GSM8K answers
without ``####``), and more principle subsets than the seeds allow.
"""

from __future__ import annotations

from math import comb

from psi_ray.errors import PsiRayError
from psi_ray.tasks import get_adapter

COLUMNS = ["seed_id", "instruction", "response", "answer"]


def load(cfg) -> list[dict]:
    """The job's seeds, validated against the adapter and the principle-subset settings."""
    adapter = get_adapter(cfg.task.adapter)
    rows = adapter.load_seeds(cfg.path(cfg.task.seeds))
    if cfg.task.num_seeds:
        rows = rows[: cfg.task.num_seeds]
    if cfg.method == "psi":
        check_subsets(len(rows), cfg.principles.subsets, cfg.principles.subset_size)
    return rows


def check_subsets(num_seeds: int, subsets: int, subset_size: int) -> None:
    """T distinct subsets of k examples must exist among the seeds (variants are not counted on)."""
    if subset_size > num_seeds:
        raise PsiRayError(
            f"principles.subset_size={subset_size} is larger than the {num_seeds} seeds available"
        )
    if subsets > comb(num_seeds, subset_size):
        raise PsiRayError(
            f"principles.subsets={subsets}: only {comb(num_seeds, subset_size)} distinct subsets of "
            f"{subset_size} exist among {num_seeds} seeds"
        )
