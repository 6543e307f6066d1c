"""Run-directory integrity: unfinished parts are never mixed across configs, seeds are digested by content,
one driver holds a run directory, checkpoints holding code are refused, and a model export swaps whole folders.
No Ray, no engine: ``Run.stage`` with a compute function written here."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import pytest

from psi_ray.config import JobConfig
from psi_ray.errors import PsiRayError
from psi_ray.pipeline import Run, StageResult, seeds_stage
from psi_ray.rundir import STAMP, StageDir, locked
from tests.conftest import ROOT


def job(tmp_path, **kw) -> JobConfig:
    return JobConfig(runs_dir=str(tmp_path / "runs"), carbon={"enabled": False}, **kw)


class Killed(Exception):
    """Stands for the SIGKILL that stops a run after its first shard."""


def shards(r: Run, sd: StageDir, n: int, stop_after: int | None = None):
    """Write ``n`` rows as parts of ``r.cfg.shard_size`` rows each (ids ``inst-i``), as instance generation
    does: parts already on disk are kept, so a resumed run only writes the rest."""
    size = r.cfg.shard_size
    for part, start in enumerate(range(0, n, size)):
        if part in sd.parts():
            continue
        if stop_after is not None and part >= stop_after:
            raise Killed
        sd.write_part(part, [{"id": f"inst-{i}"} for i in range(start, min(n, start + size))])
    return StageResult(None, {"rows": n})


def instances(r: Run, stop_after: int | None = None) -> StageDir:
    return r.stage("instances", ("instances", "shard_size"), lambda sd: shards(r, sd, 10, stop_after))


def test_changed_shard_size_is_refused_not_mixed(tmp_path):
    with pytest.raises(Killed):
        instances(Run(job(tmp_path, shard_size=5)), stop_after=1)  # one shard of 5 written, then killed
    with pytest.raises(PsiRayError, match="holds unfinished parts made with a different config") as err:
        instances(Run(job(tmp_path, shard_size=2)))
    assert "\n" not in str(err.value) and "05_instances" in str(err.value)
    sd = instances(Run(job(tmp_path, shard_size=5)))  # the same config resumes
    ids = sd.read_column("id")
    assert sorted(ids) == sorted(f"inst-{i}" for i in range(10)) and len(ids) == len(set(ids))


def test_parts_without_a_stamp_are_refused(tmp_path):
    r = Run(job(tmp_path))
    StageDir(r.dir, 5, "instances").write_part(0, [{"id": "inst-0"}])  # left by something that stamped nothing
    with pytest.raises(PsiRayError, match=r"digest unknown"):
        instances(r)


def test_the_stamp_is_invisible_to_arrow_readers(tmp_path):
    import pyarrow.dataset as pads

    sd = instances(Run(job(tmp_path, shard_size=5)))
    assert (sd.path / STAMP).exists()
    assert pads.dataset(sd.path, format="parquet", exclude_invalid_files=False,
                        ignore_prefixes=[".", "_", "manifest"]).count_rows() == 10


def test_seed_digest_follows_the_content_not_the_path(tmp_path):
    from psi_ray.stages import seeds

    path = tmp_path / "seeds.jsonl"
    rows = [{"question": f"Ann has {i} apples and buys 4 more. How many does she have now?",
             "answer": f"{i} + 4 = {i + 4}\n#### {i + 4}"} for i in range(12)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = job(tmp_path, task={"seeds": str(path)})
    seeds_stage(Run(cfg), seeds.load(cfg))
    seeds_stage(Run(cfg), seeds.load(cfg))  # same content: done already
    rows[3]["question"] = "Ann has 3 pears and buys 4 more. How many does she have now?"  # same path, edited
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(PsiRayError, match="made with a different config"):
        seeds_stage(Run(cfg), seeds.load(cfg))


def test_a_second_driver_on_a_locked_run_dir_fails_fast(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom psi_ray.rundir import locked\n"
                               f"with locked({str(tmp_path)!r}):\n    print('held', flush=True)\n    time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(PsiRayError, match=rf"is in use by another psi-ray run \(pid {holder.pid} on "):
            with locked(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    with locked(tmp_path):  # the kernel dropped the killed holder's lock: no stale lock
        pass


def test_a_crafted_optimizer_pickle_is_refused(tmp_path):
    from psi_ray.train.loop import read_optimizer_state

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "optimizer.pt"
    path.write_bytes(pickle.dumps({"optimizer": Payload()}, protocol=2))
    with pytest.raises(PsiRayError, match="refused: not a plain tensor checkpoint"):
        read_optimizer_state(path)
    assert not marker.exists()

    import torch

    torch.save({"optimizer": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": []},
                "scheduler": {"last_epoch": 3}}, path)
    assert read_optimizer_state(path)["scheduler"] == {"last_epoch": 3}


def test_export_replaces_a_model_folder_whole(tiny_model, tmp_path):
    from psi_ray.train.run import export

    target = tmp_path / "model"
    export(tiny_model, str(tiny_model), target, lora=False)
    (target / "stale.txt").write_text("from the previous export")
    export(tiny_model, str(tiny_model), target, lora=False)
    assert (target / "config.json").exists() and not (target / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp or old folder left
