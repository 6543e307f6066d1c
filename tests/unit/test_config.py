"""Config: every shipped YAML validates; bad files report every problem at once with its path or line."""

from pathlib import Path

import pytest

from psi_ray.config import JobConfig, load_config
from psi_ray.errors import PsiRayError
from tests.conftest import ROOT, run_cli

JOB_FILES = sorted((ROOT / "jobs").glob("*.yaml"))


@pytest.mark.parametrize("path", JOB_FILES, ids=[p.name for p in JOB_FILES])
def test_every_job_validates(path):
    cfg = load_config(path)
    assert cfg.instances.count >= 1


def test_all_errors_reported_at_once(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("instances: {count: -1}\nprinciples: {subsets: 0}\nlarge: {backend: nope}\nunknown_key: 1\n")
    with pytest.raises(PsiRayError) as exc:
        load_config(bad)
    msg = str(exc.value)
    for path in ("instances.count", "principles.subsets", "large.backend", "unknown_key"):
        assert path in msg


def test_malformed_yaml_names_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ninstances: [unclosed\n")
    with pytest.raises(PsiRayError, match=r"bad.yaml:\d+:\d+: malformed YAML"):
        load_config(bad)


def test_validate_cli_exit_codes(tmp_path):
    good = run_cli("validate", str(JOB_FILES[0]))
    assert good.returncode == 0 and "ok" in good.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: not-a-number\n")
    res = run_cli("validate", str(bad))
    assert res.returncode == 2 and "seed" in res.stderr and "Traceback" not in res.stderr


def test_relative_paths_resolve_against_the_job_file(tmp_path):
    (tmp_path / "job.yaml").write_text("task: {seeds: data/seeds.jsonl}\n")
    cfg = load_config(tmp_path / "job.yaml")
    assert cfg.path(cfg.task.seeds) == tmp_path / "data" / "seeds.jsonl"
    assert JobConfig().path("builtin:gsm8k_seeds.jsonl").exists()


def test_digest_follows_config():
    a, b = JobConfig(seed=1), JobConfig(seed=2)
    assert a.digest() != b.digest() and a.digest() == JobConfig(seed=1).digest()
    assert Path(a.run_dir()).name == "psi-psi"
