"""Stage 5, instances: the bulk of the dataset, written by M_g guided by high-level principles.

The plan is deterministic from the job seed: instance ``i`` gets its own sampled principles and examples, and
belongs to shard ``i // shard_size`` (the unit of resume). Methods share one prompt shape:
``psi`` (M_g + principles), ``teacher`` (M_L, no principles, Alpaca-style) and ``student`` (M_g, no
principles). Examples always come from the seeds so the three differ only in writer and principles.
Writes ``id, shard, instruction, response, principle_ids, example_ids, generator, raw_output, error`` plus
token counts.
"""

from __future__ import annotations

import math
import random

from psi_ray import prompts
from psi_ray.stages.expand import parse_one, started_answer


def plan(count: int, shard_size: int, seed: int, principles: list[dict], seeds: list[dict],
         principles_per_prompt: int, examples_per_prompt: int, adapter, samples_per_prompt: int = 1) -> list[dict]:
    """One row per instance to write: id, shard, the principles and examples its prompt shows, the prompt.

    Consecutive groups of ``samples_per_prompt`` instances share one prompt, so an engine with a prefix cache
    computes it once.
    """
    return plan_range(0, count, shard_size, seed, principles, seeds, principles_per_prompt, examples_per_prompt,
                      adapter, samples_per_prompt)


def shard_range(shard: int, count: int, shard_size: int) -> tuple[int, int]:
    """The instance indices ``[start, stop)`` of ``shard``."""
    return shard * shard_size, min((shard + 1) * shard_size, count)


def plan_range(start: int, stop: int, shard_size: int, seed: int, principles: list[dict], seeds: list[dict],
               principles_per_prompt: int, examples_per_prompt: int, adapter,
               samples_per_prompt: int = 1) -> list[dict]:
    """The rows :func:`plan` gives instances ``start`` to ``stop - 1``: every instance's draw depends only on
    its own index, so shards are planned apart (in parallel tasks) exactly as the whole plan would be. A
    prompt is rendered once for each distinct draw of principles and examples, and rows with the same draw
    share that prompt object (so callers encode each distinct prompt once)."""
    rows = []
    rendered: dict[tuple, list[dict]] = {}
    seed_by_id = {s["seed_id"]: s for s in seeds}
    seed_ids = sorted(seed_by_id)
    principle_ids = sorted(p["principle_id"] for p in principles)
    text = {p["principle_id"]: p["text"] for p in principles}
    started = started_answer(adapter)
    group, pids, eids, msgs = None, [], [], []
    for i in range(start, stop):
        if i // samples_per_prompt != group:
            group = i // samples_per_prompt
            rng = random.Random(f"instance-{seed}-{group}")
            pids = sorted(rng.sample(principle_ids, min(principles_per_prompt, len(principle_ids))))
            eids = rng.sample(seed_ids, min(examples_per_prompt, len(seed_ids)))
            msgs = rendered.get((*pids, "|", *eids))
            if msgs is None:
                shown = [adapter.format_example(seed_by_id[e]["instruction"], seed_by_id[e]["response"])
                         for e in eids]
                msgs = prompts.chat("instances", task=adapter, principles=[text[p] for p in pids], examples=shown)
                msgs = rendered[(*pids, "|", *eids)] = msgs + started
        rows.append({"id": f"inst-{i:07d}", "shard": i // shard_size, "principle_ids": pids, "example_ids": eids,
                     "prompt": msgs})
    return rows


def parse_outputs(planned: list[dict], generated: list[dict], adapter, generator: str) -> list[dict]:
    """Join generations (by ``id``) onto planned rows (``id, shard, principle_ids, example_ids``) and parse them;
    the answer each prompt began (:func:`started_answer`) is put back in front of the model's text."""
    by_id = {g["id"]: g for g in generated}
    prefix = started_answer(adapter)[-1]["content"]
    out = []
    for p in planned:
        g = by_id[p["id"]]
        if g["error"]:
            instruction, response, err = "", "", f"engine: {g['error']}"
        else:
            instruction, response, err = parse_one(adapter, g["raw_output"], prefix, check=False)  # checks: filter
        out.append({"id": p["id"], "shard": p["shard"], "instruction": instruction, "response": response,
                    "principle_ids": p["principle_ids"], "example_ids": p["example_ids"], "generator": generator,
                    "raw_output": g["raw_output"], "error": err, "finish_reason": g["finish_reason"],
                    "prompt_tokens": g["prompt_tokens"], "output_tokens": g["output_tokens"],
                    "node_id": g.get("node_id")})
    return out


FIRST_KEEP_RATE = 0.25
"""The kept share assumed before any row is back (the default CPU job keeps about a quarter)."""
WAVE_MARGIN = 1.1
"""Each wave asks for 10% more rows than the kept share so far says it needs, so a run rarely needs one more."""


def next_wave(generated: int, kept: int, target: int, cap: int, shard_size: int) -> int:
    """How many more instances to generate (whole shards, within ``cap``) so that about ``target`` are kept;
    0 once ``kept`` reaches ``target`` or ``generated`` reaches ``cap``.

    The kept share so far is estimated as (kept + 1) / (generated + 4), so a first wave that keeps nothing
    asks for a large second one rather than none, and the estimate starts at :data:`FIRST_KEEP_RATE`."""
    if kept >= target or generated >= cap:
        return 0
    rate = (kept + 1) / (generated + 4) if generated else FIRST_KEEP_RATE
    want = math.ceil((target - kept) / rate * WAVE_MARGIN)
    want = -(-want // shard_size) * shard_size  # whole shards: a shard is the unit of writing and resume
    return min(want, cap - generated)
