"""The filter stage as a run calls it: instance parts streamed from a run folder through
``psi_ray.pipeline.filter_stage``, with every rejection counted back against what was planted.

The rows are GSM8K-shaped and made here by a seeded generator that records what it plants: distinct valid
rows (all must survive), exact and near duplicates within one part and across parts, wrong calculator steps,
and copies of seed #10,500 in a seed set of 10,600 (the seed index is sized by the seed count, so a large seed
set keeps its error rate: its copies are caught and distinct rows are not taken for seeds). No model, no Ray.
"""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

NAMES = ["Ava", "Ben", "Cleo", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lea", "Max", "Nia"]
THINGS = ["apples", "books", "coins", "stamps", "marbles", "pencils", "shells", "cards", "plants", "tickets"]
PLACES = ["market", "library", "harbour", "garden", "station", "bakery", "museum", "school"]
SEEDS = 10_600
SEED_HIT = 10_500  # a seed past the first 10,000, where a Bloom filter sized for 10K would start to fail
PARTS, DISTINCT_PER_PART = 3, 70


def seed_numbers(i: int) -> tuple[int, int, int]:
    return i + 3, i % 13 + 2, i % 7 + 1


def seed_question(i: int) -> str:
    """Seed ``i`` names ``i`` at least every 10 words, so no two seeds share a 13-gram."""
    a, b, c = seed_numbers(i)
    return (f"Seed {i}: ferry {i} leaves dock {i} with {a} cars and {b} trucks. At pier {i} it picks up {c} "
            f"buses. How many vehicles are on ferry {i} now?")


def write_seeds(path) -> None:
    with path.open("w") as f:
        for i in range(SEEDS):
            a, b, c = seed_numbers(i)
            answer = f"{a} + {b} + {c} = <<{a}+{b}+{c}={a + b + c}>>{a + b + c}\n#### {a + b + c}"
            f.write(json.dumps({"question": seed_question(i), "answer": answer}) + "\n")


def distinct_row(rng: random.Random, n: int, wrong: bool = False) -> tuple[str, str]:
    """A valid GSM8K-style question and worked answer, unlike any other (``wrong``: one step miscomputed)."""
    who, what, place = rng.choice(NAMES), rng.choice(THINGS), rng.choice(PLACES)
    a, b, c = rng.randint(2, 999), rng.randint(2, 99), rng.randint(2, 9)
    if rng.random() < 0.5:
        q = (f"{who} keeps {a} {what} in a box at the {place} number {n}. Each week for {c} weeks {who} adds "
             f"{b} more {what} to the box and gives none away. How many {what} are in the box at the end?")
    else:
        q = (f"At the {place} on street {n}, {who} starts with {a} {what}. For {c} days in a row a friend brings "
             f"{b} {what} each day, and {who} keeps all of them. How many {what} does {who} have at the end?")
    step = b * c + (1 if wrong else 0)
    r = f"{who} gets {b} * {c} = <<{b}*{c}={step}>>{step} {what}.\nSo {a} + {step} = <<{a}+{step}={a + step}>>" \
        f"{a + step}.\n#### {a + step}"
    return q, r


def near_copy(question: str) -> str:
    """One word changed in the last 3-gram: word 3-gram Jaccard of ~0.94 with the original."""
    assert question.endswith("at the end?")
    return question[: -len("end?")] + "finish?"


def planted_parts(seed_rows: list[dict], seed: int = 0) -> tuple[list[list[dict]], dict[str, str | None]]:
    """Instance parts and, per row id, the reject reason the filter must give (None: kept)."""
    rng = random.Random(seed)
    parts: list[list[dict]] = []
    expect: dict[str, str | None] = {}
    sources: list[dict] = []  # distinct rows already written, each used as a source at most once
    n = 0

    def row(q: str, r: str, why: str | None) -> dict:
        nonlocal n
        n += 1
        expect[f"inst-{n:05d}"] = why
        return {"id": f"inst-{n:05d}", "shard": len(parts), "instruction": q, "response": r,
                "principle_ids": ["H00"], "example_ids": ["seed-00000"], "generator": "synthetic",
                "raw_output": q + "\n" + r, "error": None, "finish_reason": "stop"}

    def take(earlier_parts: bool) -> dict:
        pool = [s for s in sources if (s["shard"] < len(parts)) == earlier_parts]
        src = pool[rng.randrange(len(pool))]
        sources.remove(src)
        return src

    hit = seed_rows[SEED_HIT]
    for p in range(PARTS):
        rows = [row(*distinct_row(rng, n), None) for _ in range(DISTINCT_PER_PART)]
        sources.extend(rows)
        planted = [row(*distinct_row(rng, n, wrong=True), "wrong_equation") for _ in range(3)]
        for _ in range(4):  # within this part
            src = take(earlier_parts=False)
            planted.append(row(src["instruction"], src["response"], "exact_duplicate"))
            src = take(earlier_parts=False)
            planted.append(row(near_copy(src["instruction"]), src["response"], "near_duplicate"))
        if p:  # across parts: the deduper must remember the earlier parts
            for _ in range(5):
                src = take(earlier_parts=True)
                planted.append(row(src["instruction"], src["response"], "exact_duplicate"))
                src = take(earlier_parts=True)
                planted.append(row(near_copy(src["instruction"]), src["response"], "near_duplicate"))
        copies = [hit["instruction"], hit["instruction"] + " Give the answer as a whole number.",
                  hit["instruction"].replace("buses", "vans")]
        planted.append(row(copies[p], hit["response"], "copies_seed"))
        rng.shuffle(planted)
        parts.append(rows + planted)  # planted rows come after the rows they copy
    return parts, expect


@pytest.fixture(scope="module", params=["in the driver", "in checker actors"])
def filtered(tmp_path_factory, request):
    """Seeds written to a file, instance parts to a run folder, and the filter stage run over them once: with
    every check in the driver (a small job), and with the row checks in parallel checker actors (the path of a
    large job, taken here by lowering the row count that starts them)."""
    from psi_ray.config import JobConfig
    from psi_ray.pipeline import Run, dataplane, filter_stage
    from psi_ray.rundir import StageDir
    from psi_ray.stages import seeds

    tmp = tmp_path_factory.mktemp("filter-stage")
    write_seeds(tmp / "seeds.jsonl")
    # Decontamination is left out here (tests/unit/test_content_checks.py covers it); it does not touch dedup.
    job = {"runs_dir": str(tmp / "runs"), "task": {"seeds": str(tmp / "seeds.jsonl")},
           "filter": {"decontaminate": []}, "carbon": {"enabled": False}}
    seed_rows = seeds.load(JobConfig(**job))
    parts, expect = planted_parts(seed_rows)
    r = Run(JobConfig(**job, instances={"count": len(expect)}))  # the near-duplicate index is sized by it
    made = StageDir(r.dir, 5, "instances")
    for i, rows in enumerate(parts):
        made.write_part(i, rows)
    actors = request.param == "in checker actors"
    if actors:
        request.getfixturevalue("ray_session")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dataplane, "CHECKERS_MIN_ROWS", 0 if actors else 10**9)
        sd = r.stage("filter", ("filter",), lambda sd: filter_stage(r, sd, made, seed_rows))
    assert (sd.manifest()["checkers"] > 0) == actors
    return seed_rows, parts, expect, sd


def test_seed_set_is_past_ten_thousand(filtered):
    seed_rows = filtered[0]
    assert len(seed_rows) == SEEDS and seed_rows[SEED_HIT]["instruction"] == seed_question(SEED_HIT)


def test_every_row_gets_the_reason_that_was_planted(filtered):
    _, parts, expect, sd = filtered
    out = sd.read()
    assert [r["id"] for r in out] == [r["id"] for rows in parts for r in rows]  # one out per in, same order
    got = {r["id"]: r["reject_reason"] for r in out}
    wrong = {i: (expect[i], got[i]) for i in expect if got[i] != expect[i]}
    assert not wrong, f"{len(wrong)} rows differ (planted, got): {dict(list(wrong.items())[:8])}"
    assert all(r["valid"] == (r["reject_reason"] is None) for r in out)
    assert sorted(sd.parts()) == list(range(PARTS))


def test_manifest_counts_equal_what_was_planted(filtered):
    _, _, expect, sd = filtered
    planted = Counter(v for v in expect.values() if v)
    m = sd.manifest()
    assert m["rows"] == len(expect)
    assert m["kept"] == PARTS * DISTINCT_PER_PART == sum(v is None for v in expect.values())
    assert {k: v for k, v in m["rejected"].items() if v} == dict(sorted(planted.items()))  # other reasons: 0
    # Across parts: what the deduper must remember from earlier parts, and the seed copies in every part.
    assert planted == {"exact_duplicate": 3 * 4 + 2 * 5, "near_duplicate": 3 * 4 + 2 * 5, "wrong_equation": 9,
                       "copies_seed": PARTS}
