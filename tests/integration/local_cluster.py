"""A real two-node Ray cluster on this machine for tests: a head with ``ml_tier`` and a worker with ``mg_tier``.

Each node is ``ray start --block`` in its own session, so it can be killed (node failure) and stopped by its
process group; nothing else on the machine is touched (never ``ray stop``). The cluster keeps Ray 2.60's token
auth on with a token of its own, passed explicitly; it has its own temp dir and its own ports.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from psi_ray.evaluate.run import free_port


class LocalCluster:
    """Two Ray nodes: ``head`` (1 CPU, ``ml_tier``) and ``worker`` (1 CPU, ``mg_tier``)."""

    def __init__(self, extra_env: dict | None = None):
        self.temp_dir = tempfile.mkdtemp(prefix="psr-", dir="/tmp")  # short: Ray's socket paths must fit
        self.token = secrets.token_hex(16)
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        bin_dir = str(Path(sys.executable).parent)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        self.env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token, "RAY_USAGE_STATS_ENABLED": "0",
                         "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}", **(extra_env or {})})
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}

    def _node_args(self, name: str) -> list[str]:
        # One temp dir per node: nodes sharing one would share runtime_resources/, and a node dropping its copy
        # of a job's working_dir would delete it under the other node's driver.
        node_dir = Path(self.temp_dir) / f"{name[0]}{len(self.procs)}"
        node_dir.mkdir()
        args = ["--num-cpus", "1", "--block", "--disable-usage-stats", "--temp-dir", str(node_dir)]
        for flag in ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
                     "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port"):
            args += [flag, str(free_port())]
        return args

    def _start(self, name: str, args: list[str]) -> None:
        self.logs[name] = Path(self.temp_dir) / f"{name}-{len(self.procs)}.log"
        with open(self.logs[name], "w") as log:
            self.procs[name] = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", *args],
                                                env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True)

    def start_head(self) -> None:
        self._start("head", ["--head", "--port", str(self.gcs_port), "--dashboard-host", "127.0.0.1",
                             "--dashboard-port", str(self.dashboard_port), "--ray-client-server-port",
                             str(free_port()), "--resources", '{"ml_tier": 1}', *self._node_args("head")])

    def start_worker(self) -> None:
        self._start("worker", ["--address", f"127.0.0.1:{self.gcs_port}", "--resources", '{"mg_tier": 1}',
                               *self._node_args("worker")])

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}

    def nodes(self) -> list[dict]:
        """Alive nodes from the dashboard's state API: ``node_id`` and ``resources_total`` each."""
        import requests

        r = requests.get(f"{self.address}/api/v0/nodes", headers=self.headers(), timeout=10,
                         params={"detail": "1", "limit": "100"})
        r.raise_for_status()
        return [n for n in r.json()["data"]["result"]["result"] if n["state"] == "ALIVE"]

    def node_with(self, resource: str) -> str | None:
        found = [n["node_id"] for n in self.nodes() if resource in n.get("resources_total", {})]
        return found[0] if found else None

    def wait_for(self, resource: str, timeout: float = 120) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"ray start ({name}) exited {p.returncode}:\n{self.logs[name].read_text()}")
            try:
                node = self.node_with(resource)
                if node:
                    return node
            except Exception:  # the dashboard is still coming up
                pass
            time.sleep(1)
        raise TimeoutError(f"no node with {resource} after {timeout}s:\n" +
                           "\n".join(p.read_text()[-2000:] for p in self.logs.values()))

    def client(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.address, headers=self.headers())

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Kill one node's whole process group (``ray start --block`` and everything it spawned)."""
        proc = self.procs.get(name)
        if proc is None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        proc.wait(timeout=60)

    def our_pids(self) -> list[int]:
        """Processes whose command line names this cluster's temp dir (Ray workers outlive their group)."""
        pids = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit() and int(d.name) != os.getpid():
                try:
                    if self.temp_dir.encode() in (d / "cmdline").read_bytes():
                        pids.append(int(d.name))
                except OSError:
                    pass
        return pids

    def stop(self) -> None:
        """Kill the nodes this cluster started (a graceful SIGTERM drains for 30 s), then any process of theirs
        still alive; Ray workers exit by themselves once their raylet is gone."""
        for name in ("worker", "head"):
            self.kill(name)
        deadline = time.time() + 10
        while self.our_pids() and time.time() < deadline:
            time.sleep(0.5)
        for pid in self.our_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)
