"""GSM8K: grade-school math word problems with worked answers ending in ``#### <number>``.

Seeds are jsonl with ``question`` and ``answer``. The check verifies content, not only format: every equation
the solution writes is recomputed with exact, bounded arithmetic (calculator steps ``<<a op b=c>>`` and
equations written inline, see :mod:`psi_ray.tasks.arith`), and ``#### n`` must equal the solution's last
computed result where it has one. Reject reasons: ``no_final_answer``, ``bad_calculation``,
``wrong_equation``, ``answer_mismatch``, ``question_too_short``, ``label_leak``, ``too_long``.
"""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

from psi_ray.errors import PsiRayError
from psi_ray.tasks import arith
from psi_ray.tasks.base import leaked_label, read_records, require_columns, split_labelled

# Linear-time: one digit run, then optional comma groups and decimals (no nested quantifiers over digits).
FINAL = re.compile(r"####\s*\$?\s*(-?\d[\d,]{0,40}(?:\.\d{1,20})?)\s*$")
STEP = arith.STEP
LAST_NUMBER = re.compile(r"-?\$?\d[\d,]{0,30}(?:\.\d{1,10})?")
MAX_RESPONSE_CHARS = 8000  # a worked solution is a few hundred characters; longer is runaway output


def final_answer(response: str) -> str | None:
    """The number after ``####`` on the last line, without commas; None when there is none."""
    tail = response.strip()[-80:]
    m = FINAL.search(tail)
    return m.group(1).replace(",", "") if m else None


def evaluate(expr: str) -> Fraction:
    """Exact value of a calculator expression (see :func:`psi_ray.tasks.arith.evaluate`)."""
    return arith.evaluate(expr)


class GSM8KAdapter:
    name = "gsm8k"
    description = "grade-school math word problems solved step by step"
    builtin_seeds = "builtin:gsm8k_seeds.jsonl"  # shipped in psi_ray/data (see its README)
    reject_reasons = (  # what check() can return, so the filter manifest lists zeros too
        "too_long", "no_final_answer", "question_too_short", "label_leak", "bad_calculation",
        "wrong_equation", "answer_mismatch",
    )
    has_answer = True  # answer agreement (stage 5b) can compare answers
    labels = ("Question:", "Answer:")  # an example is "Question: ...\nAnswer: ..."
    first_label = labels[0]  # the model's answer is begun with it, so a small model keeps the format
    answer_format = (
        "The answer explains each step; every calculation is written as <<expression=result>>, "
        "and the last line is '#### ' followed by the final number only."
    )
    solve_format = "Solve it step by step and end with a last line '#### ' followed by the final number only."

    def load_seeds(self, path: Path) -> list[dict]:
        rows = read_records(path, self.name)
        require_columns(rows, ["question", "answer"], path, self.name)
        out = []
        for i, row in enumerate(rows):
            ans = final_answer(str(row["answer"]))
            if ans is None:
                raise PsiRayError(f"{path}: row {i + 1}: GSM8K answer has no final '#### <number>' line")
            out.append({"seed_id": f"seed-{i:05d}", "instruction": str(row["question"]).strip(),
                        "response": str(row["answer"]).strip(), "answer": ans})
        return out

    def format_example(self, instruction: str, response: str) -> str:
        return f"{self.labels[0]} {instruction}\n{self.labels[1]} {response}"

    def parse(self, text: str) -> tuple[str, str]:
        question, answer = split_labelled(text, *self.labels)
        lines = answer.splitlines()
        for i, line in enumerate(lines):  # drop anything the model wrote after the final answer line
            if line.strip().startswith("####"):
                lines = lines[: i + 1]
                break
        return question, "\n".join(lines).strip()

    def answer_of(self, response: str) -> str | None:
        """The final number of a solution, normalized (``1,000.0`` → ``1000``), for answer agreement: the
        ``#### n`` line, or else the last number written (lm-eval's flexible extraction), because a verifier
        asked to solve a question does not always end with the ``####`` line."""
        ans = final_answer(response)
        if ans is None:
            numbers = LAST_NUMBER.findall(response[-400:])
            ans = numbers[-1] if numbers else None
        value = arith.parse_number(ans) if ans is not None else None
        return None if value is None else str(value)

    def check(self, instruction: str, response: str) -> str | None:
        """None when the instance is valid, else the reject reason."""
        if len(response) > MAX_RESPONSE_CHARS or len(instruction) > MAX_RESPONSE_CHARS:
            return "too_long"
        final = final_answer(response)
        if final is None:
            return "no_final_answer"
        if len(instruction) < 20:
            return "question_too_short"
        if leaked_label(instruction, self.labels) or leaked_label(response, self.labels):
            return "label_leak"
        return check_solution(response, Fraction(final))


def check_solution(solution: str, final: Fraction) -> str | None:
    """Recompute every equation of ``solution``; compare ``final`` with the last computed result.

    The last computed result is the last equation on the last line that writes an ``=`` (when that line's
    equation could be read; prose like "23 total meters minus the rest = 10" is left unchecked). ``final``
    may be that result, or it times or divided by 100 (a share written as a percentage, dollars as cents).
    """
    if solution.count("<<") != len(STEP.findall(solution)):
        return "bad_calculation"  # a calculator step that is malformed or of runaway length
    last_results: list[Fraction] = []
    for line in solution.split("\n"):
        if line.lstrip().startswith("####"):
            break
        results = []
        for eq in arith.equations(line):
            try:
                if not arith.holds(eq):
                    return "wrong_equation"
            except arith.ArithmeticLimitError:
                return "bad_calculation"
            except arith.ArithmeticCheckError:
                if eq.source == "step":  # a calculator annotation must compute
                    return "bad_calculation"
                continue  # prose that only looks like an equation ("1 + (Michael's age - 1) x 2 = 15")
            value = arith.result_of(eq)
            if value is not None:
                results.append(value)
        if "=" in line:
            last_results = results
    if last_results and final not in (last_results[-1], last_results[-1] * 100, last_results[-1] / 100):
        return "answer_mismatch"
    return None
