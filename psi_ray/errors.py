"""User-facing errors: the CLI prints their message on one line and exits non-zero, without a traceback."""


class PsiRayError(Exception):
    """An error whose message is meant for the user (bad input, missing extra, unreachable endpoint)."""


class MissingExtraError(PsiRayError):
    """A component needs a package that is not installed; the message names the install command."""

    def __init__(self, package: str, purpose: str, extra: str = "cpu"):
        super().__init__(
            f"{purpose} needs the Python package '{package}', which is not installed. "
            f"Install it with: pip install -e '.[{extra}]'  (or: make install)"
        )


def last_line(exc: BaseException) -> str:
    """An exception's last message line (Ray and lm-eval put the cause last), never empty."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[-1]


def first_line(exc: BaseException) -> str:
    """An exception's type and the first line of its message: for errors whose cause comes first (vLLM's)."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def require(module: str, purpose: str, package: str | None = None, extra: str = "cpu"):
    """Import ``module`` or raise a :class:`MissingExtraError` that says how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name and exc.name.split(".")[0] != module.split(".")[0]:
            raise
        raise MissingExtraError(package or module.split(".")[0], purpose, extra) from None
