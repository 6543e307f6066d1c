"""Every manifest under ``cluster/`` and every job under ``jobs/`` parses and fits together.

Jobs load through ``psi_ray.config.load_config``. Cluster manifests get a structural check: KubeRay
``RayCluster`` / ``RayJob`` / ``RayService`` (apiVersion ``ray.io/v1``, the Ray version psi-ray pins, token auth,
exactly two GPU worker groups, one offering ``ml_tier`` and one ``mg_tier``), the ``ray up`` config (node types
offering the same resources), and that every job pinning a tier asks only for resources, GPUs and replicas the
cluster offers. GPU jobs state their expected resources in their comment header.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from psi_ray.config import load_config
from tests.conftest import ROOT

JOBS = sorted((ROOT / "jobs").glob("*.yaml"))
CLUSTER = ROOT / "cluster"
KUBERAY = {"RayCluster": ("spec",), "RayJob": ("spec", "rayClusterSpec"), "RayService": ("spec", "rayClusterConfig")}
TIERS = {"ml_tier", "mg_tier"}


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def kuberay_docs() -> list[tuple[str, dict]]:
    return [(p.name, d) for p in sorted(CLUSTER.glob("*.yaml")) for d in docs(p) if d.get("kind") in KUBERAY]


def cluster_spec(doc: dict) -> dict:
    spec = doc
    for key in KUBERAY[doc["kind"]]:
        spec = spec[key]
    return spec


def start_resources(group: dict) -> dict:
    """KubeRay's ``rayStartParams.resources`` is a JSON object wrapped in quotes, backslashes kept literally."""
    raw = group.get("rayStartParams", {}).get("resources")
    if raw is None:
        return {}
    assert raw.startswith('"') and raw.endswith('"'), f"resources must be quoted the KubeRay way: {raw!r}"
    return json.loads(raw[1:-1].replace('\\"', '"'))


def gpus(group: dict) -> int:
    limits = [c.get("resources", {}).get("limits", {}) for c in group["template"]["spec"]["containers"]]
    return sum(int(x.get("nvidia.com/gpu", 0)) for x in limits)


def offered() -> dict[str, dict]:
    """Per tier resource: GPUs per node and the most nodes, over the KubeRay clusters and the ray up config."""
    out: dict[str, dict] = {}
    for _, doc in kuberay_docs():
        for g in cluster_spec(doc)["workerGroupSpecs"]:
            for res in start_resources(g):
                o = out.setdefault(res, {"gpus": gpus(g), "nodes": 0})
                o["nodes"] = max(o["nodes"], g["maxReplicas"])
    return out


def test_cluster_folder_holds_the_three_kuberay_kinds_and_ray_up():
    kinds = {d["kind"] for _, d in kuberay_docs()}
    assert kinds == set(KUBERAY)
    assert (CLUSTER / "ray-up.yaml").is_file() and (CLUSTER / "README.md").is_file()


@pytest.mark.parametrize("name,doc", kuberay_docs(), ids=[f"{n}:{d['kind']}" for n, d in kuberay_docs()])
def test_kuberay_manifest_structure(name, doc):
    import ray

    assert doc["apiVersion"] == "ray.io/v1" and doc["metadata"]["name"]
    spec = cluster_spec(doc)
    assert spec["rayVersion"] == ray.__version__, "pods must run the Ray version psi-ray pins"
    assert spec.get("authOptions", {}).get("mode") == "token", "Ray 2.60 token auth stays on"
    head = spec["headGroupSpec"]
    assert head["rayStartParams"].get("num-cpus") == "0", "the head runs the driver only"
    images = {c["image"] for c in head["template"]["spec"]["containers"]}
    groups = spec["workerGroupSpecs"]
    assert len(groups) == 2 and len({g["groupName"] for g in groups}) == 2
    tiers = []
    for g in groups:
        res = start_resources(g)
        assert set(res) <= TIERS and len(res) == 1, f"{g['groupName']}: one tier resource, got {res}"
        tiers.extend(res)
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
        assert gpus(g) >= 1, f"{g['groupName']} has no GPU limit"
        images |= {c["image"] for c in g["template"]["spec"]["containers"]}
    assert sorted(tiers) == sorted(TIERS)
    assert len(images) == 1, f"head and workers must run one image, got {images}"
    by_tier = {next(iter(start_resources(g))): g for g in groups}
    assert "large" in by_tier["ml_tier"]["groupName"] and "small" in by_tier["mg_tier"]["groupName"]


def test_rayjob_runs_a_shipped_job_that_the_cluster_can_hold():
    [(_, job)] = [(n, d) for n, d in kuberay_docs() if d["kind"] == "RayJob"]
    words = job["spec"]["entrypoint"].split()
    assert words[:2] == ["psi-ray", "run"] and words[2].startswith("/app/jobs/")
    path = ROOT / "jobs" / Path(words[2]).name
    cfg = load_config(path)
    groups = {next(iter(start_resources(g))): g for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]}
    for spec in (cfg.large, cfg.generator):
        [tier] = spec.resources
        g = groups[tier]
        assert spec.num_gpus <= gpus(g) and spec.replicas * spec.resources[tier] <= g["maxReplicas"]


def test_rayservice_serves_psi_ray_app():
    [(_, svc)] = [(n, d) for n, d in kuberay_docs() if d["kind"] == "RayService"]
    serve = yaml.safe_load(svc["spec"]["serveConfigV2"])
    [app] = serve["applications"]
    assert app["import_path"] == "psi_ray.serve.app:build_app" and app["args"]["model"].startswith("/data/")
    from psi_ray.serve.args import ServeArgs

    ServeArgs.model_validate(app["args"])  # every key the manifest passes is one the builder takes


def test_rayservice_requires_a_key_from_a_secret():
    """The served app checks a bearer key, and every pod reads it from the Secret, so the
    builder finds it wherever Serve runs it."""
    [(_, svc)] = [(n, d) for n, d in kuberay_docs() if d["kind"] == "RayService"]
    [app] = yaml.safe_load(svc["spec"]["serveConfigV2"])["applications"]
    var = app["args"]["api_key_env"]
    assert var
    from psi_ray.serve.args import ServeArgs

    # Serve builds the app on the head (no GPU): the replicas' GPU must be stated, or vLLM would get CPU settings.
    args = ServeArgs.model_validate(app["args"])
    assert args.on_gpu() and args.num_gpus >= 1
    cluster = svc["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]
    for pod in pods:
        for container in pod["spec"]["containers"]:
            [env] = [e for e in container["env"] if e["name"] == var]
            ref = env["valueFrom"]["secretKeyRef"]
            assert ref["name"] and ref["key"] and not ref.get("optional"), container["name"]
            assert "value" not in env  # never the key itself in the manifest


def test_ray_up_config_structure():
    cfg = yaml.safe_load((CLUSTER / "ray-up.yaml").read_text())
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "max_workers"):
        assert key in cfg, key
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types and types[cfg["head_node_type"]]["resources"].get("CPU") == 0
    workers = {k: v for k, v in types.items() if k != cfg["head_node_type"]}
    assert len(workers) == 2
    tiers = {t: v for v in workers.values() for t in v["resources"] if t in TIERS}
    assert set(tiers) == TIERS and all(v["resources"]["GPU"] >= 1 for v in workers.values())
    assert sum(v["max_workers"] for v in workers.values()) <= cfg["max_workers"]
    assert all(0 <= v["min_workers"] <= v["max_workers"] for v in workers.values())
    assert any("ray start --head" in c for c in cfg["head_start_ray_commands"])


@pytest.mark.parametrize("path", JOBS, ids=[p.name for p in JOBS])
def test_every_job_validates_and_fits_the_cluster(path):
    cfg = load_config(path)
    header = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
    tiers = offered()
    for spec in (cfg.large, cfg.generator):
        assert set(spec.resources) <= TIERS, f"{path.name}: unknown Ray resources {spec.resources}"
        for tier in spec.resources:
            if path.stem.endswith("_gpu"):
                assert spec.num_gpus <= tiers[tier]["gpus"] and spec.replicas <= tiers[tier]["nodes"]
    if path.stem.endswith("_gpu"):
        assert "Expected resources" in header, f"{path.name}: state the expected resources in the header"
        assert cfg.large.num_gpus >= 1 and cfg.generator.num_gpus >= 1
    else:
        assert cfg.large.num_gpus == 0 and cfg.generator.num_gpus == 0, f"{path.name}: CPU jobs ask for no GPU"


def test_two_tier_jobs_exist():
    pinned = {p.name for p in JOBS if load_config(p).large.resources.get("ml_tier")
              and load_config(p).generator.resources.get("mg_tier")}
    assert {"gsm8k_cpu_two_tier.yaml", "scale_100k_gpu.yaml"} <= pinned
