"""``psi-ray submit`` before and while a job is on a cluster: local validation, the planned entrypoint and
runtime env, the auth token lookup, and one-line errors (exit 2) for a bad config, an unreachable or lost job
server, a wrong token, a refused submission or a malformed ``--env``; the token never goes out in clear to
another host, ``--env`` values are masked in what is printed and secret files are not uploaded. A fake job
server (``_JobServer``) speaks the Jobs API that Ray's ``JobSubmissionClient`` uses."""

from __future__ import annotations

import argparse
import io
import json
import re
import socket
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
from ray import __version__ as ray_version

from psi_ray import cli
from psi_ray.cli import cluster as cli_cluster
from psi_ray.errors import PsiRayError
from tests.conftest import ROOT, run_cli
from tests.unit.test_cli_errors import assert_clean_error
from tests.unit.test_openai_backend import _own_address

TOKEN = "ray-token-0123456789abcdef"


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


# -- against a fake Ray job server: tokens, refusals, a server that goes away, what is uploaded --------------

class _JobServer(BaseHTTPRequestHandler):
    """Answers the Jobs API calls ``psi-ray submit`` makes, as Ray's dashboard does; records what it got.

    ``st.token`` is the only bearer token accepted (403 otherwise, like Ray); ``st.refuse`` is a body to answer
    the submission with HTTP 400; ``st.statuses`` are handed out one per status poll (``"lost"``: the
    connection is dropped, as when the head dies). The log stream endpoint is not a websocket here, so
    ``follow`` polls.
    """

    st: SimpleNamespace

    def log_message(self, *args):
        pass

    def _reply(self, status: int, body) -> None:
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _allowed(self) -> bool:
        self.st.seen.append((self.command, self.path, self.headers.get("Authorization")))
        if self.st.token and self.headers.get("Authorization") != f"Bearer {self.st.token}":
            self._reply(403, "Unauthorized: invalid token")
            return False
        return True

    def do_GET(self):
        if not self._allowed():
            return
        if self.path == "/api/version":
            return self._reply(200, {"version": "4", "ray_version": ray_version, "ray_commit": "x"})
        job = re.fullmatch(r"/api/jobs/([\w-]+)", self.path)
        if job:
            status = self.st.statuses.pop(0) if len(self.st.statuses) > 1 else self.st.statuses[0]
            if status == "lost":
                self.close_connection = True  # no answer at all
                return
            return self._reply(200, {"type": "SUBMISSION", "status": status, "entrypoint": "x",
                                     "submission_id": job.group(1), "message": self.st.message})
        self._reply(404, "not found")  # packages (so they are uploaded), the log stream

    def do_PUT(self):
        if self._allowed():
            self.st.uploads[self.path] = self.rfile.read(int(self.headers["Content-Length"]))
            self._reply(200, "")

    def do_POST(self):
        if not self._allowed():
            return
        self.st.jobs.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        if self.st.refuse:
            return self._reply(400, self.st.refuse)
        self._reply(200, {"submission_id": "raysubmit_fake", "job_id": None})


def _serve(host: str, url_host: str, **state):
    st = SimpleNamespace(token=None, refuse=None, statuses=["SUCCEEDED"], message="", seen=[], uploads={},
                         jobs=[])
    st.__dict__.update(state)
    httpd = ThreadingHTTPServer((host, 0), type("H", (_JobServer,), {"st": st}))
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    st.address = f"http://{url_host}:{httpd.server_address[1]}"
    return httpd, st


@pytest.fixture
def job_server(monkeypatch):
    """A loopback fake job server; ``make(**state)`` starts it. No token anywhere unless a test sets one."""
    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS",
                "RAY_AUTH_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", "/nonexistent")  # no ~/.ray/auth_token
    monkeypatch.setattr(cli_cluster, "POLL_S", 0.01)
    servers = []

    def make(host="127.0.0.1", url_host="127.0.0.1", **state):
        httpd, st = _serve(host, url_host, **state)
        servers.append(httpd)
        return st

    yield make
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def small_job(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("name: t\nruns_dir: out\n")
    return job


def submit(capsys, *argv):
    code = cli.main(["submit", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("psi-ray: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_submits_follows_and_sends_the_token(job_server, small_job, capsys, monkeypatch):
    st = job_server(token=TOKEN, statuses=["RUNNING", "RUNNING", "SUCCEEDED"])
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)
    code, out, err = submit(capsys, small_job, "--address", st.address, "--installed", "--no-report")
    assert code == 0, err
    assert "submitted job raysubmit_fake" in out and "job raysubmit_fake SUCCEEDED" in out
    assert {auth for _, _, auth in st.seen} == {f"Bearer {TOKEN}"}
    assert st.jobs[0]["entrypoint"].startswith("python -m psi_ray.cli run job.yaml")


def test_wrong_or_missing_token_is_one_line(job_server, small_job, capsys, monkeypatch):
    st = job_server(token=TOKEN)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-token")
    code, out, err = submit(capsys, small_job, "--address", st.address, "--installed")
    line = one_error_line(err)
    assert code == 2 and "rejected the auth token from $RAY_AUTH_TOKEN" in line and st.address in line
    assert "not-the-token" not in out + err and st.jobs == []
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    code, _, err = submit(capsys, small_job, "--address", st.address, "--installed")
    assert code == 2 and "needs an auth token (set RAY_AUTH_TOKEN" in one_error_line(err)


def test_token_never_sent_in_clear_to_another_host(job_server, small_job, capsys, monkeypatch):
    ip = _own_address()
    if ip is None:
        pytest.skip("no non-loopback IPv4 address on this machine")
    st = job_server(host="0.0.0.0", url_host=ip, token=TOKEN)
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)
    code, _, err = submit(capsys, small_job, "--address", st.address, "--installed")
    line = one_error_line(err)
    assert code == 2 and f"refusing to send the Ray auth token over plain http to {st.address}" in line
    assert "--allow-insecure-token" in line and TOKEN not in err and st.seen == []  # nothing reached it
    code, out, err = submit(capsys, small_job, "--address", st.address, "--installed", "--no-wait",
                            "--allow-insecure-token")
    assert code == 0, err
    assert "submitted job raysubmit_fake" in out and st.seen[0][2] == f"Bearer {TOKEN}"


def test_unroutable_plain_http_address_refused_at_once(job_server, small_job, capsys, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)
    start = time.monotonic()
    code, _, err = submit(capsys, small_job, "--address", "http://10.255.255.1:9", "--installed")
    assert code == 2 and "refusing to send the Ray auth token" in one_error_line(err)
    assert time.monotonic() - start < 5


def test_explicit_address_wins_over_ray_address(job_server, small_job, capsys, monkeypatch):
    st = job_server()
    monkeypatch.setenv("RAY_ADDRESS", "http://10.255.255.1:9")  # Ray's client alone would go there
    code, out, err = submit(capsys, small_job, "--address", st.address, "--installed", "--no-wait")
    assert code == 0 and "submitted job" in out, err
    assert cli_cluster.os.environ["RAY_ADDRESS"] == "http://10.255.255.1:9"  # restored afterwards


def test_refused_submission_masks_secret_env_values(job_server, small_job, capsys):
    st = job_server(refuse="runtime_env rejected: HF_TOKEN=hf_live_secret_1 is not allowed")
    code, out, err = submit(capsys, small_job, "--address", st.address, "--installed",
                            "--env", "HF_TOKEN=hf_live_secret_1")
    line = one_error_line(err)
    assert code == 2 and "the job server refused the job: Request failed with status code 400" in line
    assert "hf_live_secret_1" not in out + err and "HF_TOKEN=***" in line
    assert st.jobs[0]["runtime_env"]["env_vars"]["HF_TOKEN"] == "hf_live_secret_1"  # it still went to Ray


def test_lost_job_server_while_following(job_server, small_job, capsys):
    st = job_server(statuses=["RUNNING", "lost"])
    code, out, err = submit(capsys, small_job, "--address", st.address, "--installed")
    line = one_error_line(err)
    assert code == 2 and "submitted job raysubmit_fake" in out
    assert f"lost the job server at {st.address} while following job raysubmit_fake" in line
    assert "ray job status raysubmit_fake" in line


def test_failed_job_exits_1_with_its_message(job_server, small_job, capsys):
    st = job_server(statuses=["FAILED"], message="Job entrypoint command failed with exit code 2\nmore")
    code, _, err = submit(capsys, small_job, "--address", st.address, "--installed")
    assert code == 1 and one_error_line(err) == ("psi-ray: error: job raysubmit_fake FAILED: Job entrypoint "
                                                 "command failed with exit code 2")


def test_secret_files_are_not_uploaded(job_server, tmp_path, capsys):
    work = tmp_path / "work"
    (work / "keys").mkdir(parents=True)
    (work / "data").mkdir()
    (work / "job.yaml").write_text("name: t\nruns_dir: out\ntask: {seeds: data/seeds.jsonl}\n")
    (work / "data" / "seeds.jsonl").write_text('{"question": "One?", "answer": "#### 1"}\n')
    for secret in (".env", ".env.local", "id_rsa", "id_ed25519.pub", "server.pem", "keys/tls.key", ".netrc",
                   "auth_token"):
        (work / secret).write_text("SECRET\n")
    st = job_server()
    code, _, err = submit(capsys, work / "job.yaml", "--address", st.address, "--installed", "--no-wait")
    assert code == 0, err
    (blob,) = st.uploads.values()
    names = set(zipfile.ZipFile(io.BytesIO(blob)).namelist())
    assert {"job.yaml", "data/seeds.jsonl"} <= names
    assert not names & {".env", ".env.local", "id_rsa", "id_ed25519.pub", "server.pem", "keys/tls.key",
                        ".netrc", "auth_token"}, names


@pytest.mark.parametrize("pair,needle", [
    ("NOEQUALS", "--env #1 has no '='"), ("1BAD=x", "--env #1 has '1BAD=...'"),
    ("A B=x", "--env #1 has 'A B=...'"), ("=value", "--env #1 has '=...'")])
def test_malformed_env_never_echoes_its_value(job_server, small_job, capsys, pair, needle):
    code, out, err = submit(capsys, small_job, "--env", pair, "--dry-run")
    assert code == 2 and needle in one_error_line(err) and "value" not in err.replace("KEY=VALUE", "")
    code, _, err = submit(capsys, small_job, "--env", "K=1", "--env", "K=2", "--dry-run")
    assert code == 2 and "--env K is given twice" in one_error_line(err)


def test_dry_run_masks_env_values(small_job, capsys):
    code, out, _ = submit(capsys, small_job, "--env", "HF_TOKEN=hf_live_2", "--env", "PSI_RAY_HOME=/data/x",
                          "--dry-run")
    assert code == 0 and "hf_live_2" not in out and "/data/x" not in out
    assert "'HF_TOKEN': '***'" in out and "'PSI_RAY_HOME': '***'" in out
    assert "'RAY_OVERRIDE_JOB_RUNTIME_ENV': '1'" in out and "'.env'" in out  # secrets excluded from upload


def test_followed_logs_are_scrubbed(capsys):
    class Client:
        async def tail_job_logs(self, job_id):
            for chunk in ("step 1\n", f"token={TOKEN}\n", "done\n"):
                yield chunk

        def get_job_status(self, job_id):
            return "SUCCEEDED"

    assert cli_cluster.follow(Client(), "j", secrets=[TOKEN]) == "SUCCEEDED"
    assert capsys.readouterr().out == "step 1\ntoken=***\ndone\n"


@pytest.mark.parametrize("address", ["ftp://head:8265", "http://", "https:///x"])
def test_bad_address(small_job, capsys, address):
    code, _, err = submit(capsys, small_job, "--address", address, "--installed")
    assert code == 2 and "expected the head's job server URL" in one_error_line(err)
