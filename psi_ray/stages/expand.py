"""Stage 1, expand (M_g): D_initial = the seeds plus model-written variants of them.

Reads ``seed_id, instruction, response``; writes ``example_id, instruction, response, source, parent_id,
valid, error, raw_output``. Variants that do not parse or fail the task check stay as rows with
``valid=False`` and the reason; only valid rows feed the principle subsets.
"""

from __future__ import annotations

from psi_ray import prompts
from psi_ray.stages import require_columns
from psi_ray.tasks import ParseError


def build_prompts(seeds: list[dict], adapter, variants_per_seed: int) -> list[dict]:
    require_columns("expand", seeds, ["seed_id", "instruction", "response"])
    rows = []
    for s in seeds:
        example = adapter.format_example(s["instruction"], s["response"])
        msgs = prompts.chat("expand", task=adapter, example=example) + started_answer(adapter)
        for v in range(variants_per_seed):
            rows.append({"id": f"{s['seed_id']}-v{v}", "parent_id": s["seed_id"], "prompt": msgs})
    return rows


def started_answer(adapter) -> list[dict]:
    """The assistant turn begun with the adapter's first label, so a small model keeps the format."""
    return [{"role": "assistant", "content": adapter.first_label}]


def parse_one(adapter, raw: str, prefix: str, check: bool = True) -> tuple[str, str, str | None]:
    """(instruction, response, error) from one model output; errors become data, never exceptions. With
    ``check=False`` only a parse failure is an error (the caller runs the task check later, once)."""
    try:
        instruction, response = adapter.parse(prefix + raw)
    except ParseError as exc:
        return "", "", f"parse: {exc}"
    return instruction, response, adapter.check(instruction, response) if check else None


def parse_outputs(planned: list[dict], generated: list[dict], adapter) -> list[dict]:
    """Join generations (by ``id``) back onto the plan and parse them."""
    by_id = {g["id"]: g for g in generated}
    out = []
    for p in planned:
        g = by_id[p["id"]]
        prefix = p["prompt"][-1]["content"] if p["prompt"][-1]["role"] == "assistant" else ""
        if g["error"]:
            instruction, response, err = "", "", f"engine: {g['error']}"
        else:
            instruction, response, err = parse_one(adapter, g["raw_output"], prefix)
        out.append({"example_id": p["id"], "instruction": instruction, "response": response, "source": "expand",
                    "parent_id": p["parent_id"], "valid": err is None, "error": err,
                    "raw_output": g["raw_output"]})
    return out


def d_initial(seeds: list[dict], variants: list[dict]) -> list[dict]:
    """Seeds first, then the valid variants: the pool principles are written from."""
    rows = [{"example_id": s["seed_id"], "instruction": s["instruction"], "response": s["response"],
             "source": "seed", "parent_id": None, "valid": True, "error": None, "raw_output": None}
            for s in seeds]
    return rows + variants
