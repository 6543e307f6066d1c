"""Stage 4, summarize (M_L): one high-level principle per cluster of low-level ones.

Reads ``principle_id, cluster_id, text`` (and ``centrality`` where stage 3 wrote it); writes ``principle_id``
(``H<cluster>``), ``cluster_id, text, member_ids, error, raw_output, reject_reason``. M_L's summary is cleaned
to one sentence and checked by :mod:`psi_ray.stages.hygiene`. When it is rejected (too short, an echo of the
prompt, a loop, a step stub) or the engine failed, the row keeps the cluster's most central member that passes
hygiene instead; ``reject_reason`` holds the summary's reason (None when M_L's summary was used) and
``error`` says what was kept, so the fallback is visible. Run by ``psi-ray run JOB`` (stage ``04_summarize``).
"""

from __future__ import annotations

import re

from psi_ray import prompts
from psi_ray.stages import require_columns
from psi_ray.stages.hygiene import reject_reason
from psi_ray.stages.principles import first_sentence

STARTED = [{"role": "assistant", "content": "Principle:"}]  # begun for the model: one sentence follows


def build_prompts(clustered: list[dict], adapter) -> list[dict]:
    """One prompt per cluster: ``id, cluster_id, member_ids, members, centrality, template_text, prompt``.

    ``centrality`` is each member's (None where the input has none); ``template_text`` is the prompt without
    its members, what an echo of the instruction would copy (a summary may repeat a member: that is no echo).
    """
    require_columns("summarize", clustered, ["principle_id", "cluster_id", "text"])
    own_words = prompts.render("summarize", task=adapter, principles=[])
    rows = []
    for c in sorted({r["cluster_id"] for r in clustered}):
        members = [r for r in clustered if r["cluster_id"] == c]
        texts = [m["text"] for m in members]
        rows.append({"id": f"H{c:02d}", "cluster_id": c, "member_ids": [m["principle_id"] for m in members],
                     "members": texts, "centrality": [m.get("centrality") for m in members],
                     "template_text": own_words,
                     "prompt": prompts.chat("summarize", task=adapter, principles=texts) + STARTED})
    return rows


def clean_summary(text: str) -> str:
    """The first sentence (uncut) of the first line that is not an intro, without list markers or a label."""
    for line in text.strip().splitlines():
        line = re.sub(r"^\s*(?:\d+[.)]|[-*•])\s*", "", line.strip())
        line = re.sub(r"^\**(?:merged |high-level )?principle\**\s*:\s*", "", line, flags=re.I).strip()
        if line and not line.endswith(":"):
            return first_sentence(line, max_chars=None)
    return ""


def most_central_member(plan_row: dict) -> int | None:
    """Index of the member with the highest centrality that passes hygiene (ties: the first); None if none.

    Members are checked without a prompt: they were written for stage 2's prompt, not this one. A missing
    centrality (input from before stage 3 wrote it) counts as equal, so the first valid member is taken.
    """
    central = plan_row.get("centrality") or [None] * len(plan_row["members"])
    best, best_score = None, float("-inf")
    for i, (text, score) in enumerate(zip(plan_row["members"], central, strict=True)):
        score = float("-inf") if score is None else score
        if text and reject_reason(text) is None and (best is None or score > best_score):
            best, best_score = i, score
    return best


def parse_outputs(planned: list[dict], generated: list[dict]) -> list[dict]:
    """One high-level row per cluster: M_L's cleaned summary, or the fallback member (see the module doc)."""
    by_id = {g["id"]: g for g in generated}
    out = []
    for p in planned:
        g = by_id[p["id"]]
        text = "" if g["error"] else clean_summary(g["raw_output"])
        reason = "engine" if g["error"] else reject_reason(text, p.get("template_text", ""))
        err = None
        if reason:
            why = f"engine: {g['error']}" if g["error"] else f"summary rejected ({reason})"
            i = most_central_member(p)
            if i is None:
                text, err = None, f"{why}; no member passed hygiene, so this cluster has no principle"
            else:
                text, err = p["members"][i], f"{why}; kept the most central member {p['member_ids'][i]}"
        out.append({"principle_id": p["id"], "cluster_id": p["cluster_id"], "text": text,
                    "member_ids": p["member_ids"], "error": err, "raw_output": g["raw_output"],
                    "reject_reason": reason})
    return out
