"""Energy tracking stays offline and inside the run: no file in the working directory, no network attempt."""

from __future__ import annotations

import socket
import time

from psi_ray import carbon


def test_measure_is_offline_and_writes_nothing_to_cwd(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args[1:] or args)
        raise OSError("network refused by test_carbon")

    monkeypatch.setattr(socket.socket, "connect", lambda self, *a, **k: refuse(self, *a))
    monkeypatch.setattr(socket.socket, "connect_ex", lambda self, *a, **k: refuse(self, *a))
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: refuse(None, *a))

    with carbon.measure("x", "USA", str(tmp_path / "scratch")) as reading:
        end = time.time() + 1.0
        n = 0
        while time.time() < end:  # a short busy loop for the tracker to see
            n += 1

    assert reading["energy_kwh"] > 0 and reading["emissions_kg"] > 0, reading
    assert reading["duration_s"] >= 1.0
    assert reading["power_source"] in ("rapl", "estimate") and reading["nodes"] == 1
    assert not list(cwd.iterdir()), list(cwd.iterdir())  # no emissions.csv, no .codecarbon.config, nothing
    assert attempts == [], attempts
