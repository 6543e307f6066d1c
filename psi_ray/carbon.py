"""Energy and emissions per stage with codecarbon, offline (no network, nothing written outside the run).

codecarbon measures a whole machine, so one tracker runs per machine for each stage: the driver's machine in
the driver, every other machine in a zero-CPU tracker actor pinned to one of its alive Ray nodes; their
figures are summed. Several Ray nodes on one machine (``ray start`` twice on one host, as the two-tier test
cluster does) count once: a machine is a node's ``NodeManagerAddress``. On these CPUs without RAPL,
codecarbon estimates CPU power from its tables, and the manifest says so.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time

from psi_ray.errors import require

FIELDS = ("energy_kwh", "emissions_kg", "cpu_energy_kwh", "gpu_energy_kwh", "ram_energy_kwh")


def _tracker(country: str, stage: str, output_dir: str):
    codecarbon = require("codecarbon", "energy tracking")
    logging.getLogger("codecarbon").setLevel(logging.ERROR)
    return codecarbon.OfflineEmissionsTracker(
        country_iso_code=country, project_name=stage, save_to_file=False, save_to_api=False,
        output_dir=output_dir, measure_power_secs=5, log_level="error", tracking_mode="machine",
    )


def _read(tracker) -> dict:
    data = tracker.final_emissions_data
    modes = {str(getattr(h, "_mode", "")) for h in getattr(tracker, "_hardware", [])}
    source = "rapl" if any("rapl" in m for m in modes) else "estimate"
    return {
        "energy_kwh": float(data.energy_consumed), "emissions_kg": float(data.emissions),
        "cpu_energy_kwh": float(data.cpu_energy), "gpu_energy_kwh": float(data.gpu_energy),
        "ram_energy_kwh": float(data.ram_energy), "power_source": source,
        "cpu_power_w": float(data.cpu_power), "nodes": 1,
    }


class NodeTracker:
    """Runs one codecarbon tracker on the node it is placed on (used as a Ray actor on other nodes)."""

    def __init__(self, country: str, stage: str, output_dir: str):
        self.tracker = _tracker(country, stage, output_dir)
        self.tracker.start()

    def stop(self) -> dict:
        self.tracker.stop()
        return _read(self.tracker)


def _other_node_trackers(country: str, stage: str, output_dir: str) -> list:
    try:
        import ray
    except ImportError:
        return []
    if not ray.is_initialized():
        return []
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    actor = ray.remote(num_cpus=0)(NodeTracker)
    return [
        actor.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote(
            country, stage, output_dir)
        for node_id in other_machines(ray.nodes(), here)
    ]


def other_machines(nodes: list[dict], here: str) -> list[str]:
    """One alive node id per machine other than the driver's (``here`` is the driver's node id).

    ``nodes`` is ``ray.nodes()``. The driver's tracker already measures its own machine, and a tracker on a
    second node of the same machine would count that machine twice.
    """
    alive = sorted((n for n in nodes if n["Alive"]), key=lambda n: n["NodeID"])
    seen = {n["NodeManagerAddress"] for n in alive if n["NodeID"] == here}
    picked = []
    for n in alive:
        if n["NodeManagerAddress"] not in seen:
            seen.add(n["NodeManagerAddress"])
            picked.append(n["NodeID"])
    return picked


def sum_readings(readings: list[dict]) -> dict:
    total = {k: sum(r[k] for r in readings) for k in FIELDS}
    total["power_source"] = "rapl" if all(r["power_source"] == "rapl" for r in readings) else "estimate"
    total["nodes"] = len(readings)
    total["cpu_power_w"] = sum(r["cpu_power_w"] for r in readings)
    return total


@contextlib.contextmanager
def measure(stage: str, country: str, scratch_dir: str, enabled: bool = True):
    """Measure the enclosed block; the yielded dict is filled with the summed readings on exit."""
    result: dict = {"duration_s": 0.0}
    start = time.time()
    if not enabled:
        yield result
        result["duration_s"] = time.time() - start
        return
    os.makedirs(scratch_dir, exist_ok=True)
    local = _tracker(country, stage, scratch_dir)
    local.start()
    remote = _other_node_trackers(country, stage, scratch_dir)
    try:
        yield result
    finally:
        local.stop()
        readings = [_read(local)]
        if remote:
            import ray

            readings += ray.get([a.stop.remote() for a in remote])
        result.update(sum_readings(readings))
        result["duration_s"] = time.time() - start
