"""Resume, on the generic adapter with curated principles (which skip M_L): SIGKILL a run during instance
generation; re-run it with another ``shard_size``: refused with one line, nothing written; re-run it as it was:
no duplicate or missing ids, and the finished stages are not recomputed (their manifests unchanged). The
finished run is then checked as a generic run: the repetitive principle is rejected and counted, and no kept
row carries another adapter's labels. (One run serves both, so the suite starts one run fewer.)"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration

PRINCIPLES = ("- Answer exactly what the instruction asks, in full sentences.\n"
              "- Keep every fact in the answer consistent with the instruction.\n"
              "- Study how new answers answer a classic classic classic classic step.\n")

JOB = """
name: resume
runs_dir: runs
task: {{adapter: generic, seeds: builtin:generic_seeds.jsonl, num_seeds: 8}}
principles: {{source: file, file: {principles}}}
generator: {{model: smollm2-135m, backend: hf, batch_size: 4, options: {{batch_size: 4}}}}
instances:
  count: 12
  examples_per_prompt: 1
  sampling: {{temperature: 0.7, max_tokens: 32}}
shard_size: 4
carbon: {{enabled: false}}
"""


def start(job, log):
    return subprocess.Popen([sys.executable, "-m", "psi_ray.cli", "run", str(job)], stdout=log, stderr=subprocess.STDOUT,
                            cwd=ROOT, start_new_session=True)


def test_kill_and_resume_a_generic_run(tmp_path):
    principles = tmp_path / "principles.yaml"
    principles.write_text(PRINCIPLES)
    job = tmp_path / "job.yaml"
    job.write_text(JOB.format(principles=principles))
    run = tmp_path / "runs" / "resume-psi"
    stage = run / "05_instances"
    with open(tmp_path / "first.log", "w") as log:
        proc = start(job, log)
        deadline = time.time() + 400
        while time.time() < deadline and not list(stage.glob("part-*.parquet")) and proc.poll() is None:
            time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    parts_before = sorted(p.name for p in stage.glob("part-*.parquet"))
    assert 1 <= len(parts_before) < 3, (tmp_path / "first.log").read_text()[-3000:]
    assert not (stage / "_manifest.json").exists()
    seeds_manifest = (run / "00_seeds" / "_manifest.json").read_text()
    part_bytes = {p: (stage / p).read_bytes() for p in parts_before}

    other = tmp_path / "other.yaml"  # the same job with shards of 2: its ids would overlap the parts on disk
    other.write_text(job.read_text().replace("shard_size: 4", "shard_size: 2"))
    res = subprocess.run([sys.executable, "-m", "psi_ray.cli", "run", str(other)], capture_output=True, text=True,
                         cwd=ROOT, timeout=600)
    errors = [line for line in res.stderr.splitlines() if line.startswith("psi-ray: error:")]
    assert res.returncode == 2 and len(errors) == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert "unfinished parts made with a different config" in errors[0] and "05_instances" in errors[0]
    assert sorted(p.name for p in stage.glob("part-*.parquet")) == parts_before  # nothing added or removed

    res = subprocess.run([sys.executable, "-m", "psi_ray.cli", "run", str(job)], capture_output=True, text=True,
                         cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "done already" in res.stdout and "resuming" in res.stdout
    assert (run / "00_seeds" / "_manifest.json").read_text() == seeds_manifest
    assert all((stage / p).read_bytes() == b for p, b in part_bytes.items())  # finished shards kept as they were

    import pyarrow.parquet as pq

    ids = [i for p in sorted(stage.glob("part-*.parquet")) for i in pq.read_table(p).column("id").to_pylist()]
    assert sorted(ids) == [f"inst-{i:07d}" for i in range(12)]
    manifest = json.loads((stage / "_manifest.json").read_text())
    assert manifest["resumed_shards"] == len(parts_before) and manifest["rows"] == 12

    from psi_ray.rundir import StageDir

    low = json.loads((run / "02_principles" / "_manifest.json").read_text())
    assert low["kept"] == 2 and low["rejected"] == {"repetition": 1}
    assert not (run / "01_expand").exists() and not (run / "03_cluster").exists()
    assert [h["principle_id"] for h in StageDir(run, 4, "summarize").read()] == ["H00", "H01"]
    inst = StageDir(run, 5, "instances").read()
    assert all(set(r["principle_ids"]) <= {"H00", "H01"} and r["principle_ids"] for r in inst)
    # The model may write "Question:" into an instance (the 135M model once did): the filter keeps it out of the
    # dataset. The prompts' own labels are pinned by the golden prompts.
    for row in pq.read_table(run / "07_dataset" / "data.parquet").to_pylist():
        for m in row["messages"]:
            assert "Question:" not in m["content"] and "Answer:" not in m["content"]
