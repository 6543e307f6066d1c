"""The stage runner: one run directory and the job's config; a stage runs, measured, unless it is done."""

from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from psi_ray import carbon
from psi_ray.config import JobConfig, ModelSpec
from psi_ray.pipeline.engines import EnginePool
from psi_ray.rundir import StageDir
from psi_ray.tasks import get_adapter


@dataclass(frozen=True)
class StageResult:
    """What a stage's compute gives back to :meth:`Run.stage`.

    ``rows`` is written as the stage's part 0; ``None`` means the stage wrote its own parts (sharded stages
    do, so an interrupted stage keeps what it finished). ``manifest`` is what the stage adds to its manifest:
    counts, tokens, the nodes its engines ran on; ``rows`` and ``errors`` are counted for it when it returns
    rows.
    """

    rows: list[dict] | None
    manifest: dict = field(default_factory=dict)


class Run:
    """One run directory and the job's config: runs a stage unless its manifest says it is done.

    ``engine_uses`` lists, in pipeline order, which stage uses which model tier; after each stage the
    engines that no later stage uses are stopped, so one engine serves every stage that shares it and none
    outlives its last stage (training gets the CPUs and GPUs back).
    """

    def __init__(self, cfg: JobConfig, engine_uses: list[tuple[str, ModelSpec]] | None = None,
                 reuse: list[Path] = ()):
        self.cfg = cfg
        self.reuse = [Path(d) for d in reuse]
        self.dir = cfg.run_dir()
        self.adapter = get_adapter(cfg.task.adapter)
        self.digests: list[str] = []
        self.engines = EnginePool()
        self.engine_uses = list(engine_uses or [])

    def stage(self, name: str, sections: tuple[str, ...], compute, salt: str = "") -> StageDir:
        """Run ``compute(sd) -> StageResult`` measured, unless the stage's manifest says it is done.

        ``sections`` name the config sections the stage depends on: they, the seed, the method and the
        upstream stage's digest make this stage's digest. ``salt`` joins it too (e.g. the content hash of an
        input file). Returns the stage folder.
        """
        sd = StageDir.named(self.dir, name)
        upstream = self.digests[-1] if self.digests else ""
        key = self.cfg.digest(*sections, "seed", "method") + upstream + salt
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        self.digests.append(digest)
        if sd.finished(digest) or self._copy_finished(sd, name, digest):
            print(f"[{name}] done already; reading {sd.path}")
            self._release_engines_after(name)
            return sd
        sd.claim(digest)
        print(f"[{name}] running")
        cc = self.cfg.carbon
        started = self.engines.start_s
        with carbon.measure(name, cc.country_iso_code, str(self.dir / ".carbon"), cc.enabled) as energy:
            result = compute(sd)
        if not isinstance(result, StageResult):
            raise TypeError(f"stage {name!r} returned {type(result).__name__}, not a StageResult")
        rows, extra = result.rows, dict(result.manifest)
        if self.engines.start_s > started:  # this stage started an engine: say how long that took
            extra = {**extra, "engine_start_s": round(self.engines.start_s - started, 1)}
        self._release_engines_after(name)
        if rows is not None:
            sd.write_part(0, rows)
            extra = {"rows": len(rows), "errors": sum(1 for r in rows if r.get("error")), **extra}
        sd.write_manifest({"stage": name, "digest": digest, "seed": self.cfg.seed, "method": self.cfg.method,
                           "energy": energy, "finished_at": time.time(), **extra})
        print(f"[{name}] {extra.get('rows')} rows, {extra.get('errors', 0)} errors, {energy['duration_s']:.1f}s")
        return sd

    def _copy_finished(self, sd: StageDir, name: str, digest: str) -> bool:
        """Copy stage ``name`` from a run in ``reuse`` that finished it with the same digest (the same config
        up to here: ``psi-ray compare``'s arms share seeds, expand and principles); True if one did."""
        if sd.parts():
            return False
        for run_dir in self.reuse:
            other = StageDir.named(run_dir, name)
            if (other.manifest() or {}).get("digest") == digest:
                shutil.copytree(other.path, sd.path, dirs_exist_ok=True)
                print(f"[{name}] same config as in {run_dir.name}: copied")
                return True
        return False

    def _release_engines_after(self, name: str) -> None:
        self.engine_uses = [(stage, spec) for stage, spec in self.engine_uses if stage != name]
        self.engines.release_except([spec for _, spec in self.engine_uses])
