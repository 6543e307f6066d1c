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


def node(letter: str, address: str, alive: bool = True) -> dict:
    """A ``ray.nodes()`` entry; node ``x`` has the id ``xxx…`` (Ray checks ids are 56 hex digits)."""
    return {"NodeID": letter * 56, "NodeManagerAddress": address, "Alive": alive}


# Four Ray nodes on two machines (two ``ray start`` per host), plus a dead node on a third machine; the driver
# runs on node a.
NODES = [node("a", "10.0.0.1"), node("b", "10.0.0.1"), node("d", "10.0.0.2"), node("c", "10.0.0.2"),
         node("e", "10.0.0.3", alive=False)]
A, C = "a" * 56, "c" * 56


def test_one_tracker_per_machine_never_the_drivers_machine():
    assert carbon.other_machines(NODES, A) == [C]  # b shares the driver's host; c and d share one host
    assert carbon.other_machines(NODES[:2], A) == []  # the two-node cluster on one machine
    assert carbon.other_machines(NODES, C) == [A]


def test_nodes_on_one_host_are_not_summed_twice(tmp_path, monkeypatch):
    """``measure`` with the Ray calls answered by doubles: each remote tracker reads 1 kWh. Two machines, four
    nodes: the total is the driver's own reading plus one remote machine, not three."""
    import ray

    started: list[str] = []

    class Remote:
        def __init__(self, node_id):
            self.node_id = node_id
            self.stop = self

        def remote(self, *args):
            if args:  # actor.options(...).remote(country, stage, dir): a tracker starts on that node
                started.append(self.node_id)
                return self
            return {**{k: 1.0 for k in carbon.FIELDS}, "power_source": "estimate", "cpu_power_w": 4.0, "nodes": 1}

    class Actor:
        def options(self, scheduling_strategy):
            return Remote(scheduling_strategy.node_id)

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "nodes", lambda: NODES)
    monkeypatch.setattr(ray, "get_runtime_context", lambda: type("Ctx", (), {"get_node_id": lambda self: A})())
    monkeypatch.setattr(ray, "remote", lambda **kw: lambda cls: Actor())
    monkeypatch.setattr(ray, "get", lambda refs: list(refs))

    with carbon.measure("x", "USA", str(tmp_path / "scratch")) as reading:
        time.sleep(0.2)
    assert started == [C]
    assert reading["nodes"] == 2
    local = reading["energy_kwh"] - 1.0
    assert 0 < local < 1e-3, reading  # the driver's own tracker saw a fraction of a second
