"""Engine actors, kept alive across the stages that use them, fed by Ray Data.

An :class:`EnginePool` starts one set of engine actors per distinct engine (backend, model, options, placement)
the first time a stage needs it, and releases it after the last stage that does: on the default job, where
M_L and M_g are the same model, expand, principles, summarize and instances share one engine start. Prompts
stream through Ray Data ``map_batches`` tasks that hand each batch to an engine actor, several at once
(:func:`in_flight`). A vLLM engine actor takes them all at once and its engine runs their requests as one
batch, so the next batch fills the engine while the last one's slowest sequences finish; other engines take
one batch at a time, the next queued behind it. :func:`stream` yields result batches as they arrive (the instance stage uses
:mod:`psi_ray.pipeline.dataplane`, which plans and parses in the same tasks).
"""

from __future__ import annotations

import contextlib
import json
import time

from psi_ray.config import JobConfig, ModelSpec
from psi_ray.errors import PsiRayError, last_line
from psi_ray.runtime import engine_actor_env

CONCURRENT_BACKENDS = {"vllm"}
"""Backends whose engine takes several calls at once (vLLM: every call's requests join one running batch, so
the next batch fills the engine while the last one's slowest sequences finish); others take one at a time."""
ENGINE_SEQUENCES = 256
"""Sequences vLLM's offline engine runs at once by default on CPU (``max_num_seqs``; at least as many on GPU)."""
CONCURRENT_CALLS_MAX = 64
"""Calls a concurrent engine actor accepts at once (Ray Data's task pool sets how many are really sent)."""


def in_flight(spec: ModelSpec) -> int:
    """Batches sent to each engine actor of ``spec`` at once: for vLLM enough to fill its running batch, plus one
    so the engine is never waiting for a batch to arrive; for other engines two (one generating, one queued)."""
    if spec.backend not in CONCURRENT_BACKENDS:
        return 2
    return min(CONCURRENT_CALLS_MAX, max(2, -(-ENGINE_SEQUENCES // spec.batch_size) + 1))
RESTARTS = 3  # an engine whose node dies is started again (on that node when it returns) this many times


class EngineActor:
    """One engine (backend) in its own Ray actor: JSON chat prompts in, generation columns out."""

    def __init__(self, spec: dict):
        import ray

        from psi_ray.backends import load_backend

        self.node_id = ray.get_runtime_context().get_node_id()
        self.start_error: str | None = None
        try:
            self.backend = load_backend(spec["backend"], spec["model"], **spec["options"])
        except Exception as exc:  # reported by ready(): a failed start must not become an endless restart
            self.backend, self.start_error = None, f"{spec['model']} ({spec['backend']}): {last_line(exc)}"

    def ready(self) -> str | None:
        """``None`` once the engine is up; the reason it could not start otherwise."""
        return self.start_error

    def generate(self, batch: dict, params: dict) -> dict:
        from psi_ray.backends import SamplingParams

        gens = self.backend.generate([json.loads(p) for p in batch["prompt"]], SamplingParams(**params))
        n = len(gens)
        return {
            "id": list(batch["id"]),
            "raw_output": [g.text for g in gens],
            "finish_reason": [g.finish_reason or "" for g in gens],
            "prompt_tokens": [g.prompt_tokens for g in gens],
            "output_tokens": [g.output_tokens for g in gens],
            "error": [g.error or "" for g in gens],
            "node_id": [self.node_id] * n,
        }

    def close(self) -> None:
        close = getattr(self.backend, "close", None)
        if close:
            close()


def engine_key(spec: ModelSpec) -> str:
    """What makes two tiers share an engine: everything but the batch size, which is the caller's."""
    return spec.model_dump_json(exclude={"batch_size"})


class EnginePool:
    """Engine actors per distinct engine, started on first use and released by :meth:`release_except`.

    ``start_s`` adds up the seconds spent starting engines, so a stage's manifest can tell engine start-up
    from generation.
    """

    def __init__(self):
        self.actors: dict[str, list] = {}
        self.start_s = 0.0

    def actors_for(self, spec: ModelSpec) -> list:
        key = engine_key(spec)
        if key not in self.actors:
            self.actors[key] = self._start(spec)
        return self.actors[key]

    def _start(self, spec: ModelSpec) -> list:
        import ray

        t0 = time.time()
        cls = ray.remote(EngineActor).options(
            num_cpus=spec.num_cpus, num_gpus=spec.num_gpus, resources=spec.resources or None,
            max_restarts=RESTARTS, max_task_retries=RESTARTS, runtime_env={"env_vars": engine_actor_env()},
            max_concurrency=CONCURRENT_CALLS_MAX if spec.backend in CONCURRENT_BACKENDS else 1)
        as_dict = {"backend": spec.backend, "model": spec.model, "options": spec.options}
        actors = [cls.remote(as_dict) for _ in range(spec.replicas)]
        try:
            errors = [e for e in ray.get([a.ready.remote() for a in actors]) if e]
        except ray.exceptions.RayError as exc:
            errors = [last_line(exc)]
        if errors:
            self._kill(actors)
            raise PsiRayError(f"the engine could not start: {errors[0]}")
        self.start_s += time.time() - t0
        return actors

    def release_except(self, keep: list[ModelSpec]) -> None:
        """Stop every engine that none of ``keep`` uses (their CPUs, GPUs and memory go back to Ray)."""
        wanted = {engine_key(s) for s in keep}
        for key in [k for k in self.actors if k not in wanted]:
            self._kill(self.actors.pop(key))

    def close(self) -> None:
        self.release_except([])

    @staticmethod
    def _kill(actors: list) -> None:
        import ray

        for a in actors:
            with contextlib.suppress(Exception):
                ray.get(a.close.remote(), timeout=60)  # vLLM's engine process exits cleanly
            ray.kill(a)


@contextlib.contextmanager
def engine_pool():
    """An :class:`EnginePool` whose engines are stopped on the way out, whatever happens."""
    pool = EnginePool()
    try:
        yield pool
    finally:
        pool.close()


def _send_to_engine(batch: dict, actors: list, params: dict) -> dict:
    """A Ray Data task: hand one batch to an engine actor (chosen by the batch's first sequence number, so
    consecutive batches go round the engines) and wait for its generations."""
    import ray

    actor = actors[int(batch["seq"][0]) % len(actors)]
    return ray.get(actor.generate.remote({"id": batch["id"], "prompt": batch["prompt"]}, params))


def stream(rows: list[dict], spec: ModelSpec, sampling, pool: EnginePool):
    """Run ``rows`` (``id``, ``prompt``) through ``pool``'s engines for tier ``spec``; yield result batches (lists
    of dicts, one per row) as they arrive, so a stage can write its shards without holding every generation."""
    import ray

    if not rows:
        return
    actors = pool.actors_for(spec)
    b = spec.batch_size
    items = [{"seq": i // b, "id": r["id"], "prompt": json.dumps(r["prompt"])} for i, r in enumerate(rows)]
    blocks = -(-len(items) // b)  # a block a batch, so batches are separate tasks that can be in flight together
    ds = ray.data.from_items(items, override_num_blocks=blocks)
    ds = ds.map_batches(
        _send_to_engine,
        fn_kwargs={"actors": actors, "params": sampling.params().to_dict()},
        batch_size=b,
        compute=ray.data.TaskPoolStrategy(size=min(blocks, in_flight(spec) * len(actors))),
        num_cpus=0,  # the task only waits; the engine actor holds the tier's CPUs and GPUs
        batch_format="numpy",
    )
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        got = [{k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in batch.items()}
               for i in range(len(batch["id"]))]
        for g in got:
            g["error"] = g["error"] or None
        yield got


def generate(rows: list[dict], spec: ModelSpec, sampling, pool: EnginePool) -> list[dict]:
    """:func:`stream`, collected: one dict per row."""
    return [g for batch in stream(rows, spec, sampling, pool) for g in batch]


class Tally:
    """Requests, tokens and engine nodes of the generations seen, without keeping the generations."""

    def __init__(self, generated: list[dict] = ()):
        self.requests = self.prompt_tokens = self.output_tokens = 0
        self.node_ids: set[str] = set()
        self.add(generated)

    def add(self, batch: list[dict]) -> None:
        for g in batch:
            self.requests += 1
            self.prompt_tokens += g["prompt_tokens"]
            self.output_tokens += g["output_tokens"]
            if g.get("node_id"):
                self.node_ids.add(g["node_id"])

    def add_table(self, table) -> None:
        """:meth:`add` for an Arrow table of generations (the data plane's shards), without Python rows."""
        import pyarrow.compute as pc

        self.requests += table.num_rows
        self.prompt_tokens += pc.sum(table["prompt_tokens"]).as_py() or 0
        self.output_tokens += pc.sum(table["output_tokens"]).as_py() or 0
        self.node_ids |= {n for n in pc.unique(table["node_id"]).to_pylist() if n}

    def tokens(self, tier: str) -> dict:
        """The manifest's ``tokens`` entry for ``tier``."""
        return {tier: {"requests": self.requests, "prompt_tokens": self.prompt_tokens,
                       "output_tokens": self.output_tokens}}

    def nodes(self, tier: str) -> dict:
        """The manifest's ``nodes`` entry for ``tier``: the Ray node ids its engines ran on."""
        return {tier: sorted(self.node_ids)}


def check_endpoints(cfg: JobConfig) -> None:
    """Fail fast, with one line, when a tier's OpenAI-compatible endpoint cannot be reached."""
    from psi_ray.backends import load_backend

    for spec in {cfg.large.model_dump_json(): cfg.large, cfg.generator.model_dump_json(): cfg.generator}.values():
        if spec.backend == "openai":
            load_backend("openai", spec.model, **spec.options).check()
