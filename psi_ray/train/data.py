"""Training examples for M_t: chat messages → token ids with the loss on assistant tokens only.

Each dataset row's ``messages`` are rendered with the target model's own chat template. The prompt part (every
turn before the final assistant turn, with the assistant header opened) is masked with ``-100`` so the model
learns to answer, not to repeat questions. Pure functions: tests call them without Ray or a GPU.
"""

from __future__ import annotations

from pathlib import Path

from psi_ray.errors import PsiRayError

IGNORE = -100


def read_messages(dataset: Path) -> list[list[dict]]:
    """The ``messages`` column of a psi-ray dataset (``07_dataset/data.parquet`` or any Parquet with it)."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(dataset)
    except Exception as exc:  # pyarrow raises several types for a non-Parquet file
        raise PsiRayError(f"{dataset}: not a readable Parquet dataset ({exc})") from None
    if "messages" not in table.column_names:
        raise PsiRayError(f"{dataset}: no 'messages' column (columns: {', '.join(table.column_names)})")
    return table.column("messages").to_pylist()


def encode(tokenizer, messages: list[dict], max_len: int) -> dict | None:
    """``input_ids`` and ``labels`` (prompt masked) for one conversation; ``None`` if nothing is left to learn.

    The conversation must end with an assistant turn. It is cut to ``max_len`` tokens from the right.
    """
    if not messages or messages[-1]["role"] != "assistant":
        return None
    prompt_ids = _ids(tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True),
                      tokenizer)
    full_ids = _ids(tokenizer.apply_chat_template(messages, tokenize=False), tokenizer)
    if full_ids[: len(prompt_ids)] != prompt_ids:
        return None  # the tokenizer merged across the prompt/answer boundary: no clean mask for this row
    full_ids = full_ids[:max_len]
    labels = [IGNORE] * min(len(prompt_ids), len(full_ids)) + full_ids[len(prompt_ids):]
    if all(x == IGNORE for x in labels):
        return None
    return {"input_ids": full_ids, "labels": labels}


def _ids(text: str, tokenizer) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_all(tokenizer, conversations: list[list[dict]], max_len: int) -> list[dict]:
    """Encode every conversation; drop those with no assistant turn, none of it left after truncation, or a
    prompt the tokenizer merges into the answer."""
    if not getattr(tokenizer, "chat_template", None):
        raise PsiRayError("the target model has no chat template; fine-tuning on chat data needs an instruct model")
    out = [e for e in (encode(tokenizer, m, max_len) for m in conversations) if e is not None]
    if not out:
        raise PsiRayError("no training example left (the dataset is empty or every row lost its answer to "
                          "truncation); raise train.max_seq_len or generate more data")
    return out


def collate(examples: list[dict], pad_id: int) -> dict:
    """Right-pad a batch into tensors: ``input_ids``, ``attention_mask``, ``labels`` (padding ignored)."""
    import torch

    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
