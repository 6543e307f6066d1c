"""Stage 2, principles (M_L): low-level principles from T seeded random subsets of k examples.

Reads D_initial (``example_id, instruction, response, valid``); writes one row per principle:
``principle_id, subset_id, example_ids, text, error, raw_output``. An output with no usable principle keeps
one row with ``text=None`` and the error.
"""

from __future__ import annotations

import random
import re

from psi_ray import prompts
from psi_ray.stages import require_columns

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
    require_columns("principles", examples, ["example_id", "instruction", "response", "valid"])
    valid = {e["example_id"]: e for e in examples if e["valid"]}
    rows = []
    for t, ids in enumerate(sample_subsets(list(valid), subsets, subset_size, seed)):
        shown = [adapter.format_example(valid[i]["instruction"], valid[i]["response"]) for i in ids]
        rows.append({"id": f"subset-{t:03d}", "subset_id": t, "example_ids": ids,
                     "prompt": prompts.chat("principles", task=adapter, examples=shown) + STARTED})
    return rows


EXAMPLE_TALK = re.compile(r"^(in|for|from) (the|this|these|each) (\w+ )?examples?\b", re.I)


def first_sentence(text: str, max_chars: int = MAX_CHARS) -> str:
    """The first sentence of ``text``, at most ``max_chars`` long (cut at a word boundary)."""
    m = re.match(r"(.+?[.!?])(\s|$)", text.strip())
    sentence = m.group(1) if m else text.strip()
    if len(sentence) > max_chars:
        sentence = sentence[:max_chars].rsplit(" ", 1)[0].rstrip(",;:") + "."
    return sentence


def split_principles(text: str, min_chars: int = 15) -> list[str]:
    """The items of a numbered or bulleted list, de-duplicated, in order."""
    items, seen = [], set()
    for line in text.splitlines():
        m = ITEM.match(line)
        if not m:
            continue
        item = first_sentence(m.group(1).strip().strip("*").strip())
        key = item.lower()
        if len(item) >= min_chars and key not in seen and not EXAMPLE_TALK.match(item):
            seen.add(key)
            items.append(item)
    return items


def parse_outputs(planned: list[dict], generated: list[dict]) -> list[dict]:
    by_id = {g["id"]: g for g in generated}
    out = []
    for p in planned:
        g = by_id[p["id"]]
        base = {"subset_id": p["subset_id"], "example_ids": p["example_ids"], "raw_output": g["raw_output"]}
        items = [] if g["error"] else split_principles(p["prompt"][-1]["content"] + g["raw_output"])
        if not items:
            err = f"engine: {g['error']}" if g["error"] else "parse: no list items of 15+ characters"
            out.append({"principle_id": f"L{p['subset_id']:03d}-none", "text": None, "error": err, **base})
        for j, item in enumerate(items):
            out.append({"principle_id": f"L{p['subset_id']:03d}-{j:02d}", "text": item, "error": None, **base})
    return out
