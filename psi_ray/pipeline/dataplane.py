"""The data plane of instance-scale stages: rows move as Arrow tables between Ray tasks and actors, and the
driver only assembles, orders and writes them, so its memory stays flat however many rows a job makes.

- :func:`generate_shards` (stage 5): a Ray Data flow plans each shard's prompts in tasks (every instance's
  draw depends only on its index), hands batches to the engine actors, and parses the generations in the same
  task. The driver receives Arrow tables, groups them by shard and writes a shard once it is whole.
- :class:`FilterPlane` (stage 6): the checks that need only the row itself (the task check, decontamination,
  seed copies, the row's MinHash band keys) run in parallel checker actors, a part at a time; only the
  in-order duplicate decision (a Bloom-filter lookup per band) stays on the driver, so the first of two
  copies is kept exactly as in a sequential pass.
- :func:`part_windows` (stage 5b, verify): parts a window at a time, so the driver holds a bounded number of
  rows and prompts however large the job.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator
from pathlib import Path

from psi_ray.config import ModelSpec
from psi_ray.evaluate.questions import eval_questions
from psi_ray.pipeline.engines import EnginePool, Tally, in_flight
from psi_ray.rundir import StageDir, typed_table
from psi_ray.stages import filter as filters
from psi_ray.stages import instances, require_column_names

CHECKERS_MAX = 8
"""Filter checker actors at most; fewer where the cluster has fewer CPUs."""
CHECKERS_MIN_ROWS = 5000
"""Below this many rows the filter checks in the driver: starting actors would cost more than they save."""
FILTER_INPUT = ("id", "instruction", "response", "error")


def engine_batches(shards: list[int], count: int, shard_size: int, batch_size: int) -> list[list[tuple[int, int]]]:
    """The instance indices of ``shards`` cut into engine batches of ``batch_size`` (index ranges; a batch may
    span shards, so shards smaller than a batch still fill the engine)."""
    out: list[list[tuple[int, int]]] = []
    cur: list[tuple[int, int]] = []
    n = 0
    for s in shards:
        a, b = instances.shard_range(s, count, shard_size)
        while a < b:
            take = min(b - a, batch_size - n)
            cur.append((a, a + take))
            n, a = n + take, a + take
            if n == batch_size:
                out.append(cur)
                cur, n = [], 0
    if cur:
        out.append(cur)
    return out


VERIFY_WINDOW_PROMPTS = 40_000
"""Verify prompts the driver holds at once (instance rows times k samples, with the rows): enough to keep the
engines fed (a window's prompts go out as one stream), small enough that a 1M-row job does not fill memory."""


def part_windows(parts: dict[int, Path], max_rows: int) -> Iterator[dict[int, Path]]:
    """Consecutive groups of ``parts`` (part number to Parquet file, in order) of at most ``max_rows`` rows each
    (a part larger than that is a window alone); row counts come from the files' footers."""
    import pyarrow.parquet as pq

    window: dict[int, Path] = {}
    rows = 0
    for part, path in parts.items():
        n = pq.read_metadata(path).num_rows
        if window and rows + n > max_rows:
            yield window
            window, rows = {}, 0
        window[part] = path
        rows += n
    if window:
        yield window


def _generate_block(batch, plan_args: dict, actors: list, params: dict, generator: str):
    """A Ray Data task for one engine batch: plan its rows (every instance's draw depends only on its index),
    send them to an engine actor (chosen by the batch's number, so consecutive batches go round the engines)
    and parse the generations into instance rows, as an Arrow table."""
    import ray

    seq, ranges = batch["seq"][0].as_py(), json.loads(batch["ranges"][0].as_py())
    plan = {k: v for k, v in plan_args.items() if k != "count"}  # the rest are plan_range's own arguments
    planned = [r for start, stop in ranges for r in instances.plan_range(start, stop, **plan)]
    encoded: dict[int, str] = {}  # rows with the same draw (in one plan_range) share a prompt: encode it once
    for r in planned:
        if id(r["prompt"]) not in encoded:
            encoded[id(r["prompt"])] = json.dumps(r["prompt"])
    prompts = [encoded[id(r["prompt"])] for r in planned]
    actor = actors[seq % len(actors)]
    got = ray.get(actor.generate.remote({"id": [r["id"] for r in planned], "prompt": prompts}, params))
    gens = [dict(zip(got, values, strict=True)) for values in zip(*got.values(), strict=True)]
    for g in gens:
        g["error"] = g["error"] or None
    return typed_table(instances.parse_outputs(planned, gens, plan_args["adapter"], generator))


def generate_shards(sd: StageDir, shards: list[int], plan_args: dict, spec: ModelSpec, sampling,
                    pool: EnginePool, adapter, tally: Tally) -> None:
    """Generate and write ``shards`` of the instance plan ``plan_args`` (:func:`instances.plan_range`'s
    arguments, with ``count``) through ``spec``'s engines; each shard is written, in plan order, as soon as all
    its rows are back. ``tally`` counts the generations."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import ray

    if not shards:
        return
    actors = pool.actors_for(spec)
    count, size = plan_args["count"], plan_args["shard_size"]
    expected = {s: len(range(*instances.shard_range(s, count, size))) for s in shards}
    batches = engine_batches(shards, count, size, spec.batch_size)
    ds = ray.data.from_items([{"seq": i, "ranges": json.dumps(b)} for i, b in enumerate(batches)],
                             override_num_blocks=len(batches))  # a block a batch: each batch its own task
    ds = ds.map_batches(
        _generate_block,
        fn_kwargs={"plan_args": {**plan_args, "adapter": adapter}, "actors": actors,
                   "params": sampling.params().to_dict(), "generator": spec.model},
        batch_size=1,
        compute=ray.data.TaskPoolStrategy(size=min(len(batches), in_flight(spec) * len(actors))),
        num_cpus=0,  # the task plans, waits on the engine (which holds the tier's CPUs and GPUs) and parses
        batch_format="pyarrow",
    )
    pending: dict[int, list] = defaultdict(list)
    have: dict[int, int] = defaultdict(int)
    for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        tally.add_table(table)
        for s in pc.unique(table["shard"]).to_pylist():
            piece = table.filter(pc.equal(table["shard"], s))
            pending[s].append(piece)
            have[s] += piece.num_rows
            if have[s] == expected[s]:
                sd.write_table(s, pa.concat_tables(pending.pop(s), promote_options="default").sort_by("id"))


class RowChecker:
    """:func:`filters.check_rows` over a table's rows, with the job's seeds and eval questions loaded once: in a
    checker actor, or in the driver for small inputs or where Ray is not running."""

    def __init__(self, adapter, seed_rows: list[dict], fc, capacity: int):
        self.adapter = adapter
        self.dedup = filters.make_deduper(seed_rows, fc.near_duplicate_threshold, fc.num_perm, capacity)
        questions = [q for task in fc.decontaminate for q in eval_questions(task)]
        self.decontam = filters.Decontaminator(questions, fc.decontaminate_threshold, fc.num_perm) \
            if questions else None

    def check(self, table) -> list[tuple[str | None, int, list[int]]]:
        cols = table.to_pydict()
        rows = [dict(zip(cols, values, strict=True)) for values in zip(*cols.values(), strict=True)]
        return filters.check_rows(rows, self.adapter, self.dedup, self.decontam)


class FilterPlane:
    """The filter over a stream of tables: row checks in parallel, duplicates decided in order.

    ``rows`` is how many rows will pass (it sizes the duplicate index and decides whether checker actors are
    worth starting); ``parallel=False`` keeps every check in the driver (the kept-row count between waves of
    instance generation, which should not compete with the engine generating the next wave).
    """

    def __init__(self, adapter, seed_rows: list[dict], fc, rows: int, parallel: bool = True):
        import ray

        cpus = int(ray.cluster_resources().get("CPU", 0)) if parallel and ray.is_initialized() else 0
        n = min(CHECKERS_MAX, cpus) if rows >= CHECKERS_MIN_ROWS else 0
        # One per CPU of the cluster, reserving none: Ray frees the engines' CPUs asynchronously after the instance
        # stage (an actor count taken from the free CPUs then was sometimes one short), and a checker must never
        # wait for a CPU that another job on the cluster holds.
        cls = ray.remote(RowChecker).options(num_cpus=0, scheduling_strategy="SPREAD") if n else None
        self.actors = [cls.remote(adapter, seed_rows, fc, rows) for _ in range(n)]
        # The in-order duplicate index lives in the driver; without actors the driver checks rows too.
        self.local = None if n else RowChecker(adapter, seed_rows, fc, rows)
        self.dedup = self.local.dedup if self.local else \
            filters.make_deduper(seed_rows, fc.near_duplicate_threshold, fc.num_perm, rows)

    def run(self, tables: Iterable) -> Iterator[tuple[object, list[str | None]]]:
        """Each input table with its rows' reject reasons (None: kept), in input order."""
        import ray

        window: deque = deque()
        source, turn = iter(tables), itertools.count()

        def submit() -> None:
            table = next(source, None)
            if table is not None:
                require_column_names("filter", table.column_names, list(FILTER_INPUT))
                wanted = table.select([c for c in (*FILTER_INPUT, "verified") if c in table.column_names])
                actor = self.actors[next(turn) % len(self.actors)] if self.actors else None
                window.append((table, actor.check.remote(wanted) if actor else self.local.check(wanted)))

        for _ in range(2 * max(len(self.actors), 1)):  # every checker busy, one part queued behind each
            submit()
        while window:
            table, checked = window.popleft()
            submit()
            checked = ray.get(checked) if self.actors else checked
            yield table, [reason or self.dedup.remember(key, bands) for reason, key, bands in checked]

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []
