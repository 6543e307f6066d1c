"""Stage 2, principles (M_L or a file): low-level principles from T seeded random subsets of k examples.

Reads D_initial (``example_id, instruction, response, valid``); writes one row per listed item:
``principle_id, subset_id, example_ids, text, valid, reject_reason, error, raw_output``. Every item M_L lists
keeps its row; one that fails hygiene (:mod:`psi_ray.stages.hygiene`, plus ``mentions_example`` and
``near_duplicate`` here) has ``valid=False`` and its ``reject_reason``. An output with no list item at all
keeps one row with ``text=None``, the error, and ``reject_reason`` ``parse`` (or ``engine``). With
``principles.source: file`` the rows come from :func:`load_principle_file` and :func:`rows_from_texts`.
Run by ``psi-ray run JOB`` (stage ``02_principles``); ``psi-ray principles RUN`` prints the result.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

from psi_ray import prompts
from psi_ray.errors import PsiRayError
from psi_ray.stages import require_columns
from psi_ray.stages.hygiene import mark_near_duplicates, reject_reason

ITEM = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+(.*\S)\s*$")
STARTED = [{"role": "assistant", "content": "1."}]  # the list is begun for the model, so it writes a list
MAX_CHARS = 200


def sample_subsets(example_ids: list[str], subsets: int, subset_size: int, seed: int) -> list[list[str]]:
    """T distinct subsets of k ids, reproducible from ``seed`` (sorted ids in, so input order does not matter)."""
    pool = sorted(example_ids)
    rng = random.Random(f"principles-{seed}")
    chosen: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()
    attempts = 0
    while len(chosen) < subsets:
        pick = tuple(sorted(rng.sample(pool, subset_size)))
        attempts += 1
        if pick not in seen or attempts > 1000 * subsets:
            seen.add(pick)
            chosen.append(list(pick))
    return chosen


def build_prompts(examples: list[dict], adapter, subsets: int, subset_size: int, seed: int) -> list[dict]:
    """One prompt per subset: ``id, subset_id, example_ids, prompt`` and ``template_text``.

    ``template_text`` is the prompt rendered without its examples: the instruction's own words, which the
    echo check compares principles with (see :func:`psi_ray.stages.hygiene.echoes` for why not the examples).
    """
    require_columns("principles", examples, ["example_id", "instruction", "response", "valid"])
    valid = {e["example_id"]: e for e in examples if e["valid"]}
    own_words = prompts.render("principles", task=adapter, examples=[])  # what an echo would copy
    rows = []
    for t, ids in enumerate(sample_subsets(list(valid), subsets, subset_size, seed)):
        shown = [adapter.format_example(valid[i]["instruction"], valid[i]["response"]) for i in ids]
        rows.append({"id": f"subset-{t:03d}", "subset_id": t, "example_ids": ids, "template_text": own_words,
                     "prompt": prompts.chat("principles", task=adapter, examples=shown) + STARTED})
    return rows


EXAMPLE_TALK = re.compile(r"^(in|for|from) (the|this|these|each) (\w+ )?examples?\b", re.I)
"""An item about the shown examples ("In the first example, ...") describes them, not a rule for new ones."""


def first_sentence(text: str, max_chars: int | None = MAX_CHARS) -> str:
    """The first sentence of ``text``, cut at a word boundary to ``max_chars`` (None: never cut)."""
    m = re.match(r"(.+?[.!?])(\s|$)", text.strip())
    sentence = m.group(1) if m else text.strip()
    if max_chars is not None and len(sentence) > max_chars:
        sentence = sentence[:max_chars].rsplit(" ", 1)[0].rstrip(",;:") + "."
    return sentence


def split_principles(text: str) -> list[str]:
    """The first sentence of every item of a numbered or bulleted list, in order, none dropped.

    Sentences are not cut: an over-long one is rejected (``too_long``) rather than kept as a fragment.
    """
    items = []
    for line in text.splitlines():
        m = ITEM.match(line)
        if m:
            items.append(first_sentence(m.group(1).strip().strip("*").strip(), max_chars=None))
    return items


def item_reason(text: str, prompt: str = "") -> str | None:
    """Hygiene for one low-level principle: :func:`.hygiene.reject_reason`, then talk about the examples."""
    return reject_reason(text, prompt) or ("mentions_example" if EXAMPLE_TALK.match(text) else None)


def mark_duplicates(rows: list[dict]) -> list[dict]:
    """Mark later near-duplicates among the valid rows (all subsets at once) ``near_duplicate``, in place.

    Only valid rows are compared, so a kept principle never counts as a copy of a rejected one. Exact
    repeats within one list are marked this way too (Jaccard 1.0), not dropped.
    """
    valid = [r for r in rows if r["valid"]]
    for r, dup in zip(valid, mark_near_duplicates([r["text"] for r in valid]), strict=True):
        if dup is not None:
            r["valid"], r["reject_reason"] = False, "near_duplicate"
    return rows


def _prompt_text(plan_row: dict) -> str:
    """The words an echo would copy: ``template_text``, else the prompt's user messages (hand-made plans)."""
    if plan_row.get("template_text"):
        return plan_row["template_text"]
    return "\n".join(m["content"] for m in plan_row.get("prompt", []) if m.get("role") != "assistant")


def parse_outputs(planned: list[dict], generated: list[dict]) -> list[dict]:
    """One row per listed item of each generation, with hygiene applied; see the module docstring."""
    by_id = {g["id"]: g for g in generated}
    out = []
    for p in planned:
        g = by_id[p["id"]]
        base = {"subset_id": p["subset_id"], "example_ids": p["example_ids"], "raw_output": g["raw_output"]}
        items = [] if g["error"] else split_principles(p["prompt"][-1]["content"] + g["raw_output"])
        if not items:
            reason = "engine" if g["error"] else "parse"
            err = f"engine: {g['error']}" if g["error"] else "parse: no numbered or bulleted list item"
            out.append({"principle_id": f"L{p['subset_id']:03d}-none", "text": None, "valid": False,
                        "reject_reason": reason, "error": err, **base})
        shown = _prompt_text(p)
        for j, item in enumerate(items):
            reason = item_reason(item, shown)
            out.append({"principle_id": f"L{p['subset_id']:03d}-{j:02d}", "text": item,
                        "valid": reason is None, "reject_reason": reason, "error": None, **base})
    return mark_duplicates(out)


def reject_counts(rows: list[dict]) -> dict[str, int]:
    """How many rows each reject reason holds (valid rows not counted), for the stage manifest."""
    return dict(sorted(Counter(r["reject_reason"] for r in rows if r.get("reject_reason")).items()))


FILE_FORMATS = (".yaml", ".yml", ".json", ".jsonl")


def _read_data(path: Path):
    """The parsed content of a principle file, by its suffix; a syntax error names the file (and line)."""
    raw, suffix = path.read_text(encoding="utf-8"), path.suffix.lower()
    if suffix not in FILE_FORMATS:
        raise PsiRayError(f"principles file {path}: unknown format '{suffix}'; use {', '.join(FILE_FORMATS)}")
    if suffix == ".jsonl":
        data = []
        for n, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                data.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise PsiRayError(f"principles file {path}, line {n}: not valid JSON ({exc.msg})") from None
        return data
    if suffix == ".json":
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise PsiRayError(f"principles file {path} is not valid JSON: {exc}") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            why = " ".join(str(exc).split())
            raise PsiRayError(f"principles file {path} is not valid YAML: {why}") from None
    if isinstance(data, dict) and "principles" in data:
        data = data["principles"]
    if not isinstance(data, list):
        raise PsiRayError(f"principles file {path}: expected a list of principles (or a mapping with a "
                          f"'principles:' list), got {type(data).__name__}")
    return data


def load_principle_file(path: Path) -> list[str]:
    """Principle texts from ``path``, for ``principles.source: file``; a bad file is a one-line PsiRayError.

    Accepted: YAML (``.yaml``/``.yml``) or JSON (``.json``) holding a list, or a mapping whose
    ``principles:`` key holds the list; JSONL (``.jsonl``) with one ``{"text": ...}`` object a line. List
    items are strings or ``{"text": ...}`` objects. Texts are returned stripped but otherwise as written;
    hygiene happens in :func:`rows_from_texts`, so rejects are counted, not hidden.
    """
    path = Path(path)
    if not path.is_file():
        raise PsiRayError(f"principles file {path} does not exist")
    texts = []
    for i, item in enumerate(_read_data(path), 1):
        text = item.get("text") if isinstance(item, dict) else item
        if not isinstance(text, str):
            raise PsiRayError(f"principles file {path}: item {i} is not a string or a {{\"text\": ...}} "
                              f"object: {str(item)[:60]!r}")
        texts.append(text.strip())
    if not texts:
        raise PsiRayError(f"principles file {path} holds no principles")
    return texts


def rows_from_texts(texts: list[str]) -> list[dict]:
    """Principle rows for given texts (a user's file): the columns of :func:`parse_outputs`, hygiene applied.

    ``subset_id`` is -1 and ``example_ids`` empty (no subset was shown); there is no prompt, so no echo check.
    """
    rows = []
    for j, text in enumerate(texts):
        reason = item_reason(text)
        rows.append({"principle_id": f"LF{j:03d}", "text": text, "valid": reason is None,
                     "reject_reason": reason, "error": None, "subset_id": -1, "example_ids": [],
                     "raw_output": None})
    return mark_duplicates(rows)
