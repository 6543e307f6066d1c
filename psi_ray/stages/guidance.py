"""What an instance prompt shows as principles (``instances.guidance``), for PSI and its ablations.

- ``summaries``: the high-level principles of stage 4 (PSI).
- ``low_level``: M_L's valid low-level principles as they are, no clustering or summaries (the paper's
  "w/o clustering" ablation); principles from a file take this path too, since they are already high-level.
- ``placebo``: the summaries' places filled with task-free text of the same lengths, so the prompt keeps its
  shape and size but the principles carry no task information. An arm that gains as much from the placebo as
  from PSI gains from the prompt's form, not from the principles.
"""

from __future__ import annotations

import random

PLACEBO_SENTENCES = (
    "Take a moment before you begin.",
    "Write in clear and complete sentences.",
    "Keep a steady pace from start to finish.",
    "Use plain words that any reader knows.",
    "Stay calm and keep going.",
    "Leave a blank line where it helps the eye.",
    "Read your words once more when you are done.",
    "Be kind to the reader.",
    "Keep your writing tidy.",
    "Say what you mean in as few words as you need.",
)
"""Neutral advice that says nothing about any task: the placebo's vocabulary."""


def as_high_level(low: list[dict], source: str) -> tuple[list[dict], dict]:
    """Each valid low-level principle becomes its own high-level one (``H00``, ``H01``...); rows and the
    manifest entry of the summarize stage that this replaces (``source`` says where they came from)."""
    valid = [x for x in low if x["valid"]]
    rows = [{"principle_id": f"H{i:02d}", "cluster_id": i, "text": x["text"], "member_ids": [x["principle_id"]],
             "error": None, "raw_output": None, "reject_reason": None} for i, x in enumerate(valid)]
    return rows, {"source": source}


def placebo_text(length: int, rng: random.Random) -> str:
    """Task-free text of at most ``length`` characters (within a word of it): sentences of
    :data:`PLACEBO_SENTENCES` in a random order, cut at a word boundary and closed with a full stop."""
    order = list(PLACEBO_SENTENCES)
    rng.shuffle(order)
    stream = " ".join(order * (length // 20 + 2))
    head = stream[: max(length - 1, 1)]
    if stream[len(head)] != " " and " " in head:  # drop a cut word
        head = head.rsplit(" ", 1)[0]
    return head.rstrip(" ,.") + "."


def placebo(high: list[dict], seed: int) -> list[dict]:
    """``high`` with every text replaced by task-free text of the same length (ids and clusters kept)."""
    rng = random.Random(f"placebo-{seed}")
    return [{**h, "text": placebo_text(len(h["text"]), rng)} for h in high]

