"""What a task adapter provides: reading seeds, showing examples to a model, parsing and checking outputs.

Adapters own everything task-specific so the stages stay task-neutral. Rows use the columns
``seed_id, instruction, response, answer`` (``answer`` may be empty for tasks without one).
"""

from __future__ import annotations

import csv
import io
import json
import re
import stat
from pathlib import Path

from psi_ray.errors import PsiRayError, last_line

SEED_COLUMNS = ["seed_id", "instruction", "response", "answer"]
MAX_SEED_BYTES = 512 << 20  # seeds are a handful of examples; even a large seed set is far below this


class ParseError(ValueError):
    """A model output that does not have the task's shape; becomes the row's ``error``."""


def read_records(path: Path, kind: str) -> list[dict]:
    """Rows of a jsonl, csv or parquet seed file (or every such file in a folder, sorted by name).

    Read as written: JSONL lines end at ``\n`` only (a U+2028 inside a string is text, not a line break), a
    quoted CSV field keeps its newlines, a UTF-8 byte-order mark is dropped. A ``.json`` file may also hold
    one JSON array of objects. Devices, pipes and files over ``MAX_SEED_BYTES`` are refused before a read
    (``task.seeds: /dev/zero`` would otherwise read forever).
    """
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
    try:
        return _read_checked(f)
    except OSError as exc:  # a broken link, no permission, a file removed meanwhile
        raise PsiRayError(f"{f}: cannot read it ({exc.strerror or type(exc).__name__})") from None


def _read_checked(f: Path) -> list[dict]:
    info = f.stat()
    if not stat.S_ISREG(info.st_mode):
        raise PsiRayError(f"{f}: not a regular file (a device, pipe or socket); name a .jsonl, .csv or "
                          ".parquet file")
    if info.st_size > MAX_SEED_BYTES:
        raise PsiRayError(f"{f}: {info.st_size / 2**20:.0f} MiB; seed files are at most "
                          f"{MAX_SEED_BYTES >> 20} MiB")
    if f.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.read_table(f).to_pylist()
        except pa.ArrowException as exc:
            raise PsiRayError(f"{f}: not a readable Parquet file: {last_line(exc)}") from None
    with open(f, "rb") as fh:
        data = fh.read(MAX_SEED_BYTES + 1)  # bounded even where st_size lies (/proc files report 0)
    if len(data) > MAX_SEED_BYTES:
        raise PsiRayError(f"{f}: more than {MAX_SEED_BYTES >> 20} MiB; seed files are at most that")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PsiRayError(f"{f}: not valid UTF-8 (byte {exc.start})") from None
    if f.suffix == ".csv":
        return _read_csv(f, text)
    if f.suffix == ".json" and text.lstrip().startswith("["):  # one array of objects
        items = _json(f, 1, text)
        return _objects(f, [(1, item) for item in items] if isinstance(items, list) else [(1, items)])
    return _objects(f, [(n, _json(f, n, line)) for n, line in enumerate(text.split("\n"), 1) if line.strip()])


def _json(f: Path, n: int, text: str):
    try:
        return json.loads(text, parse_constant=_no_constant)
    except ValueError as exc:  # JSONDecodeError, or NaN/Infinity (not JSON)
        raise PsiRayError(f"{f}:{n}: not a JSON object: {getattr(exc, 'msg', exc)}") from None


def _objects(f: Path, items: list[tuple[int, object]]) -> list[dict]:
    for n, item in items:
        if not isinstance(item, dict):
            raise PsiRayError(f"{f}:{n}: expected a JSON object per line (or one array of objects in a "
                              ".json file)")
    return [item for _, item in items]


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON value")


def _read_csv(f: Path, text: str) -> list[dict]:
    reader = csv.DictReader(io.StringIO(text, newline=""))  # newline="": quoted fields keep their newlines
    rows = []
    try:
        for row in reader:
            if None in row:
                n, header = len(reader.fieldnames) + len(row[None]), len(reader.fieldnames)
                raise PsiRayError(f"{f}:{reader.line_num}: {n} fields, the header has {header}")
            rows.append(row)
    except csv.Error as exc:
        raise PsiRayError(f"{f}:{reader.line_num}: malformed CSV: {exc}") from None
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
