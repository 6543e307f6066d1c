"""CLI verb ``submit``: run a job on a Ray cluster through Ray's Job Submission API.

``psi-ray submit jobs/gsm8k_cpu_two_tier.yaml --address http://HEAD:8265`` validates the job here first (a bad
config never reaches the cluster), submits ``python -m psi_ray.cli run JOB.yaml`` with a runtime env, prints
the job id, follows the job's logs until it ends and exits 0 only when it SUCCEEDED (1 when it failed or was
stopped, 2 for bad input or an unreachable cluster). ``--no-wait`` only submits.

What travels with the job (see ``cluster/README.md``):
- ``working_dir`` = the job file's folder (``--working-dir`` for a wider root), so relative seed paths resolve
  on the cluster as they do here;
- ``py_modules`` = this ``psi_ray`` package, so the cluster runs the code you validated against; the cluster's
  Python must already hold psi-ray's dependencies (the image in ``cluster/``). ``--installed`` ships nothing
  and runs the psi-ray installed on the cluster;
- the run directory: ``--runs-dir`` (default: the job's ``runs_dir`` as resolved here, an absolute path, which
  is the same place on one machine or a shared filesystem). The driver, on the head node, writes it.

Token auth (Ray 2.60 turns it on for ``ray start --head``): the token is read like Ray reads it —
``RAY_AUTH_TOKEN``, else the file named by ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token`` — and sent as a
bearer header, so no ``RAY_AUTH_MODE`` needs to be set where you submit from. Whoever holds the token can run
code on the cluster, so it is never sent over plain http to another host unless ``--allow-insecure-token``
says so (use https or a tunnel to a loopback address). Secrets stay home: ``--env`` values are masked in
everything ``submit`` prints, and secret-looking files (``.env``, ``*.pem``, ``*.key``, ``id_rsa``...) are
left out of the uploaded working dir.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from psi_ray.backends.base import sends_in_clear
from psi_ray.errors import PsiRayError

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# Never uploaded: what a run makes or caches, and files that usually hold secrets (a working dir goes to every
# node of the cluster and stays in its temp dirs).
SECRET_FILES = [".env", ".env.*", "*.pem", "*.key", "*.p12", "*.pfx", "*.kdbx", "id_rsa*", "id_dsa*",
                "id_ecdsa*", "id_ed25519*", ".netrc", ".pypirc", ".git-credentials", "auth_token", ".ssh/",
                ".aws/", ".gnupg/"]
EXCLUDES = [".git/", ".venv/", "runs/", ".cache/", "__pycache__/", "*.pyc", "*.safetensors", "*.gguf",
            "*.bin", *SECRET_FILES]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
ADDRESS_VARS = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")  # Ray's client prefers these to its address argument
MASK = "***"
POLL_S = 2.0  # seconds between job status polls once the log stream has ended


def auth_token() -> str | None:
    """The cluster token, looked up in Ray's order; ``None`` when there is none (auth off)."""
    return _token_and_source()[0]


def _token_and_source() -> tuple[str | None, str]:
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip(), "$RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        try:
            return Path(path).expanduser().read_text().strip() or None, f"$RAY_AUTH_TOKEN_PATH ({path})"
        except OSError as exc:
            raise PsiRayError(f"RAY_AUTH_TOKEN_PATH={path}: cannot read the token file ({exc.strerror})") from None
    default = Path.home() / ".ray" / "auth_token"
    if default.is_file():
        return default.read_text().strip() or None, str(default)
    return None, ""


def job_server_address(address: str | None) -> str:
    """The job server ``submit`` talks to: ``--address``, else ``$RAY_API_SERVER_ADDRESS``/``$RAY_ADDRESS``
    (as Ray reads them), else the local default. ``host:port`` and ``ray://`` addresses are reached over
    http."""
    address = address or next((os.environ[k] for k in ADDRESS_VARS if os.environ.get(k)), DEFAULT_ADDRESS)
    scheme = urlsplit(address).scheme.lower() if "://" in address else ""
    if scheme not in ("", "http", "https", "ray") or (address != "auto" and not urlsplit(
            address if scheme else f"http://{address}").hostname):
        raise PsiRayError(f"--address {address}: expected the head's job server URL, e.g. http://HEAD:8265")
    return address


def connect(address: str | None, allow_insecure_token: bool = False):
    """A ``JobSubmissionClient`` for ``address`` with the auth header; one-line errors when it cannot.

    An explicit ``address`` wins over ``$RAY_ADDRESS`` (Ray's client would otherwise prefer the variable and
    send the job, and the token, somewhere else than the command line says).
    """
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    explicit = address
    address = job_server_address(address)
    token, source = _token_and_source()
    if token and address != "auto" and sends_in_clear(address) and not allow_insecure_token:
        raise PsiRayError(
            f"refusing to send the Ray auth token over plain http to {address}: anyone on the network path "
            "could read it and run code on the cluster; use https://, a tunnel to a loopback address (ssh -L "
            "8265:localhost:8265 HEAD, or kubectl port-forward), or pass --allow-insecure-token on a network "
            "you trust")
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        with _env_unset(*(ADDRESS_VARS if explicit else ())):
            return JobSubmissionClient(address, headers=headers)
    except AuthenticationError as exc:
        why = f"rejected the auth token from {source}" if token else \
            "needs an auth token (set RAY_AUTH_TOKEN or write ~/.ray/auth_token)"
        raise PsiRayError(f"the Ray job server at {address} {why}: {_first_line(exc, token)}") from None
    except (ConnectionError, RuntimeError, ValueError) as exc:
        why = _first_line(exc, token)
        raise PsiRayError(f"cannot reach the Ray job server at {address}: {why}") from None


@contextmanager
def _env_unset(*names: str):
    saved = {k: os.environ.pop(k) for k in names if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _first_line(exc: BaseException, *secrets: str | None) -> str:
    return scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, secrets)


def scrub(text: str, secrets) -> str:
    """``text`` with every secret in ``secrets`` (4 characters or more) replaced by ``***``."""
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def parse_env(pairs: list[str]) -> dict[str, str]:
    """``--env KEY=VALUE`` pairs as a dict; a malformed pair is named by its position, never echoed (its
    value may be a secret)."""
    env: dict[str, str] = {}
    for i, pair in enumerate(pairs, 1):
        key, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            shown = f"'{key}=...'" if sep else "no '='"
            raise PsiRayError(f"--env expects KEY=VALUE with KEY a variable name (letters, digits, _); "
                              f"--env #{i} has {shown}")
        if key in env:
            raise PsiRayError(f"--env {key} is given twice")
        env[key] = value
    return env


def masked_env(runtime_env: dict) -> dict:
    """``runtime_env`` for printing: every ``--env`` value masked (only psi-ray's own switch shown)."""
    env = {k: v if k == "RAY_OVERRIDE_JOB_RUNTIME_ENV" else MASK for k, v in runtime_env["env_vars"].items()}
    return {**runtime_env, "env_vars": env}


def secrets_of(args) -> list[str]:
    """What must not be printed: the token and the values of secret-looking ``--env`` keys."""
    from psi_ray.redact import looks_secret

    env = parse_env(args.env)
    return [auth_token() or "", *(v for k, v in env.items() if looks_secret(k))]


def plan_job(args) -> tuple[str, dict, str]:
    """Validate the job here and build (entrypoint, runtime_env, runs_dir) for the cluster."""
    from psi_ray.config import load_config

    job = Path(args.config).resolve()
    cfg = load_config(job, {"method": args.method, "run_id": args.run_id, "runs_dir": args.runs_dir})
    workdir = Path(args.working_dir).resolve() if args.working_dir else job.parent
    if not workdir.is_dir():
        raise PsiRayError(f"--working-dir {workdir}: not a folder")
    if not job.is_relative_to(workdir):
        raise PsiRayError(f"{job} is not inside the working dir {workdir}; pass --working-dir with a folder "
                          "that holds the job file")
    seeds = cfg.task.seeds
    if not seeds.startswith("builtin:") and not Path(seeds).expanduser().is_absolute():
        where = Path(os.path.normpath(cfg.path(seeds)))
        if not where.is_relative_to(workdir):
            raise PsiRayError(f"task.seeds ({seeds}) resolves to {where}, outside the working dir {workdir} that "
                              "is shipped to the cluster; pass --working-dir with a folder holding both, or use "
                              "an absolute path that exists on the cluster")
    runs_dir = str(Path(args.runs_dir).expanduser().resolve()) if args.runs_dir else \
        os.path.normpath(cfg.path(cfg.runs_dir).resolve())
    cmd = ["python", "-m", "psi_ray.cli", "run", job.relative_to(workdir).as_posix(), "--runs-dir", runs_dir]
    for flag, value in (("--method", args.method), ("--run-id", args.run_id)):
        if value:
            cmd += [flag, value]
    if args.no_report:
        cmd.append("--no-report")
    # ray.init inside the job adds its own env vars (runtime.init_ray); without this Ray refuses to merge them
    # with the job's env vars whenever a key appears in both.
    env = {"RAY_OVERRIDE_JOB_RUNTIME_ENV": "1", **parse_env(args.env)}
    runtime_env: dict = {"working_dir": str(workdir), "excludes": EXCLUDES, "env_vars": env}
    if not args.installed:
        runtime_env["py_modules"] = [str(Path(__file__).resolve().parents[1])]
    return shlex.join(cmd), runtime_env, str(Path(runs_dir) / cfg.resolved_run_id)


async def _tail(client, job_id: str, secrets) -> None:
    async for chunk in client.tail_job_logs(job_id):
        sys.stdout.write(scrub(chunk, secrets))
        sys.stdout.flush()


def follow(client, job_id: str, poll_s: float | None = None, secrets=()) -> str:
    """Print the job's logs as they come (``secrets`` masked); return its final status once it is terminal."""
    import aiohttp
    from ray.exceptions import AuthenticationError

    try:
        asyncio.run(_tail(client, job_id, secrets))
    except (RuntimeError, OSError, aiohttp.ClientError, AuthenticationError) as exc:  # fall back to polling
        print(f"psi-ray: log stream ended early ({_first_line(exc, *secrets)}); polling the job status",
              file=sys.stderr)
    while True:
        try:
            status = str(client.get_job_status(job_id))
        except (RuntimeError, OSError, AuthenticationError) as exc:
            raise PsiRayError(f"lost the job server at {client.get_address()} while following job {job_id} "
                              f"({_first_line(exc, *secrets)[:200]}); the job may still run: ray job status "
                              f"{job_id}") from None
        if status in TERMINAL:
            return status
        time.sleep(poll_s or POLL_S)


def cmd_submit(args) -> int:
    """Validate a job here, submit it to a Ray cluster's job server, and follow it to the end."""
    entrypoint, runtime_env, run_dir = plan_job(args)
    if args.dry_run:
        print(f"entrypoint: {entrypoint}")
        print(f"runtime_env: {masked_env(runtime_env)}")
        return 0
    from ray.exceptions import AuthenticationError

    secrets = secrets_of(args)
    client = connect(args.address, args.allow_insecure_token)
    kwargs = {}
    if args.entrypoint_num_cpus is not None:
        kwargs["entrypoint_num_cpus"] = args.entrypoint_num_cpus
    try:
        job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env,
                                   submission_id=args.submission_id, **kwargs)
    except (RuntimeError, ValueError, OSError, AuthenticationError) as exc:
        env_values = [v for k, v in runtime_env["env_vars"].items() if k != "RAY_OVERRIDE_JOB_RUNTIME_ENV"]
        why = _first_line(exc, *secrets, *env_values)
        raise PsiRayError(f"the job server refused the job: {why}") from None
    print(f"submitted job {job_id}")
    print(f"run directory (on the driver's node): {run_dir}", flush=True)
    if args.no_wait:
        print(f"follow it with: ray job logs --follow {job_id} --address {client.get_address()}")
        return 0
    try:
        status = follow(client, job_id, secrets=secrets)
    except KeyboardInterrupt:
        print(f"\npsi-ray: stopped following; job {job_id} keeps running (ray job stop {job_id})", file=sys.stderr)
        raise
    if status == "SUCCEEDED":
        print(f"job {job_id} SUCCEEDED")
        return 0
    message = scrub(client.get_job_info(job_id).message or "", secrets).strip().splitlines()
    print(f"psi-ray: error: job {job_id} {status}{': ' + message[0] if message else ''}", file=sys.stderr)
    return 1


def register(sub) -> None:
    p = sub.add_parser("submit", help="run a job on a Ray cluster (Ray Jobs API) and follow it",
                       description=cmd_submit.__doc__ + " The job runs `python -m psi_ray.cli run JOB.yaml` on "
                       "the cluster; exit status 0 = SUCCEEDED, 1 = FAILED or STOPPED, 2 = bad input. "
                       "See cluster/README.md.")
    p.add_argument("config", metavar="JOB.yaml", help="job file, validated here before anything is sent")
    p.add_argument("--address", default=None,
                   help=f"the head's job server (dashboard) URL, e.g. http://HEAD:8265 (default: "
                   f"$RAY_API_SERVER_ADDRESS or {DEFAULT_ADDRESS})")
    p.add_argument("--method", choices=["psi", "teacher", "student"], default=None, help="override the job's method")
    p.add_argument("--run-id", default=None, help="run folder name (default: <name>-<method>)")
    p.add_argument("--runs-dir", default=None,
                   help="where the driver writes run folders on the cluster (default: the job's runs_dir as "
                   "resolved here; use a shared volume on a multi-machine cluster)")
    p.add_argument("--working-dir", default=None,
                   help="folder shipped as the job's working_dir (default: the job file's folder)")
    p.add_argument("--installed", action="store_true",
                   help="run the psi-ray installed on the cluster instead of shipping this psi_ray package")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment variable for the driver and every worker (repeatable), e.g. "
                   "PSI_RAY_HOME; values are masked in what submit prints")
    p.add_argument("--allow-insecure-token", action="store_true",
                   help="send the Ray auth token over plain http to a non-loopback address (anyone on the "
                   "path can read it); prefer https or an SSH tunnel")
    p.add_argument("--entrypoint-num-cpus", type=float, default=None,
                   help="CPUs reserved for the driver (default 0: it runs on the head node)")
    p.add_argument("--submission-id", default=None, help="job id to use (default: Ray picks one)")
    p.add_argument("--no-wait", action="store_true", help="submit, print the job id, and return")
    p.add_argument("--no-report", action="store_true", help="skip writing RUN_DIR/report.html")
    p.add_argument("--dry-run", action="store_true", help="validate and print what would be submitted")
    p.set_defaults(func=cmd_submit)

