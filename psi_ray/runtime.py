"""The process and cluster runtime every layer shares: Ray start-up, the env workers get, and the one CUDA probe.

Nothing here knows about stages, runs or models, so ``pipeline``, ``train``, ``serve`` and ``evaluate`` can all
import it without importing each other (dependencies point one way, toward this module).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

# Env vars of the driver that every Ray worker also needs (model cache, offline switches, vLLM's CPU binding).
WORKER_ENV = ("PSI_RAY_HOME", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "VLLM_LOGGING_LEVEL", "TOKENIZERS_PARALLELISM",
              "VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU", "PSI_RAY_VLLM_IN_PROCESS")

# Quiet engine-actor shutdown. vLLM's engine (a child process of the actor) and joblib register shared memory
# and semaphores with multiprocessing's resource tracker, another child. At actor exit Ray kills the children
# first (kill_child_processes_on_worker_exit), so the actor's own clean-up finds the tracker dead, relaunches it
# and prints "KeyError: '/psm_...'" / "'/loky-...'" tracebacks; with the tracker left alive it cleans up what
# the engine left and says so in a UserWarning ("leaked shared_memory objects"), which is silenced here too.
ENGINE_ACTOR_ENV = {"RAY_kill_child_processes_on_worker_exit": "0",
                    "PYTHONWARNINGS": "ignore::UserWarning:multiprocessing.resource_tracker"}

# The allocator and OpenMP runtime vLLM's CPU guide asks to preload (its CPU worker warns on every start when
# they are missing): tcmalloc from the OS package libtcmalloc-minimal4 (`make engine-libs`), Intel
# OpenMP from the intel-openmp wheel in this environment. Set PSI_RAY_PRELOAD=0 to start engines without them.
TCMALLOC = ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
            "/usr/lib64/libtcmalloc_minimal.so.4")


def engine_preload() -> list[str]:
    """The libraries a CPU engine process should preload, those that exist here (empty on a GPU machine)."""
    if os.environ.get("PSI_RAY_PRELOAD", "1") == "0" or cuda_available():
        return []
    found = [next((p for p in TCMALLOC if Path(p).exists()), None)]
    iomp = Path(sys.prefix) / "lib" / "libiomp5.so"
    found.append(str(iomp) if iomp.exists() else None)
    return [p for p in found if p]


def engine_actor_env() -> dict[str, str]:
    """The env an engine actor starts with: quiet shutdown, and the CPU engine libraries preloaded.

    A library of a kind the user's own ``LD_PRELOAD`` already has is not added: vLLM refuses two OpenMP
    runtimes (and itself adds PyTorch's libgomp to a process's ``LD_PRELOAD`` when it finds none).
    """
    own = [p for p in os.environ.get("LD_PRELOAD", "").split(":") if p]
    kinds = {"libtcmalloc": ("libtcmalloc",), "libiomp": ("libiomp", "libomp", "libgomp")}
    add = [lib for lib in engine_preload()
           if not any(k in lib and any(m in p for m in kinds[k] for p in own) for k in kinds)]
    preload = [*add, *own]
    return {**ENGINE_ACTOR_ENV, **({"LD_PRELOAD": ":".join(dict.fromkeys(preload))} if preload else {})}


def init_ray(address: str | None = None) -> None:
    """Connect to ``RAY_ADDRESS`` (a cluster, or inside ``ray job submit``) or start a local instance."""
    import ray

    if ray.is_initialized():
        return
    env = {k: os.environ[k] for k in WORKER_ENV if k in os.environ}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    for key in job_env_keys():  # inside a Ray job: its runtime env already sets these; Ray refuses a clash
        env.pop(key, None)
    ray.init(address=address or os.environ.get("RAY_ADDRESS"), runtime_env={"env_vars": env},
             log_to_driver=True, logging_level="WARNING", configure_logging=True)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = True
    ctx.print_on_execution_start = False


def job_env_keys() -> set[str]:
    """The env vars a submitted Ray job's runtime env sets (empty outside a job)."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return set()
    return set((json.loads(raw).get("runtime_env") or {}).get("env_vars") or {})


@functools.cache
def cuda_available() -> bool:
    """Whether this process sees a CUDA GPU (False where torch is missing). The only CUDA probe in psi-ray."""
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def default_device() -> str:
    """``cuda`` where a GPU is visible, else ``cpu``: where a model goes unless the caller says otherwise."""
    return "cuda" if cuda_available() else "cpu"
