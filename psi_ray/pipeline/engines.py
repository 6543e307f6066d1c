"""Engine actors: prompts stream through Ray Data ``map_batches`` into actors that each hold one backend.

:func:`generate` places the actors with the tier's Ray resources (an engine lives only for its stage) and
hands every result batch to ``on_batch`` as it arrives, so instance generation can write shards while the
rest is still being generated.
"""

from __future__ import annotations

import json
import time

from psi_ray.config import JobConfig, ModelSpec
from psi_ray.runtime import ENGINE_ACTOR_ENV


class GenerateUDF:
    """A Ray Data actor holding one engine: prompts in (JSON chat messages), generations out."""

    def __init__(self, spec: dict, params: dict):
        import ray

        from psi_ray.backends import SamplingParams, load_backend

        self.backend = load_backend(spec["backend"], spec["model"], **spec["options"])
        self.params = SamplingParams(**params)
        self.node_id = ray.get_runtime_context().get_node_id()
        self.ready_at = time.time()  # lets benchmarks separate engine start-up from generation

    def __call__(self, batch: dict) -> dict:
        prompts = [json.loads(p) for p in batch["prompt"]]
        gens = self.backend.generate(prompts, self.params)
        return {
            "id": list(batch["id"]),
            "raw_output": [g.text for g in gens],
            "finish_reason": [g.finish_reason or "" for g in gens],
            "prompt_tokens": [g.prompt_tokens for g in gens],
            "output_tokens": [g.output_tokens for g in gens],
            "error": [g.error or "" for g in gens],
            "node_id": [self.node_id] * len(gens),
            "engine_ready_at": [self.ready_at] * len(gens),
        }


def generate(rows: list[dict], spec: ModelSpec, sampling, on_batch=None) -> list[dict]:
    """Run ``rows`` (``id``, ``prompt``) through engine actors of tier ``spec``; return one dict per row.

    ``on_batch`` sees each result batch as it arrives (instance generation writes shards from it).
    """
    import ray

    if not rows:
        return []
    items = [{"id": r["id"], "prompt": json.dumps(r["prompt"])} for r in rows]
    spec_d = {"backend": spec.backend, "model": spec.model, "options": spec.options}
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // spec.batch_size, 64)))
    ds = ds.map_batches(
        GenerateUDF,
        fn_constructor_kwargs={"spec": spec_d, "params": sampling.params().to_dict()},
        batch_size=spec.batch_size,
        compute=ray.data.ActorPoolStrategy(size=spec.replicas),
        num_cpus=spec.num_cpus,
        num_gpus=spec.num_gpus,
        resources=spec.resources or None,
        batch_format="numpy",
        runtime_env={"env_vars": ENGINE_ACTOR_ENV},
    )
    out: list[dict] = []
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        got = [{k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in batch.items()}
               for i in range(len(batch["id"]))]
        for g in got:
            g["error"] = g["error"] or None
        out.extend(got)
        if on_batch:
            on_batch(got)
    return out


def tokens_by_tier(generated: list[dict], tier: str) -> dict:
    return {tier: {"requests": len(generated), "prompt_tokens": sum(g["prompt_tokens"] for g in generated),
                   "output_tokens": sum(g["output_tokens"] for g in generated)}}


def nodes_of(generated: list[dict]) -> list[str]:
    return sorted({g["node_id"] for g in generated if g.get("node_id")})


def check_endpoints(cfg: JobConfig) -> None:
    """Fail fast, with one line, when a tier's OpenAI-compatible endpoint cannot be reached."""
    from psi_ray.backends import load_backend

    for spec in {cfg.large.model_dump_json(): cfg.large, cfg.generator.model_dump_json(): cfg.generator}.values():
        if spec.backend == "openai":
            load_backend("openai", spec.model, **spec.options).check()
