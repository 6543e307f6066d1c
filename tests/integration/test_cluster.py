"""psi-ray on a real two-node Ray cluster (one machine, token auth on), through the Ray Jobs API.

- A bad config fails fast: ``psi-ray submit`` refuses it before contacting the cluster, and a job submitted
  the ``ray job submit -- psi-ray run bad.yaml`` way (SDK and Ray's CLI) ends FAILED with the field paths in
  its logs; a job that validates here but fails there makes ``psi-ray submit`` exit 1.
- Two-tier placement: the built-in job (shrunk) with ``large.resources {ml_tier: 1}`` and
  ``generator.resources {mg_tier: 1}`` SUCCEEDS via ``psi-ray submit``; the stage manifests show M_L stages on
  the head node (``ml_tier``) and M_g stages on the worker node (``mg_tier``).
- Driver stopped mid-way (``ray job stop``): re-submitting resumes, keeping the finished shards byte for byte;
  then, in the same job, node failure: SIGKILL the worker node during instance generation, start it again; the
  job finishes or is resumed by re-submitting, and ``05_instances`` holds ids 0..N-1 exactly once. (One job
  meets both, so the suite starts one job and one engine fewer.)
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.integration.local_cluster import LocalCluster

pytestmark = pytest.mark.integration

SEEDS = ROOT / "psi_ray" / "data" / "gsm8k_seeds.jsonl"
# jobs/gsm8k_cpu.yaml, shrunk to finish in a few minutes on 2 cores (hf engines start faster than vLLM here).
JOB = """
name: {name}
method: {method}
seed: 0
runs_dir: runs
task: {{adapter: gsm8k, seeds: builtin:gsm8k_seeds.jsonl, num_seeds: 6}}
large: {{model: smollm2-135m, backend: hf, batch_size: 4, options: {{batch_size: 4}}, resources: {{ml_tier: 1}}}}
generator: {{model: smollm2-135m, {generator}, batch_size: 4, resources: {{mg_tier: 1}}}}
expand: {{variants_per_seed: 1, sampling: {{temperature: 0.8, top_p: 1.0, max_tokens: 40}}}}
principles: {{subsets: {subsets}, subset_size: 3, sampling: {{temperature: 0.7, top_p: 1.0, max_tokens: 48}}}}
cluster: {{num_clusters: 1}}  # one valid principle is all a 135M model reliably writes
summarize: {{sampling: {{max_tokens: 32}}}}
instances:
  count: {count}
  examples_per_prompt: 1
  sampling: {{temperature: 0.6, top_p: 1.0, max_tokens: {max_tokens}, stop: ["\\nQuestion:"]}}
shard_size: 4
carbon: {{enabled: false}}
"""


HF = "backend: hf, options: {batch_size: 4}"
VLLM = "backend: vllm"  # engine actors with vLLM's CPU engine in a child process


def write_job(folder, name, method="psi", count=8, max_tokens=40, generator=HF, subsets=2):
    path = folder / f"{name}.yaml"
    path.write_text(JOB.format(name=name, method=method, count=count, max_tokens=max_tokens, generator=generator,
                               subsets=subsets))
    return path


def psi_ray(*args, env, timeout=600):
    return subprocess.run([sys.executable, "-m", "psi_ray.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


def wait_terminal(client, job_id, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = str(client.get_job_status(job_id))
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        time.sleep(2)
    return str(client.get_job_status(job_id))


def instance_ids(stage):
    import pyarrow.parquet as pq

    return [i for p in sorted(stage.glob("part-*.parquet")) for i in pq.read_table(p).column("id").to_pylist()]


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster()
    try:
        c.start_head()
        c.head_id = c.wait_for("ml_tier")
        c.start_worker()
        c.worker_id = c.wait_for("mg_tier")
        yield c
    finally:
        c.stop()


def test_bad_config_fails_fast(cluster, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("instances: {count: 0}\nlarge: {backend: nope}\n")
    client = cluster.client()
    before = len(client.list_jobs())
    local = psi_ray("submit", str(bad), "--address", cluster.address, env=cluster.env, timeout=120)
    assert local.returncode == 2 and "Traceback" not in local.stderr, local.stderr
    assert local.stderr.startswith("psi-ray: error:") and "instances.count" in local.stderr, local.stderr
    assert len(client.list_jobs()) == before  # refused here, never submitted

    started = time.time()
    job_id = client.submit_job(entrypoint="psi-ray run bad.yaml", runtime_env={"working_dir": str(tmp_path)})
    assert wait_terminal(client, job_id, 120) == "FAILED"
    logs = client.get_job_logs(job_id)
    assert "psi-ray: error:" in logs and "instances.count" in logs and "large.backend" in logs, logs
    assert "Traceback" not in logs, logs
    assert time.time() - started < 60, "a bad config must fail before any model or engine starts"

    # the same through Ray's own CLI: `ray job submit -- psi-ray run bad.yaml` follows the job and fails
    ray_cli = subprocess.run([str(Path(sys.executable).parent / "ray"), "job", "submit", "--address",
                              cluster.address, "--working-dir", str(tmp_path), "--", "psi-ray", "run", "bad.yaml"],
                             capture_output=True, text=True, env=cluster.env, timeout=120)
    assert ray_cli.returncode != 0 and "instances.count" in ray_cli.stdout + ray_cli.stderr, ray_cli.stdout

    # valid here, failing there (a seed path only the cluster would hold): submit follows it and exits 1
    elsewhere = tmp_path / "elsewhere.yaml"
    elsewhere.write_text(f"task: {{seeds: {tmp_path / 'no-such-seeds.jsonl'}}}\n")
    res = psi_ray("submit", str(elsewhere), "--address", cluster.address, env=cluster.env, timeout=180)
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-3000:]
    assert "no-such-seeds.jsonl" in res.stdout and re.search(r"psi-ray: error: job \S+ FAILED", res.stderr)


def test_two_tier_job_succeeds_with_tiers_on_their_nodes(cluster, tmp_path):
    # M_g on vLLM, as in jobs/gsm8k_cpu_two_tier.yaml; 4 subsets, so the one cluster survives principles that
    # the 135M M_L fails to write
    job = write_job(tmp_path, "tiers", generator=VLLM, subsets=4)
    # --env with a key psi-ray's own ray.init also sets: submit makes Ray merge them instead of failing
    home = cluster.env.get("PSI_RAY_HOME") or str(Path.home() / ".cache" / "psi-ray")
    res = psi_ray("submit", str(job), "--address", cluster.address, "--no-report", "--env", f"PSI_RAY_HOME={home}",
                  env=cluster.env)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert re.search(r"submitted job raysubmit_\w+", res.stdout) and "SUCCEEDED" in res.stdout, out[-4000:]
    # Worker shutdown noise (multiprocessing's resource tracker in engine actors, killed by Ray before the actor's
    # own clean-up ran) stays out of the followed logs and out of every worker log the job left on both nodes.
    noise = [line for line in out.splitlines() if "KeyError" in line or "resource_tracker" in line]
    for log in Path(cluster.temp_dir).rglob("worker-*.err"):
        noise += [f"{log.name}: {line}" for line in log.read_text(errors="replace").splitlines()
                  if "KeyError" in line or "resource_tracker" in line]
    assert not noise, "\n".join(noise[:20])
    run = tmp_path / "runs" / "tiers-psi"

    def nodes(stage, tier):
        return json.loads((run / stage / "_manifest.json").read_text())["nodes"][tier]

    assert cluster.head_id != cluster.worker_id
    assert nodes("02_principles", "large") == [cluster.head_id]
    assert nodes("04_summarize", "large") == [cluster.head_id]
    assert nodes("01_expand", "generator") == [cluster.worker_id]
    assert nodes("05_instances", "generator") == [cluster.worker_id]
    assert sorted(instance_ids(run / "05_instances")) == [f"inst-{i:07d}" for i in range(8)]

    import pyarrow.parquet as pq

    data = pq.read_table(run / "07_dataset" / "data.parquet")  # may hold few rows: the 135M model is weak
    assert data.schema.names[:2] == ["id", "messages"]
    assert data.num_rows == json.loads((run / "07_dataset" / "_manifest.json").read_text())["valid"]


def submit_until_shards(cluster, job, stage, more_than=0):
    """Submit ``job`` without waiting; return (client, job id) once ``stage`` holds more than ``more_than`` shards."""
    res = psi_ray("submit", str(job), "--address", cluster.address, "--no-report", "--no-wait", env=cluster.env)
    assert res.returncode == 0, res.stdout + res.stderr
    job_id = re.search(r"submitted job (\S+)", res.stdout).group(1)
    client = cluster.client()
    deadline = time.time() + 300
    while time.time() < deadline and len(list(stage.glob("part-*.parquet"))) <= more_than:
        assert str(client.get_job_status(job_id)) in ("PENDING", "RUNNING"), client.get_job_logs(job_id)[-4000:]
        time.sleep(0.5)
    return client, job_id


def test_stopped_then_node_killed_job_resumes_every_shard_once(cluster, tmp_path):
    """Two interruptions of one job, as a long run meets them. The driver is stopped (``ray job stop``) after its
    first shard: re-submitting resumes, keeping the finished shards byte for byte. During that second attempt the
    worker node (M_g's engine) is SIGKILLed and started again: the job finishes, or is resumed by re-submitting,
    and ``05_instances`` holds ids 0..N-1 exactly once, the later shards written on the new node."""
    count = 16
    job = write_job(tmp_path, "restart", method="student", count=count, max_tokens=32)
    stage = tmp_path / "runs" / "restart-student" / "05_instances"
    client, job_id = submit_until_shards(cluster, job, stage)
    client.stop_job(job_id)
    assert wait_terminal(client, job_id, 60) == "STOPPED"
    done = {p.name: p.read_bytes() for p in stage.glob("part-*.parquet")}
    assert 1 <= len(done) < count // 4 and not (stage / "_manifest.json").exists()

    client, job_id = submit_until_shards(cluster, job, stage, more_than=len(done))
    second = job_id
    parts_before = len(list(stage.glob("part-*.parquet")))
    assert parts_before < count // 4, "the kill must land during instance generation"
    old_worker = cluster.worker_id
    cluster.kill("worker")  # SIGKILL: the node's raylet, its engine actor and its object store die at once
    cluster.start_worker()
    deadline = time.time() + 120
    while (new_worker := cluster.node_with("mg_tier")) in (None, old_worker) and time.time() < deadline:
        time.sleep(1)
    assert new_worker not in (None, old_worker)
    cluster.worker_id = new_worker

    status = wait_terminal(client, job_id, 300)
    print(f"after the node kill the resumed job ended {status}")
    assert "resuming" in client.get_job_logs(second), client.get_job_logs(second)[-4000:]
    if status != "SUCCEEDED":  # resume again: re-submitting the same job re-does only the unfinished shards
        if status not in ("FAILED", "STOPPED"):
            client.stop_job(job_id)
            wait_terminal(client, job_id, 60)
        again = psi_ray("submit", str(job), "--address", cluster.address, "--no-report", env=cluster.env)
        assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
        assert "resuming" in again.stdout and "[seeds] done already" in again.stdout, again.stdout[-4000:]
    assert all((stage / name).read_bytes() == data for name, data in done.items())  # finished shards kept
    assert sorted(instance_ids(stage)) == [f"inst-{i:07d}" for i in range(count)]  # none lost, none twice
    manifest = json.loads((stage / "_manifest.json").read_text())
    assert manifest["rows"] == manifest["unique_ids"] == count and manifest["resumed_shards"] >= len(done)
    assert new_worker in manifest["nodes"]["generator"]  # the shards after the kill came from the new node
    assert set(manifest["nodes"]["generator"]) <= {old_worker, new_worker}
