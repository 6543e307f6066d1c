"""Stage 7, dataset: kept instances as chat-format Parquet plus a dataset card.

Writes ``messages`` (list of {role, content}), ``id, task, method, principle_ids, example_ids, generator``,
the sampling params, ``valid`` and ``reject_reason``. ``datasets.load_dataset("parquet", data_files=...)``
loads it and TRL's ``SFTTrainer`` takes the ``messages`` column as is.
"""

from __future__ import annotations

import json


def schema():
    """The dataset's Arrow schema (explicit, so an empty dataset still has its columns)."""
    import pyarrow as pa

    msg = pa.struct([("role", pa.string()), ("content", pa.string())])
    return pa.schema([("id", pa.string()), ("messages", pa.list_(msg)), ("task", pa.string()),
                      ("method", pa.string()), ("principle_ids", pa.list_(pa.string())),
                      ("example_ids", pa.list_(pa.string())), ("generator", pa.string()), ("sampling", pa.string()),
                      ("valid", pa.bool_()), ("reject_reason", pa.string())])


def to_records(rows: list[dict], task: str, method: str, sampling: dict) -> list[dict]:
    return [{
        "id": r["id"],
        "messages": [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["response"]}],
        "task": task, "method": method, "principle_ids": list(r["principle_ids"]),
        "example_ids": list(r["example_ids"]), "generator": r["generator"],
        "sampling": json.dumps(sampling, sort_keys=True), "valid": r["valid"], "reject_reason": r["reject_reason"],
    } for r in rows if r["valid"]]


def card(cfg, principles: list[dict], counts: dict, models: dict) -> str:
    """A Markdown dataset card: what, how it was made, the principles, the counts."""
    lines = [
        f"# {cfg.resolved_run_id}", "",
        f"Instruction-tuning data for task `{cfg.task.adapter}`, made with psi-ray, method `{cfg.method}`.", "",
        "## Models", "",
        *[f"- {role}: `{name}`" for role, name in models.items()], "",
        "## Counts", "",
        *[f"- {k}: {v}" for k, v in counts.items()], "",
    ]
    if principles:
        lines += ["## High-level principles", ""]
        lines += [f"- **{p['principle_id']}**: {p['text']}" for p in principles]
        lines.append("")
    lines += ["## Config", "", "```json", json.dumps(cfg.redacted_dump(exclude={"base_dir"}), indent=2), "```", ""]
    return "\n".join(lines)
