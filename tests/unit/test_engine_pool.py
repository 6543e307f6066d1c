"""Engine reuse: one engine per distinct engine spec, shared by the stages that use it, stopped after the last
of them; a stage's manifest says how long it spent starting engines; an engine that cannot start is one line.
Real Ray actors and the hf backend on the tiny random model."""

from __future__ import annotations

import pytest

from psi_ray.config import JobConfig, ModelSpec, Sampling
from psi_ray.errors import PsiRayError
from psi_ray.pipeline import EnginePool, Run, StageResult, engine_pool, generate
from psi_ray.pipeline.psi import engine_uses
from psi_ray.rundir import StageDir

SAMPLING = Sampling(temperature=0.0, max_tokens=4)


def rows(n: int, tag: str = "r") -> list[dict]:
    return [{"id": f"{tag}-{i}", "prompt": [{"role": "user", "content": f"What is {i} + 3?"}]} for i in range(n)]


def spec(model, **kw) -> ModelSpec:
    return ModelSpec(model=str(model), backend="hf", num_cpus=0, **kw)


def stopped(actors, within: float = 30) -> bool:
    """True once every actor is dead (``ray.kill`` takes effect asynchronously)."""
    import time

    deadline = time.time() + within
    while time.time() < deadline:
        if all(_dead(a) for a in actors):
            return True
        time.sleep(0.5)
    return False


def _dead(actor) -> bool:
    import ray

    try:
        ray.get(actor.ready.remote(), timeout=10)
        return False
    except ray.exceptions.RayActorError:
        return True


def test_tiers_that_differ_only_in_batch_size_share_one_engine(ray_session, tiny_model):
    """Also what vLLM's CPU guide asks for: the engine process has tcmalloc and Intel OpenMP mapped (checked
    on this engine rather than on one started for it alone, which cost the suite 20 s)."""
    import ray

    from psi_ray.runtime import engine_preload

    with engine_pool() as pool:
        got = generate(rows(5), spec(tiny_model, batch_size=2), SAMPLING, pool)
        first_start = pool.start_s
        again = generate(rows(3, "s"), spec(tiny_model, batch_size=64), SAMPLING, pool)
        assert len(pool.actors) == 1 and pool.start_s == first_start > 0  # no second start
        assert sorted(g["id"] for g in got) == [f"r-{i}" for i in range(5)]
        assert sorted(g["id"] for g in again) == ["s-0", "s-1", "s-2"]
        assert all(g["error"] is None and g["output_tokens"] > 0 for g in got + again)
        actors = next(iter(pool.actors.values()))
        maps = ray.get(actors[0].__ray_call__.remote(lambda self: open("/proc/self/maps").read()))
    assert pool.actors == {} and stopped(actors)  # stopped on the way out
    libs = engine_preload()  # empty where neither libtcmalloc-minimal4 nor intel-openmp is installed
    assert all(lib in maps for lib in libs)


def test_replicas_share_the_batches(ray_session, tiny_model):
    with engine_pool() as pool:
        got = generate(rows(8), spec(tiny_model, batch_size=2, replicas=2), SAMPLING, pool)
        assert len(next(iter(pool.actors.values()))) == 2
    assert sorted(g["id"] for g in got) == sorted(r["id"] for r in rows(8))


def test_an_engine_is_stopped_after_the_last_stage_that_uses_it(ray_session, tiny_model, tmp_path):
    """M_g for expand, M_L for principles and summarize: M_g's engine goes after expand, M_L's after summarize;
    only the stage that started an engine records engine_start_s."""
    gen, large = spec(tiny_model, batch_size=4), spec(tiny_model, batch_size=4, options={"batch_size": 2})
    cfg = JobConfig(runs_dir=str(tmp_path / "runs"), carbon={"enabled": False})
    r = Run(cfg, [("expand", gen), ("principles", large), ("summarize", large)])
    seen = {}

    def stage(name, tier):
        def compute(sd):
            generate(rows(2, name), tier, SAMPLING, r.engines)
            seen[name] = {k: list(v) for k, v in r.engines.actors.items()}
            return StageResult([{"id": name}])
        return r.stage(name, (), compute)

    m_g = stage("expand", gen)
    assert len(r.engines.actors) == 0  # M_g's engine is gone: no later stage uses it
    assert stopped(next(iter(seen["expand"].values())))
    stage("principles", large)
    assert len(r.engines.actors) == 1  # M_L stays for summarize
    stage("summarize", large)
    assert r.engines.actors == {} and stopped(next(iter(seen["summarize"].values())))
    manifests = [manifest(r, n) for n in ("expand", "principles", "summarize")]
    assert manifests[0]["engine_start_s"] > 0 and manifests[1]["engine_start_s"] > 0
    assert "engine_start_s" not in manifests[2]  # reused M_L's engine
    assert m_g.read() == [{"id": "expand"}]


def manifest(r: Run, name: str) -> dict:
    return StageDir.named(r.dir, name).manifest()


def test_an_engine_that_cannot_start_is_one_line_and_leaves_nothing_running(ray_session, tmp_path):
    pool = EnginePool()
    with pytest.raises(PsiRayError, match=r"^the engine could not start: .*no-such-model") as err:
        pool.actors_for(spec(tmp_path / "no-such-model"))
    assert "\n" not in str(err.value) and pool.actors == {}


def test_engine_uses_follow_the_method():
    psi = JobConfig()
    assert [s for s, _ in engine_uses(psi)] == ["expand", "principles", "summarize", "instances"]
    teacher = JobConfig(method="teacher", verify={"enabled": True, "tier": "generator"})
    assert [(s, t.model_dump() == teacher.large.model_dump()) for s, t in engine_uses(teacher)[:1]] == \
        [("instances", True)]
    assert [s for s, _ in engine_uses(teacher)] == ["instances", "verify"]
    curated = JobConfig(principles={"source": "file", "file": "p.yaml"})
    assert [s for s, _ in engine_uses(curated)] == ["instances"]


def test_preload_can_be_switched_off_and_keeps_the_users_own(monkeypatch):
    from psi_ray.runtime import engine_actor_env, engine_preload

    monkeypatch.setenv("LD_PRELOAD", "/opt/mine.so")
    assert engine_actor_env()["LD_PRELOAD"].split(":")[-1] == "/opt/mine.so"
    assert engine_actor_env()["LD_PRELOAD"].split(":")[:-1] == engine_preload()
    monkeypatch.setenv("LD_PRELOAD", "/torch/lib/libgomp-a34b3233.so.1")  # vLLM refuses two OpenMP runtimes
    assert not any("libiomp" in p for p in engine_actor_env()["LD_PRELOAD"].split(":"))
    monkeypatch.setenv("LD_PRELOAD", "/opt/mine.so")
    monkeypatch.setenv("PSI_RAY_PRELOAD", "0")
    assert engine_preload() == [] and engine_actor_env()["LD_PRELOAD"] == "/opt/mine.so"
    monkeypatch.delenv("LD_PRELOAD")
    assert "LD_PRELOAD" not in engine_actor_env()


def test_tally_counts_what_streamed_past():
    from psi_ray.pipeline import Tally

    t = Tally([{"prompt_tokens": 3, "output_tokens": 5, "node_id": "b"}])
    t.add([{"prompt_tokens": 1, "output_tokens": 0, "node_id": "a"}, {"prompt_tokens": 2, "output_tokens": 4}])
    assert t.tokens("generator") == {"generator": {"requests": 3, "prompt_tokens": 6, "output_tokens": 9}}
    assert t.nodes("generator") == {"generator": ["a", "b"]}


def test_a_vllm_engine_gets_enough_batches_to_fill_its_running_batch():
    """vLLM runs every call's requests as one batch (up to 256 sequences on CPU): it is sent enough batches to
    fill that, plus one; an engine that takes one call at a time gets one generating and one queued."""
    from psi_ray.pipeline.engines import in_flight

    vllm = {b: in_flight(ModelSpec(backend="vllm", batch_size=b)) for b in (32, 128, 256, 1024)}
    assert vllm == {32: 9, 128: 3, 256: 2, 1024: 2}
    assert in_flight(ModelSpec(backend="hf", batch_size=32)) == 2
