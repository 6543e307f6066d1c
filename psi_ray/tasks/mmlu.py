"""MMLU-style multiple choice: a question, four choices A–D and the index of the right one.

Seeds are csv files with ``question,choice0,choice1,choice2,choice3,answer`` (a folder of them, as in
MMLU's dev split). A response is ``Answer: X`` with X in A–D.
"""

from __future__ import annotations

import re
from pathlib import Path

from psi_ray.errors import PsiRayError
from psi_ray.tasks.base import ParseError, leaked_label, read_records, require_columns

LETTERS = "ABCD"
CHOICE = re.compile(r"^\s*\(?([A-D])[.)]\s*(.+?)\s*$", re.MULTILINE)
ANSWER = re.compile(r"Answer\s*:\s*\(?([A-D])\b", re.IGNORECASE)


class MMLUAdapter:
    name = "mmlu"
    description = "multiple-choice knowledge questions with four options"
    builtin_seeds = "builtin:mmlu_dev_seeds.csv"  # shipped in psi_ray/data (see its README)
    reject_reasons = (  # what check() can return, so the filter manifest lists zeros too
        "not_four_choices", "duplicate_choices", "no_answer_letter", "question_too_short", "label_leak",
    )
    has_answer = True  # answer agreement (stage 5b) can compare answers
    labels = ("Question:", "Answer:")  # an example is "Question: ...\nA. ...\nD. ...\nAnswer: X"
    first_label = labels[0]  # the model's answer is begun with it, so a small model keeps the format
    answer_format = "The question lists four options A. to D., each on its own line, then 'Answer: ' and one letter."
    solve_format = "Think briefly, then end with a last line 'Answer: ' followed by one letter A, B, C or D."

    def load_seeds(self, path: Path) -> list[dict]:
        rows = read_records(path, self.name)
        cols = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]
        require_columns(rows, cols, path, self.name)
        out = []
        for i, row in enumerate(rows):
            idx = str(row["answer"]).strip()
            if idx not in ("0", "1", "2", "3"):
                raise PsiRayError(f"{path}: row {i + 1}: answer must be 0-3, got {row['answer']!r}")
            idx = int(idx)
            choices = "\n".join(f"{LETTERS[j]}. {str(row[f'choice{j}']).strip()}" for j in range(4))
            out.append({"seed_id": f"seed-{i:05d}", "instruction": f"{str(row['question']).strip()}\n{choices}",
                        "response": f"Answer: {LETTERS[idx]}", "answer": LETTERS[idx]})
        return out

    def format_example(self, instruction: str, response: str) -> str:
        return f"Question: {instruction}\n{response}"

    def parse(self, text: str) -> tuple[str, str]:
        m = ANSWER.search(text)
        if not m:
            raise ParseError("no 'Answer: <A-D>'")
        body = re.sub(r"^\s*Question\s*:\s*", "", text[: m.start()].strip(), flags=re.IGNORECASE)
        if not body:
            raise ParseError("empty question")
        return body.strip(), f"Answer: {m.group(1).upper()}"

    def answer_of(self, response: str) -> str | None:
        """The last answer letter a response gives, for answer agreement."""
        found = ANSWER.findall(response)
        return found[-1].upper() if found else None

    def check(self, instruction: str, response: str) -> str | None:
        """None when valid: four choices A-D, distinct and non-empty, an answer letter, a real question."""
        found = CHOICE.findall(instruction)
        if [c for c, _ in found] != list(LETTERS):
            return "not_four_choices"
        texts = [" ".join(t.lower().split()) for _, t in found]
        if any(not t for t in texts) or len(set(texts)) != 4:
            return "duplicate_choices"
        if not ANSWER.search(response):
            return "no_answer_letter"
        stem = instruction[: CHOICE.search(instruction).start()].strip()
        if len(stem) < 10:
            return "question_too_short"
        if leaked_label(stem, ("Question:", "Answer:", "Instruction:", "Response:")):
            return "label_leak"
        return None
