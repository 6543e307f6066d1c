"""report.html renders in a real browser: headless Chromium draws a non-blank page with the key figures in it.

Needs ``/usr/bin/chromium`` (Debian package ``chromium``); skipped without it. Chromium runs offline (no
network, no first-run or update traffic) with a throwaway profile under the test's temp folder.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from psi_ray.report import render, write_report
from tests.unit.test_report import make_run

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install chromium)")]


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def test_report_renders_in_chromium(tmp_path):
    psi = make_run(tmp_path, "gsm8k-psi", "psi", stage_kwh=0.001, valid=300,
                   scores={"gsm8k": {"base": 0.1, "finetuned": 0.12}})
    teacher = make_run(tmp_path, "gsm8k-teacher", "teacher", stage_kwh=0.004, valid=200)
    out = write_report(psi, [teacher])
    url = out["html"].resolve().as_uri()

    shot = tmp_path / "report.png"
    res = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,3000", url)
    assert shot.exists(), res.stderr[-2000:]
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB").resize((300, 750))).reshape(-1, 3)
    non_white = float((pixels.min(axis=1) < 235).mean())
    colours = len(np.unique(pixels, axis=0))
    assert non_white > 0.05 and colours > 50, (non_white, colours)

    dom = chromium(tmp_path, "--dump-dom", url).stdout
    run = out["run"]
    assert render.num(run["totals"]["energy_kwh"]) in dom
    assert render.num(run["valid"]) in dom and "gsm8k-psi" in dom and "gsm8k-teacher" in dom
    assert render.num(run["per_1k_valid"]["energy_kwh"]) in dom
    assert "token counts only" in dom
    assert dom.count("data:image/png;base64,") >= 5  # compare, timeline, energy, throughput, validity, projection
