"""Resume: SIGKILL a run during instance generation, re-run it: no duplicate or missing ids, and the
finished stages are not recomputed (their manifests unchanged). The job closes the loop as ``make run`` does
(train and eval enabled, here on a tiny M_t), so the resumed ``psi-ray run`` also trains, serves and scores, and
its report shows the scores."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration

JOB = """
name: resume
method: student
runs_dir: runs
task: {{adapter: gsm8k, seeds: {seeds}, num_seeds: 8}}
generator: {{model: smollm2-135m, backend: hf, batch_size: 4, options: {{batch_size: 4}}}}
instances:
  count: 16
  examples_per_prompt: 1
  sampling: {{temperature: 0.7, max_tokens: 128}}
shard_size: 4
carbon: {{enabled: false}}
train: {{enabled: true, model: {tiny}, epochs: 1, batch_size: 1, num_workers: 1, lr: 1e-3}}
eval: {{enabled: true, tasks: [gsm8k], limit: 2, max_gen_tokens: 8, concurrency: 2}}
"""


def start(job, log):
    return subprocess.Popen([sys.executable, "-m", "psi_ray.cli", "run", str(job)], stdout=log, stderr=subprocess.STDOUT,
                            cwd=ROOT, start_new_session=True)


def test_kill_and_resume(tmp_path, tiny_model):
    job = tmp_path / "job.yaml"
    job.write_text(JOB.format(seeds=ROOT / "psi_ray" / "data" / "gsm8k_seeds.jsonl", tiny=tiny_model))
    stage = tmp_path / "runs" / "resume-student" / "05_instances"
    with open(tmp_path / "first.log", "w") as log:
        proc = start(job, log)
        deadline = time.time() + 400
        while time.time() < deadline and not list(stage.glob("part-*.parquet")) and proc.poll() is None:
            time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    parts_before = sorted(p.name for p in stage.glob("part-*.parquet"))
    assert 1 <= len(parts_before) < 4, (tmp_path / "first.log").read_text()[-3000:]
    assert not (stage / "manifest.json").exists()
    seeds_manifest = (tmp_path / "runs" / "resume-student" / "00_seeds" / "manifest.json").read_text()
    part_bytes = {p: (stage / p).read_bytes() for p in parts_before}

    res = subprocess.run([sys.executable, "-m", "psi_ray.cli", "run", str(job)], capture_output=True, text=True,
                         cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "done already" in res.stdout and "resuming" in res.stdout
    assert (tmp_path / "runs" / "resume-student" / "00_seeds" / "manifest.json").read_text() == seeds_manifest
    assert all((stage / p).read_bytes() == b for p, b in part_bytes.items())  # finished shards kept as they were

    import pyarrow.parquet as pq

    ids = [i for p in sorted(stage.glob("part-*.parquet")) for i in pq.read_table(p).column("id").to_pylist()]
    assert sorted(ids) == [f"inst-{i:07d}" for i in range(16)]
    manifest = json.loads((stage / "manifest.json").read_text())
    assert manifest["resumed_shards"] == len(parts_before) and manifest["rows"] == 16

    # The closing stages ran after the resumed data stages, on the kept rows, and the report reads their scores.
    run = tmp_path / "runs" / "resume-student"
    kept = json.loads((run / "07_dataset" / "manifest.json").read_text())["valid"]
    trained = json.loads((run / "08_train" / "manifest.json").read_text())
    assert kept >= 1 and trained["rows"] == kept and trained["steps"] == kept  # batch 1, one worker, one epoch
    assert (run / "08_train" / "model" / "config.json").exists()
    scores = json.loads((run / "09_eval" / "scores.json").read_text())
    assert scores["limit"] == 2 and set(scores["models"]) == {"base", "finetuned"}
    assert all(set(v) == {"base", "finetuned"} for v in scores["tasks"].values())
    assert "## Evaluation scores" in (run / "report.md").read_text()
