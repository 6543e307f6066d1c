"""The Ray Data pipeline that makes a PSI dataset and closes the loop; ``run(cfg)`` is the whole job.

- ``engines``: engine actors (:class:`EnginePool`) and :func:`stream` / :func:`generate`, the one way prompts
  reach a model;
- ``runner``: :class:`Run`, the stage runner over the run directory (skip what is done, measure the rest),
  and :class:`StageResult`, what a stage gives back to it;
- ``psi``: the method's wiring, stage by stage, and the stage functions that are not model calls;
- ``closing``: stages 8 and 9, train and eval.
"""

from psi_ray.pipeline.engines import EnginePool, Tally, engine_pool, generate, stream
from psi_ray.pipeline.psi import dataset_stage, filter_stage, run, seeds_stage, verify_stage
from psi_ray.pipeline.runner import Run, StageResult
from psi_ray.runtime import init_ray

__all__ = ["EnginePool", "Run", "StageResult", "Tally", "dataset_stage", "engine_pool", "filter_stage", "generate", "init_ray",
           "run", "seeds_stage", "stream", "verify_stage"]
