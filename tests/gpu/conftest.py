"""GPU tests run only where CUDA is present (``make test-gpu``); elsewhere they skip with a reason.

pytest calls this hook with every item of the session, so only the items under this folder are marked:
a plain ``pytest`` on a CPU machine still runs the unit and integration tests.
"""

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
