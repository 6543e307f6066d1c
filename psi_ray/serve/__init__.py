"""Stage 9, serve: start and stop the OpenAI-compatible Ray Serve app for a model folder.

``psi-ray serve MODEL_DIR`` runs :func:`start` and blocks; ``psi-ray eval MODEL_DIR`` starts the app, scores
it and stops it. The app itself is :mod:`psi_ray.serve.app` (imported lazily: it needs Ray Serve).
"""

from __future__ import annotations

import time

from psi_ray.errors import PsiRayError, last_line

APP_NAME = "psi-ray"


def start(model: str, host: str = "127.0.0.1", port: int = 8000, name: str | None = None,
          engine: str = "auto", api_key_env: str | None = None, timeout_s: float = 600, **options) -> str:
    """Deploy the app on the connected (or a new local) Ray instance; return its ``/v1`` base URL when ready."""
    from ray import serve

    from psi_ray.runtime import init_ray
    from psi_ray.serve.app import build_app

    app = build_app({"model": model, "name": name, "engine": engine, "api_key_env": api_key_env, **options})
    init_ray()
    serve.start(http_options={"host": host, "port": port})
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/v1"
    try:
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
        wait_ready(url, timeout_s)
    except BaseException as exc:  # nothing half-started is left behind, Ctrl-C included
        stop()
        if isinstance(exc, PsiRayError | KeyboardInterrupt):
            raise
        raise PsiRayError(f"could not start the Serve app: {last_line(exc)}") from None
    return url


def wait_ready(base_url: str, timeout_s: float) -> None:
    """Poll ``/v1/models`` until it answers (any HTTP status means the replica is up)."""
    import httpx

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if httpx.get(f"{base_url}/models", timeout=5).status_code in (200, 401):
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise PsiRayError(f"the served model did not answer at {base_url} within {timeout_s:.0f} s")


def stop() -> None:
    """Delete psi-ray's app; shut Serve down only when no other app is left (a shared cluster keeps its own)."""
    from ray import serve

    serve.delete(APP_NAME)
    if not serve.status().applications:
        serve.shutdown()
