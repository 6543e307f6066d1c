"""``psi-ray submit`` before anything reaches a cluster: local validation, the planned entrypoint and runtime env,
the auth token lookup, and one-line errors (exit 2) for a bad config or an unreachable job server."""

from __future__ import annotations

import argparse
import socket

import pytest

from psi_ray import cli_cluster
from psi_ray.errors import PsiRayError
from tests.conftest import ROOT, run_cli
from tests.unit.test_cli_errors import assert_clean_error


def args_for(config, **kw):
    base = dict(config=str(config), method=None, run_id=None, runs_dir=None, working_dir=None, installed=False,
                env=[], no_report=False)
    return argparse.Namespace(**{**base, **kw})


def test_bad_config_fails_before_submitting(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("instances: {count: 0}\n")
    # an address where nothing listens: the config error must come first (its field paths on indented lines)
    res = run_cli("submit", str(bad), "--address", "http://127.0.0.1:9")
    assert_clean_error(res, "bad.yaml: 1 error(s)")
    assert res.returncode == 2 and "  instances.count: " in res.stderr and "job server" not in res.stderr


def test_unreachable_job_server_is_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = run_cli("submit", str(ROOT / "jobs" / "gsm8k_cpu.yaml"), "--address", f"http://127.0.0.1:{port}")
    assert_clean_error(res, "cannot reach the Ray job server", f"127.0.0.1:{port}")


def test_plan_ships_the_job_folder_and_package(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("name: t\nruns_dir: out\n")
    entry, env, run_dir = cli_cluster.plan_job(args_for(job, method="student", env=["PSI_RAY_HOME=/x"]))
    assert entry.startswith("python -m psi_ray.cli run job.yaml --runs-dir ")
    assert f"--runs-dir {tmp_path / 'out'}" in entry and "--method student" in entry
    assert env["working_dir"] == str(tmp_path) and env["py_modules"] == [str(ROOT / "psi_ray")]
    assert env["env_vars"] == {"RAY_OVERRIDE_JOB_RUNTIME_ENV": "1", "PSI_RAY_HOME": "/x"}
    assert run_dir == str(tmp_path / "out" / "t-student")
    _, installed, _ = cli_cluster.plan_job(args_for(job, installed=True))
    assert "py_modules" not in installed


def test_plan_refuses_seeds_outside_the_working_dir(tmp_path):
    (tmp_path / "jobs").mkdir()
    job = tmp_path / "jobs" / "job.yaml"
    job.write_text("task: {seeds: ../data/seeds.jsonl}\n")
    with pytest.raises(PsiRayError, match="outside the working dir"):
        cli_cluster.plan_job(args_for(job))
    entry, env, _ = cli_cluster.plan_job(args_for(job, working_dir=str(tmp_path)))
    assert " run jobs/job.yaml " in entry and env["working_dir"] == str(tmp_path)


def test_dry_run_prints_the_plan():
    res = run_cli("submit", str(ROOT / "jobs" / "gsm8k_cpu_two_tier.yaml"), "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "entrypoint: python -m psi_ray.cli run gsm8k_cpu_two_tier.yaml" in res.stdout


def test_auth_token_lookup_order(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    assert cli_cluster.auth_token() is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    assert cli_cluster.auth_token() == "from-home"
    (tmp_path / "tok").write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "tok"))
    assert cli_cluster.auth_token() == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert cli_cluster.auth_token() == "from-env"
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(PsiRayError, match="RAY_AUTH_TOKEN_PATH"):
        cli_cluster.auth_token()
