"""Generic instruction following: jsonl with ``instruction`` and ``response``; any non-empty pair is valid."""

from __future__ import annotations

from pathlib import Path

from psi_ray.tasks.base import read_records, require_columns, split_labelled


class GenericAdapter:
    name = "generic"
    description = "instructions and helpful responses"
    first_label = "Instruction:"  # how an example starts; the model's answer is begun with it
    answer_format = "The response answers the instruction completely."

    def load_seeds(self, path: Path) -> list[dict]:
        rows = read_records(path, self.name)
        require_columns(rows, ["instruction", "response"], path, self.name)
        return [{"seed_id": f"seed-{i:05d}", "instruction": str(r["instruction"]).strip(),
                 "response": str(r["response"]).strip(), "answer": ""} for i, r in enumerate(rows)]

    def format_example(self, instruction: str, response: str) -> str:
        return f"Instruction: {instruction}\nResponse: {response}"

    def parse(self, text: str) -> tuple[str, str]:
        return split_labelled(text, "Instruction", "Response")

    def check(self, instruction: str, response: str) -> str | None:
        if len(instruction) < 10:
            return "instruction_too_short"
        if len(response) < 2:
            return "response_too_short"
        return None
