"""The questions each eval task scores, and the guard that a job never scores its own seed questions.

The data rules (``../shared/data/README.md``) say a model is never scored on the questions its data was
seeded from: MMLU dev seeds a job, MMLU test scores it; GSM8K train seeds, GSM8K test scores. This module
reads the eval files shipped in ``psi_ray/evaluate/data`` (the same files the lm-eval task YAMLs point at)
and compares them with a job's seed instructions by normalized question stem. ``psi-ray validate`` and
``psi-ray run`` call :func:`check_eval_not_seeded` before any model loads.

Standard library only: importing this module loads neither lm-eval, torch nor Ray.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

from psi_ray.errors import PsiRayError

DATA = Path(__file__).parent / "data"

EVAL_FILES: dict[str, Path] = {
    "gsm8k": DATA / "gsm8k_test.jsonl",  # tasks/psi_gsm8k.yaml
    "mmlu": DATA / "mmlu_test.jsonl",  # tasks/psi_mmlu.yaml
}

# Where to seed from instead, per task, for the error message.
SEED_FROM = {
    "gsm8k": "GSM8K train → score on GSM8K test",
    "mmlu": "MMLU dev → score on MMLU test",
}

LETTERS = "ABCD"
_WORD = re.compile(r"\w+")
# An MMLU-style instruction: the stem, then four lines "A. …" to "D. …" at the end (the mmlu adapter's shape).
# The greedy stem takes the last such block, so a stem that itself lists "A." lines keeps them.
_CHOICES = re.compile(
    r"^(?P<stem>.*)\n[ \t]*\(?A[.)][ \t].*\n[ \t]*\(?B[.)][ \t].*\n[ \t]*\(?C[.)][ \t].*\n[ \t]*\(?D[.)][ \t].*\Z",
    re.DOTALL,
)


def normalize(text: str) -> str:
    """Lowercase words (``\\w+``) joined by single spaces: punctuation, case and spacing do not count."""
    return " ".join(_WORD.findall(text.lower()))


def _read(task: str) -> list[dict]:
    if task not in EVAL_FILES:
        raise PsiRayError(f"unknown eval task {task!r}; choose from: {', '.join(EVAL_FILES)}")
    with EVAL_FILES[task].open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@cache
def eval_questions(task: str) -> list[str]:
    """The question texts lm-eval scores for ``task``, in file order.

    GSM8K: the ``question`` field. MMLU: the stem followed by its four choices, one per line, as
    ``"stem\\nA. c0\\nB. c1\\nC. c2\\nD. c3"`` (the task's prompt without the trailing ``Answer:``, and the
    mmlu adapter's seed instruction).
    """
    rows = _read(task)
    if task == "mmlu":
        return [_with_choices(r["question"], r["choices"]) for r in rows]
    return [r["question"] for r in rows]


def _with_choices(stem: str, choices: list[str]) -> str:
    lines = [f"{LETTERS[j]}. {str(c).strip()}" for j, c in enumerate(choices)]
    return "\n".join([stem.strip(), *lines])


@cache
def _eval_stems(task: str) -> frozenset[str]:
    """Normalized question stems of ``task``'s eval set (MMLU: without the choices)."""
    stems = (normalize(r["question"]) for r in _read(task))
    return frozenset(s for s in stems if s)


def question_stem(text: str) -> str:
    """The question part of an instruction: an MMLU-style one loses its trailing A–D choice lines."""
    m = _CHOICES.match(text)
    return m.group("stem") if m else text


def seed_overlap(seed_instructions: list[str], tasks: list[str]) -> dict[str, int]:
    """Per task, how many seed instructions have a normalized stem equal to one of its eval questions'."""
    seeds = [s for s in (normalize(question_stem(t)) for t in seed_instructions) if s]
    return {task: sum(s in _eval_stems(task) for s in seeds) for task in tasks}


def check_eval_not_seeded(cfg, seed_rows: list[dict]) -> None:
    """Refuse a job whose eval set scores its own seed questions (only when ``cfg.eval.enabled``).

    ``seed_rows`` are the seed stage's rows (``instruction`` is read). Raises :class:`PsiRayError` naming
    every offending task and its count.
    """
    if not cfg.eval.enabled:
        return
    counts = seed_overlap([r["instruction"] for r in seed_rows], list(cfg.eval.tasks))
    bad = [
        f"eval task {task} scores {n} of this job's {len(seed_rows)} seed questions; "
        f"seed from a split the eval never sees ({SEED_FROM.get(task, 'a train or dev split')})"
        for task, n in counts.items()
        if n
    ]
    if bad:
        raise PsiRayError("; ".join(bad))
