"""GSM8K: grade-school math word problems with worked answers ending in ``#### <number>``.

Seeds are jsonl with ``question`` and ``answer``. The check verifies the final ``#### n`` and recomputes
every calculator step ``<<a op b=c>>`` with exact arithmetic.
"""

from __future__ import annotations

import ast
import operator
import re
from fractions import Fraction
from pathlib import Path

from psi_ray.errors import PsiRayError
from psi_ray.tasks.base import read_records, require_columns, split_labelled

FINAL = re.compile(r"####\s*\$?\s*(-?[\d,]*\.?\d+)\s*$")
STEP = re.compile(r"<<([^<>=]+)=([^<>]*)>>")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _eval(node) -> Fraction:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return Fraction(str(node.value))
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.left), _eval(node.right))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_eval(node.operand)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd):
        return _eval(node.operand)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        exp = _eval(node.right)
        if exp.denominator != 1 or abs(exp) > 10:
            raise ValueError("exponent")
        return _eval(node.left) ** int(exp)
    raise ValueError("unsupported expression")


def evaluate(expr: str) -> Fraction:
    """Exact value of a calculator expression (numbers, + - * / ** and parentheses only)."""
    cleaned = expr.replace(",", "").replace("x", "*").replace("×", "*").replace("÷", "/").replace("$", "")
    return _eval(ast.parse(cleaned.strip(), mode="eval"))


def final_answer(response: str) -> str | None:
    m = FINAL.search(response.strip())
    return m.group(1).replace(",", "") if m else None


class GSM8KAdapter:
    name = "gsm8k"
    description = "grade-school math word problems solved step by step"
    first_label = "Question:"  # how an example starts; the model's answer is begun with it
    answer_format = (
        "The answer explains each step; every calculation is written as <<expression=result>>, "
        "and the last line is '#### ' followed by the final number only."
    )

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
        return f"Question: {instruction}\nAnswer: {response}"

    def parse(self, text: str) -> tuple[str, str]:
        question, answer = split_labelled(text, "Question", "Answer")
        lines = answer.splitlines()
        for i, line in enumerate(lines):  # drop anything the model wrote after the final answer line
            if line.strip().startswith("####"):
                lines = lines[: i + 1]
                break
        return question, "\n".join(lines).strip()

    def check(self, instruction: str, response: str) -> str | None:
        """None when the instance is valid, else the reject reason."""
        if final_answer(response) is None:
            return "no_final_answer"
        for expr, result in STEP.findall(response):
            try:
                if evaluate(expr) != evaluate(result):
                    return "wrong_calculation"
            except (ValueError, SyntaxError, ZeroDivisionError, TypeError, OverflowError):
                return "bad_calculation"
        if len(instruction) < 20:
            return "question_too_short"
        return None
