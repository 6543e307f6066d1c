"""Stage 4, summarize (M_L): one high-level principle per cluster of low-level ones.

Reads ``principle_id, cluster_id, text``; writes ``principle_id`` (``H<cluster>``), ``cluster_id, text,
member_ids, error, raw_output``. A cluster whose summary is empty falls back to its most central member
text's first item, marked in ``error`` so the fallback is visible.
"""

from __future__ import annotations

import re

from psi_ray import prompts
from psi_ray.stages import require_columns
from psi_ray.stages.principles import first_sentence

STARTED = [{"role": "assistant", "content": "Principle:"}]  # begun for the model: one sentence follows


def build_prompts(clustered: list[dict], adapter) -> list[dict]:
    require_columns("summarize", clustered, ["principle_id", "cluster_id", "text"])
    rows = []
    for c in sorted({r["cluster_id"] for r in clustered}):
        members = [r for r in clustered if r["cluster_id"] == c]
        rows.append({"id": f"H{c:02d}", "cluster_id": c, "member_ids": [m["principle_id"] for m in members],
                     "members": [m["text"] for m in members],
                     "prompt": prompts.chat("summarize", task=adapter, principles=[m["text"] for m in members])
                     + STARTED})
    return rows


def clean_summary(text: str) -> str:
    """The first sentence of the first line that is not an intro, without list markers or a label."""
    for line in text.strip().splitlines():
        line = re.sub(r"^\s*(?:\d+[.)]|[-*•])\s*", "", line.strip())
        line = re.sub(r"^\**(?:merged |high-level )?principle\**\s*:\s*", "", line, flags=re.I).strip()
        if line and not line.endswith(":"):
            return first_sentence(line)
    return ""


def parse_outputs(planned: list[dict], generated: list[dict]) -> list[dict]:
    by_id = {g["id"]: g for g in generated}
    out = []
    for p in planned:
        g = by_id[p["id"]]
        text = "" if g["error"] else clean_summary(g["raw_output"])
        err = None
        if len(text) < 15:
            err = f"engine: {g['error']}" if g["error"] else "summary too short; kept the first member principle"
            text = p["members"][0]
        out.append({"principle_id": p["id"], "cluster_id": p["cluster_id"], "text": text,
                    "member_ids": p["member_ids"], "error": err, "raw_output": g["raw_output"]})
    return out
