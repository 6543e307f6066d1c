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


def to_table(table, task: str, method: str, sampling: dict):
    """The kept rows of a filtered Arrow table (``id, instruction, response, principle_ids, example_ids,
    generator, valid, reject_reason``) as dataset rows of :func:`schema`, built column-wise: no Python row per
    instance, so a million rows take seconds."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    kept = table.filter(pc.fill_null(table["valid"], False))
    n = kept.num_rows
    order = np.empty(2 * n, dtype=np.int64)  # user, assistant, user, assistant, ...
    order[0::2], order[1::2] = np.arange(n), np.arange(n) + n
    texts = pa.concat_arrays([kept["instruction"].combine_chunks().cast(pa.string()),
                              kept["response"].combine_chunks().cast(pa.string())]).take(pa.array(order))
    turns = pa.StructArray.from_arrays([pa.array(["user", "assistant"] * n, pa.string()), texts],
                                       names=["role", "content"])
    messages = pa.ListArray.from_arrays(pa.array(np.arange(0, 2 * n + 1, 2, dtype=np.int32)), turns)
    columns = {"id": kept["id"], "messages": messages, "task": pa.array([task] * n, pa.string()),
               "method": pa.array([method] * n, pa.string()), "principle_ids": kept["principle_ids"],
               "example_ids": kept["example_ids"], "generator": kept["generator"],
               "sampling": pa.array([json.dumps(sampling, sort_keys=True)] * n, pa.string()),
               "valid": kept["valid"], "reject_reason": kept["reject_reason"]}
    return pa.table(columns).cast(schema())


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
