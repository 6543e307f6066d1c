"""Stage 9, serve: start and stop the OpenAI-compatible Ray Serve app for a model folder.

``psi-ray serve MODEL_DIR`` runs :func:`start` and blocks; ``psi-ray eval MODEL_DIR`` starts the app, scores
it and stops it. The app itself is :mod:`psi_ray.serve.app` (imported lazily: it needs Ray Serve).
"""

from __future__ import annotations

import time

from psi_ray.errors import PsiRayError, last_line

LOOPBACK = ("127.0.0.1", "localhost", "::1")


_started: list[str] = []  # the Serve applications this process started, newest last


def app_name(served: str) -> str:
    """One Serve application per served model id: starting one model never replaces another's app (with one
    fixed name, a second ``serve`` or an ``eval`` on the same cluster silently took the first one's place)."""
    return f"psi-ray-{served}"


def base_url(host: str, port: int, route_prefix: str = "/") -> str:
    """The ``/v1`` URL a client on this machine uses: a wildcard bind is reached on loopback, IPv6 in brackets."""
    reach = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://{f'[{reach}]' if ':' in reach else reach}:{port}{route_prefix.rstrip('/')}/v1"


def check_exposure(host: str, api_key_env: str | None, allow_no_key: bool) -> None:
    """Refuse to serve beyond this machine without a key unless the user says so (``--allow-no-key``)."""
    if host not in LOOPBACK and not api_key_env and not allow_no_key:
        raise PsiRayError(f"--host {host} serves the model to the network without a key: pass --api-key-env VAR, "
                          "or --allow-no-key to serve it open on purpose")


def start(model: str, host: str = "127.0.0.1", port: int = 8000, name: str | None = None,
          api_key_env: str | None = None, timeout_s: float = 600,
          allow_no_key: bool = False, request_timeout_s: float | None = 600, route_prefix: str = "/",
          **options) -> str:
    """Deploy the app on the connected (or a new local) Ray instance; return its ``/v1`` base URL when ready.

    Each served model id is its own Serve application (:func:`app_name`) at ``route_prefix``; a prefix another
    application holds is refused by Serve, with its message, rather than taken over.

    ``request_timeout_s``: Serve's proxy answers 408 to a request still unanswered after that long (None: no
    limit). Like host and port it is fixed when Serve first starts on the cluster."""
    import os

    from ray import serve

    from psi_ray.models import resolve_model
    from psi_ray.runtime import init_ray
    from psi_ray.serve.app import build_app
    from psi_ray.serve.args import ServeArgs

    args = ServeArgs.parse({"model": model, "name": name, "api_key_env": api_key_env,
                            **{k: v for k, v in options.items() if v is not None}})
    check_exposure(host, api_key_env, allow_no_key)
    if not route_prefix.startswith("/"):
        raise PsiRayError(f"--route-prefix must start with '/', got {route_prefix!r}")
    app = build_app(args)
    served = args.served_name(resolve_model(model))
    init_ray()
    serve.start(http_options={"host": host, "port": port, "request_timeout_s": request_timeout_s})
    actual_host, actual_port = listening()
    if (actual_host, actual_port) != (host, port):  # Serve already ran on the cluster: its proxy stays where it is
        check_exposure(actual_host, api_key_env, allow_no_key)
        print(f"note: Ray Serve already runs on this cluster at {actual_host}:{actual_port}; the model is served "
              "there (--host and --port apply only when Serve starts)")
    url = base_url(actual_host, actual_port, route_prefix)
    if app_name(served) in serve.status().applications:
        raise PsiRayError(f"'{served}' is already served on this Ray cluster (application {app_name(served)}); "
                          "stop it first or serve this model under another --name")
    try:
        _started.append(app_name(served))
        serve.run(app, name=app_name(served), route_prefix=route_prefix, blocking=False)
        wait_ready(url, served, timeout_s, os.environ.get(api_key_env) if api_key_env else None)
    except BaseException as exc:  # nothing half-started is left behind, Ctrl-C included
        stop(served)
        if isinstance(exc, PsiRayError | KeyboardInterrupt):
            raise
        why = last_line(exc).removeprefix("ray.serve.exceptions.RayServeException: ")
        hint = "; serve under another --route-prefix" if "is being used by application" in why else ""
        raise PsiRayError(f"could not start the Serve app: {why}{hint}") from None
    return url


def listening() -> tuple[str, int]:
    """Host and port Serve's HTTP proxy listens on. ``serve.start`` keeps the options Serve first started with
    (a later call's host and port are ignored with a log line), so a URL built from the asked-for port could
    point at nothing: eval on a cluster whose Serve runs on another port did that."""
    from ray.serve.context import _get_global_client  # Ray 2.60 has no public getter for the running options

    http = _get_global_client().http_config
    return http.host, http.port


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


def stop(served: str | None = None) -> None:
    """Delete the app serving ``served`` (default: every app this process started); shut Serve down only when
    no other app is left (a shared cluster keeps its own)."""
    from ray import serve

    names = [app_name(served)] if served else list(_started)
    for name in names:
        serve.delete(name)
        if name in _started:
            _started.remove(name)
    if not serve.status().applications:
        serve.shutdown()
