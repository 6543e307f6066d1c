"""Stage 5b, verify (self-consistency): a verifier re-solves each instance's question k times without its
answer; the instance is verified when the majority answer is its own.

Reads ``id, instruction, response, error``; writes the instance rows unchanged plus ``verified`` (True,
False, or None when not checked), ``agreement`` (share of the k answers equal to the instance's) and
``verify_answers``. Rows that already fail parsing or the task check are not sent to the verifier (the
filter rejects them anyway), nor are rows of a task with no checkable answer (generic): their ``verified``
is None and they pass through. The verifier tier (M_L or M_g), k and the sampling come from ``verify:``.
"""

from __future__ import annotations

from collections import Counter

from psi_ray import prompts
from psi_ray.stages import require_columns


def checkable(row: dict, adapter) -> bool:
    """Whether the verifier should see ``row``: it parsed, passes the task check, and has an answer."""
    if row["error"] or adapter.answer_of(row["response"]) is None:
        return False
    return adapter.check(row["instruction"], row["response"]) is None


def build_prompts(rows: list[dict], adapter, samples: int) -> list[dict]:
    """``samples`` prompts per checkable row (ids ``<row id>#<k>``): the question alone, asked to be solved."""
    require_columns("verify", rows, ["id", "instruction", "response", "error"])
    out = []
    for r in rows:
        if not checkable(r, adapter):
            continue
        msgs = prompts.chat("verify", task=adapter, question=r["instruction"])
        out.extend({"id": f"{r['id']}#{k}", "instance_id": r["id"], "prompt": msgs} for k in range(samples))
    return out


def agreement(own: str, answers: list[str | None], min_agreement: float) -> tuple[bool, float]:
    """(verified, share of answers equal to ``own``): verified when that share reaches ``min_agreement`` and
    no other answer is more common (unparseable answers count against)."""
    if not answers:
        return False, 0.0
    counts = Counter(a for a in answers if a is not None)
    share = counts.get(own, 0) / len(answers)
    top = max(counts.values(), default=0)
    return counts.get(own, 0) >= top and counts.get(own, 0) > 0 and share >= min_agreement, share


def parse_outputs(rows: list[dict], generated: list[dict], adapter, min_agreement: float) -> list[dict]:
    """The rows with ``verified``, ``agreement`` and ``verify_answers`` added (same order)."""
    answers: dict[str, list[str | None]] = {}
    for g in generated:
        instance_id = g["id"].rsplit("#", 1)[0]
        answers.setdefault(instance_id, []).append(None if g["error"] else adapter.answer_of(g["raw_output"]))
    out = []
    for r in rows:
        got = answers.get(r["id"])
        if got is None:
            out.append({**r, "verified": None, "agreement": None, "verify_answers": []})
            continue
        ok, share = agreement(adapter.answer_of(r["response"]), got, min_agreement)
        out.append({**r, "verified": ok, "agreement": share, "verify_answers": [a or "" for a in got]})
    return out
