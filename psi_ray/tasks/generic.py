"""Generic instruction following: jsonl with ``instruction`` and ``response``.

There is no answer to recompute, so the check guards the shape of the content: no example label of any
adapter inside the instruction or response (the model ran on into another example, or copied the prompt's
scaffolding), no response that only echoes the instruction, no runaway repetition. Reject reasons:
``instruction_too_short``, ``response_too_short``, ``label_leak``, ``echo``, ``repetition``, ``too_long``.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from psi_ray.tasks.base import leaked_label, read_records, require_columns, split_labelled

WORD = re.compile(r"\w+")
MAX_CHARS = 8000
MAX_TRIGRAM_REPEATS = 4  # the same word 3-gram written this many times is a loop, not an answer


def repetitive(text: str) -> bool:
    """Whether ``text`` loops: one word 3-gram at least MAX_TRIGRAM_REPEATS times, or a line repeated 3 times."""
    words = WORD.findall(text.lower())
    grams = Counter(zip(words, words[1:], words[2:], strict=False))
    if grams and grams.most_common(1)[0][1] >= MAX_TRIGRAM_REPEATS:
        return True
    lines = Counter(line.strip().lower() for line in text.splitlines() if line.strip())
    return bool(lines) and lines.most_common(1)[0][1] >= 3


class GenericAdapter:
    name = "generic"
    description = "instructions and helpful responses"
    builtin_seeds = "builtin:generic_seeds.jsonl"  # shipped in psi_ray/data (see its README)
    reject_reasons = (  # what check() can return, so the filter manifest lists zeros too
        "too_long", "instruction_too_short", "response_too_short", "label_leak", "echo", "repetition",
    )
    has_answer = False  # answer agreement (stage 5b) can compare answers
    labels = ("Instruction:", "Response:")  # an example is "Instruction: ...\nResponse: ..."
    first_label = labels[0]  # the model's answer is begun with it, so a small model keeps the format
    answer_format = "The response answers the instruction completely."
    solve_format = "Answer it completely."

    def load_seeds(self, path: Path) -> list[dict]:
        rows = read_records(path, self.name)
        require_columns(rows, ["instruction", "response"], path, self.name)
        return [{"seed_id": f"seed-{i:05d}", "instruction": str(r["instruction"]).strip(),
                 "response": str(r["response"]).strip(), "answer": ""} for i, r in enumerate(rows)]

    def format_example(self, instruction: str, response: str) -> str:
        return f"{self.labels[0]} {instruction}\n{self.labels[1]} {response}"

    def parse(self, text: str) -> tuple[str, str]:
        return split_labelled(text, *self.labels)

    def answer_of(self, response: str) -> str | None:
        """Free text has no checkable answer: answer agreement does not apply."""
        return None

    def check(self, instruction: str, response: str) -> str | None:
        if len(instruction) > MAX_CHARS or len(response) > MAX_CHARS:
            return "too_long"
        if len(instruction) < 10:
            return "instruction_too_short"
        if len(response) < 2:
            return "response_too_short"
        if leaked_label(instruction) or leaked_label(response):
            return "label_leak"
        norm_i, norm_r = " ".join(WORD.findall(instruction.lower())), " ".join(WORD.findall(response.lower()))
        if norm_r == norm_i or (len(norm_r) > 20 and norm_r in norm_i):
            return "echo"
        if repetitive(instruction) or repetitive(response):
            return "repetition"
        return None
