"""The data plane: instance shards planned and parsed in Ray Data tasks, and the precomputed LSH band keys the
parallel filter relies on. The filter's parallel path is counted back against planted rows in
tests/unit/test_filter_stage.py."""

from __future__ import annotations

import random

import pytest

from psi_ray.config import ModelSpec, Sampling
from psi_ray.pipeline import Tally, dataplane, engine_pool
from psi_ray.rundir import StageDir
from psi_ray.stages import filter as filters
from psi_ray.stages import instances
from psi_ray.tasks import get_adapter

GSM = get_adapter("gsm8k")
HIGH = [{"principle_id": f"H{i:02d}", "text": f"Principle number {i} about careful arithmetic."} for i in range(5)]


def sentence(rng: random.Random, n: int = 18) -> str:
    return " ".join(rng.choice(["apples", "boxes", "seven", "market", "each", "day", "sells", "more", "than", "the",
                                "farmer", "twice", "number", "left", "after", "week"]) for _ in range(n))


def test_minhash_signatures_and_band_keys_are_the_librarys():
    """The filter computes MinHash signatures for a whole table in one numpy pass and looks precomputed band
    keys up in datasketch's Bloom tables: the signatures must be the very ones one ``MinHash`` per text gives,
    the keys the ones ``MinHashLSHBloom`` derives, and lookups by key must answer as its ``query`` and
    ``insert`` do."""
    import datasketch

    rng = random.Random(0)
    texts = [sentence(rng, rng.randint(1, 30)) for _ in range(60)]
    texts += [t.replace("apples", "pears", 1) for t in texts[:20]]  # near copies
    texts += ["", "One two.", "Ünïcode wörds 12 and ½ too"]  # shorter than a shingle, non-ASCII
    ours = filters.Deduper(0.8, 64, capacity=1000)
    lib = filters.Deduper(0.8, 64, capacity=1000)
    norms = [filters.normalize(t) for t in texts]
    sigs = ours.hasher.signatures([filters.shingles_of(n) for n in norms])
    keys_all = ours.band_keys_many(norms)
    for t, sig, keys in zip(texts, sigs, keys_all, strict=True):
        m = datasketch.MinHash(num_perm=64, seed=1)
        m.update_batch(filters.shingles(t))
        assert sig.tolist() == m.hashvalues.tolist()
        assert keys == [table._band_hash(m.hashvalues[a:b]) for (a, b), table in
                        zip(lib.near.hashranges, lib.near.hashtables, strict=True)]
        assert filters._lsh_has(ours.near, keys) == lib.near.query(m)
        filters._lsh_add(ours.near, keys)
        lib.near.insert(m)


def test_signatures_in_chunks_are_the_signatures_in_one_pass(monkeypatch):
    """Many texts go through in chunks of shingles (bounded memory): the same rows as one pass, in order; a
    text with no shingle is refused rather than given its neighbour's minimum."""
    rng = random.Random(2)
    lists = [filters.shingles(sentence(rng, rng.randint(1, 25))) for _ in range(50)]
    hasher = filters.MinHasher(64)
    whole = hasher.signatures(lists)
    monkeypatch.setattr(filters, "SHINGLES_PER_PASS", 7)
    assert (hasher.signatures(lists) == whole).all() and whole.shape == (50, 64)
    assert hasher.signatures([]).shape == (0, 64)
    with pytest.raises(ValueError):
        hasher.signatures([lists[0], []])


def test_decontaminator_candidates_are_the_library_lsh_candidates():
    """Eval-question candidates are the questions sharing a whole band, over the bands ``MinHashLSH`` picks for
    the threshold: the questions its ``query`` returns, so the verdicts are the library's."""
    import datasketch

    rng = random.Random(1)
    questions = [sentence(rng, 20) for _ in range(80)]
    probes = [q.replace("seven", "eight", 2) for q in questions[:30]] + [sentence(rng, 20) for _ in range(30)]
    d = filters.Decontaminator(questions, threshold=0.5)
    lsh = datasketch.MinHashLSH(threshold=0.5, num_perm=64)
    for i, sh in enumerate(d.sets):
        m = datasketch.MinHash(num_perm=64, seed=1)
        m.update_batch(list(sh))
        lsh.insert(i, m)
    flags = d.contaminated_normalized([filters.normalize(p) for p in probes])
    for p, flag in zip(probes, flags, strict=True):
        sh = set(filters.shingles_of(filters.blind(filters.normalize(p))))
        m = datasketch.MinHash(num_perm=64, seed=1)
        m.update_batch(list(sh))
        lib = any(len(sh & d.sets[i]) / len(sh | d.sets[i]) >= 0.5 for i in lsh.query(m))
        assert flag == (lib or d.ngrams.hits(p))
    assert any(flags[:30]) and not any(flags[30:])


def test_engine_batches_fill_the_engine_across_shards():
    batches = dataplane.engine_batches([0, 1, 3], count=14, shard_size=4, batch_size=3)
    assert batches == [[(0, 3)], [(3, 4), (4, 6)], [(6, 8), (12, 13)], [(13, 14)]]
    assert dataplane.engine_batches([], 10, 4, 3) == []


def test_verify_windows_hold_whole_parts_in_order_up_to_the_row_limit(tmp_path):
    """The verify stage holds one window of parts in the driver at a time: consecutive parts, at most the limit
    of rows (a larger part alone), every part exactly once."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = {}
    for part, n in enumerate([3, 4, 2, 10, 1]):
        parts[part] = tmp_path / f"part-{part:05d}.parquet"
        pq.write_table(pa.table({"id": [f"r{part}-{i}" for i in range(n)]}), parts[part])
    windows = list(dataplane.part_windows(parts, 6))
    assert [list(w) for w in windows] == [[0], [1, 2], [3], [4]]
    assert all(w[p] == parts[p] for w in windows for p in w)
    assert list(dataplane.part_windows({}, 6)) == []


def test_a_shard_planned_alone_is_the_whole_plans_shard(seed_rows):
    whole = instances.plan(23, 5, 7, HIGH, seed_rows, 2, 2, GSM, samples_per_prompt=3)
    pieces = [r for a, b in [(0, 4), (4, 10), (10, 23)] for r in
              instances.plan_range(a, b, 5, 7, HIGH, seed_rows, 2, 2, GSM, samples_per_prompt=3)]
    assert pieces == whole


@pytest.fixture
def seed_rows():
    from psi_ray.config import JobConfig
    from psi_ray.stages import seeds

    return seeds.load(JobConfig())


def test_shards_come_back_whole_in_plan_order_with_their_plan(ray_session, tiny_model, tmp_path, seed_rows):
    """Shards of 4 through engine batches of 3 (a batch spans two shards), shard 1 already done: the others are
    written whole, rows in id order, each with the principles and examples the plan gave it."""
    import pyarrow.parquet as pq

    sd = StageDir(tmp_path, 5, "instances")
    sd.path.mkdir(parents=True)
    plan_args = {"count": 10, "shard_size": 4, "seed": 3, "principles": HIGH, "seeds": seed_rows,
                 "principles_per_prompt": 2, "examples_per_prompt": 1, "samples_per_prompt": 2}
    spec = ModelSpec(model=str(tiny_model), backend="hf", num_cpus=0, batch_size=3)
    tally = Tally()
    with engine_pool() as pool:
        dataplane.generate_shards(sd, [0, 2], plan_args, spec, Sampling(temperature=0.0, max_tokens=4), pool,
                                  GSM, tally)
    plan = {r["id"]: r for r in instances.plan(10, 4, 3, HIGH, seed_rows, 2, 1, GSM, samples_per_prompt=2)}
    assert sorted(sd.parts()) == [0, 2]
    for part, ids in ((0, [f"inst-{i:07d}" for i in range(4)]), (2, ["inst-0000008", "inst-0000009"])):
        rows = pq.read_table(sd.part_path(part)).to_pylist()
        assert [r["id"] for r in rows] == ids
        for r in rows:
            assert (r["shard"], r["principle_ids"], r["example_ids"]) == \
                (part, plan[r["id"]]["principle_ids"], plan[r["id"]]["example_ids"])
            assert r["generator"] == str(tiny_model) and r["output_tokens"] > 0
    assert tally.requests == 6
