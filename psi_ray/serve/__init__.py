"""Stage 9, serve: start and stop the OpenAI-compatible Ray Serve app for a model folder.

``psi-ray serve MODEL_DIR`` runs :func:`start` and blocks; ``psi-ray eval MODEL_DIR`` starts the app, scores
it and stops it. The app itself is :mod:`psi_ray.serve.app` (imported lazily: it needs Ray Serve).
"""

from __future__ import annotations

import time

from psi_ray.errors import PsiRayError, last_line

APP_NAME = "psi-ray"


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def base_url(host: str, port: int) -> str:
    """The ``/v1`` URL a client on this machine uses: a wildcard bind is reached on loopback, IPv6 in brackets."""
    reach = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://{f'[{reach}]' if ':' in reach else reach}:{port}/v1"


def check_exposure(host: str, api_key_env: str | None, allow_no_key: bool) -> None:
    """Refuse to serve beyond this machine without a key unless the user says so (``--allow-no-key``)."""
    if host not in LOOPBACK and not api_key_env and not allow_no_key:
        raise PsiRayError(f"--host {host} serves the model to the network without a key: pass --api-key-env VAR "
                          "(hf engine), or --allow-no-key to serve it open on purpose")


def start(model: str, host: str = "127.0.0.1", port: int = 8000, name: str | None = None,
          engine: str = "auto", api_key_env: str | None = None, timeout_s: float = 600,
          allow_no_key: bool = False, **options) -> str:
    """Deploy the app on the connected (or a new local) Ray instance; return its ``/v1`` base URL when ready."""
    import os

    from ray import serve

    from psi_ray.models import resolve_model
    from psi_ray.runtime import init_ray
    from psi_ray.serve.app import build_app
    from psi_ray.serve.args import ServeArgs

    args = ServeArgs.parse({"model": model, "name": name, "engine": engine, "api_key_env": api_key_env,
                            **{k: v for k, v in options.items() if v is not None}})
    check_exposure(host, api_key_env, allow_no_key)
    app = build_app(args)
    init_ray()
    serve.start(http_options={"host": host, "port": port})
    url = base_url(host, port)
    try:
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
        wait_ready(url, args.served_name(resolve_model(model)), timeout_s,
                   os.environ.get(api_key_env) if api_key_env else None)
    except BaseException as exc:  # nothing half-started is left behind, Ctrl-C included
        stop()
        if isinstance(exc, PsiRayError | KeyboardInterrupt):
            raise
        raise PsiRayError(f"could not start the Serve app: {last_line(exc)}") from None
    return url


def wait_ready(base_url: str, name: str, timeout_s: float, api_key: str | None = None) -> None:
    """Poll ``/v1/models`` until it lists ``name``: another process answering on the port is not our app."""
    from psi_ray.backends.openai import served_models

    deadline, last = time.time() + timeout_s, "no answer"
    while time.time() < deadline:
        try:
            served = served_models(base_url, api_key, timeout=5)
            if name in served:
                return
            last = f"it serves {', '.join(served) or 'nothing'}, not {name}"
        except PsiRayError as exc:
            last = str(exc)
        time.sleep(1)
    raise PsiRayError(f"the served model did not answer at {base_url} within {timeout_s:.0f} s ({last})")


def stop() -> None:
    """Delete psi-ray's app; shut Serve down only when no other app is left (a shared cluster keeps its own)."""
    from ray import serve

    serve.delete(APP_NAME)
    if not serve.status().applications:
        serve.shutdown()
