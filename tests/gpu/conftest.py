"""GPU tests run only where CUDA is present (``make test-gpu``); elsewhere they skip with a reason.

pytest calls this hook with every item of the session, so only the items under this folder are marked:
a plain ``pytest`` on a CPU machine still runs the unit and integration tests. On a CUDA machine a test whose
engine is not installed (``make test-gpu`` installs them all) skips naming the missing package, so the tests
that need only torch and transformers still run there.
"""

import importlib.util
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(skip)


def needs(*modules: str):
    """Skip unless every module is importable here (``make test-gpu`` installs them: ``EXTRA=gpu``)."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)} (make test-gpu installs it)")
