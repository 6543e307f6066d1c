"""What a task adapter provides: reading seeds, showing examples to a model, parsing and checking outputs.

Adapters own everything task-specific so the stages stay task-neutral. Rows use the columns
``seed_id, instruction, response, answer`` (``answer`` may be empty for tasks without one).
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from psi_ray.errors import PsiRayError

SEED_COLUMNS = ["seed_id", "instruction", "response", "answer"]


class ParseError(ValueError):
    """A model output that does not have the task's shape; becomes the row's ``error``."""


def read_records(path: Path, kind: str) -> list[dict]:
    """Rows of a jsonl, csv or parquet seed file (or every such file in a folder, sorted by name)."""
    if not path.exists():
        raise PsiRayError(f"seed file not found: {path}")
    files = sorted(p for p in path.iterdir() if p.suffix in {".jsonl", ".json", ".csv", ".parquet"}) \
        if path.is_dir() else [path]
    if not files:
        raise PsiRayError(f"no .jsonl, .csv or .parquet seed files in {path}")
    rows: list[dict] = []
    for f in files:
        rows.extend(_read_one(f))
    if not rows:
        raise PsiRayError(f"seed file {path} is empty: the {kind} adapter needs at least one seed")
    return rows


def _read_one(f: Path) -> list[dict]:
    if f.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(f).to_pylist()
    try:
        text = f.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PsiRayError(f"{f}: not valid UTF-8 (byte {exc.start})") from None
    if f.suffix == ".csv":
        return list(csv.DictReader(text.splitlines()))
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PsiRayError(f"{f}:{n}: not a JSON object: {exc.msg}") from None
        if not isinstance(row, dict):
            raise PsiRayError(f"{f}:{n}: expected a JSON object per line")
        rows.append(row)
    return rows


def require_columns(rows: list[dict], columns: list[str], path: Path, adapter: str) -> None:
    present = sorted(rows[0].keys())
    missing = [c for c in columns if c not in rows[0]]
    if missing:
        raise PsiRayError(
            f"{path}: the {adapter} adapter needs columns {columns}; missing {missing}, present {present}"
        )
    for i, row in enumerate(rows):
        for c in columns:
            if row.get(c) in (None, ""):
                raise PsiRayError(f"{path}: row {i + 1} has an empty '{c}'")


EXAMPLE_LABELS = ("Question:", "Answer:", "Instruction:", "Response:")  # every adapter's example labels
_LABEL = re.compile(r"(?<![\w-])(Question|Answer|Instruction|Response|Example \d+)\s*:")  # capitalized, as labels are


def leaked_label(text: str, labels: tuple[str, ...] = EXAMPLE_LABELS) -> str | None:
    """The first example label (of ``labels``, or ``Example N:``) written inside ``text``, or None.

    A label inside a parsed instruction or response means the model ran on into another example, or copied
    the prompt's scaffolding ("Please replace \"Question:\"") into the data.
    """
    wanted = {lab.rstrip(":") for lab in labels}
    for m in _LABEL.finditer(text):
        word = m.group(1)
        if word in wanted or word.startswith("Example"):
            return m.group(0)
    return None


def split_labelled(text: str, first: str, second: str) -> tuple[str, str]:
    """Split ``"<first>: ...<second>: ..."`` into its two parts (labels matched case-insensitively)."""
    first, second = re.escape(first.rstrip(":")), re.escape(second.rstrip(":"))
    m = re.search(rf"{first}\s*:\s*(.+?)\n\s*\**{second}\s*\**\s*:\s*(.+)", text, re.DOTALL | re.IGNORECASE)
    if not m:
        raise ParseError(f"no '{first}:' followed by '{second}:'")
    a, b = m.group(1).strip(" *\n"), m.group(2).strip()
    # A model that goes on to write another pair (or "Example 3:"): keep the first one only.
    b = re.split(rf"\n\s*\**(?:{first}|Example \d+)\s*\**\s*:", b, flags=re.IGNORECASE)[0].strip()
    if not a or not b:
        raise ParseError(f"empty '{first}' or '{second}'")
    return a, b
