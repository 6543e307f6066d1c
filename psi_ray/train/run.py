"""The driver side of training: a Ray Train ``TorchTrainer``, resume, and the exported HF folder.

Ray Train keeps its state under ``OUT/_ray/``: checkpoints (one kept) and the run snapshot;
``OUT/_training.json`` says what the folder trains. Starting again with the same output folder resumes from
the last checkpoint: Ray Train finds the snapshot and every worker gets the checkpoint from
``ray.train.get_checkpoint()``. The final model is written atomically to ``model_dir`` (``OUT/model`` unless
given; a run puts it in the run directory, beside the stage folders).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from psi_ray.config import TrainSpec
from psi_ray.errors import PsiRayError, last_line, require
from psi_ray.rundir import ADAPTER_DIR, MODEL_DIR, TRAIN_CLAIM, TRAIN_STATE, atomic_write_text, dataset_file
from psi_ray.runtime import cuda_available
from psi_ray.train.loop import MODEL, STATE, LoopConfig

# How often Ray Train's controller polls the workers (Ray's default: 2 s). A worker's ``ray.train.report`` blocks
# until the controller's next poll takes it, so with the default every checkpoint of a short CPU run waited up to
# 2 s: a 12-step ZeRO-2 run on the tiny test model took 47 s, 27 s at 0.2 s (same losses). Polling a few workers
# four times a second costs nothing measurable; set RAY_TRAIN_HEALTH_CHECK_INTERVAL_S to override.
CONTROLLER_POLL_S = "0.25"


@dataclass
class TrainResult:
    """What one ``train`` call produced: ``losses`` has one entry per step of the whole run (resumed runs
    included); ``resumed_from`` is the checkpoint step this call went on from (0: it started fresh)."""

    model_dir: Path
    steps: int
    examples: int
    losses: list[float]
    seconds: float
    resumed_from: int


def resolve_dataset(source: str | Path) -> Path:
    """A run directory (its ``07_dataset/data.parquet``) or a Parquet file → the dataset file."""
    path = Path(source)
    if path.is_dir():
        path = dataset_file(path)
    if not path.is_file():
        raise PsiRayError(f"no dataset at {path}: pass a run directory with a finished dataset stage or a Parquet file")
    return path.resolve()  # absolute: the training workers read it from another working directory


def check_resources(spec: TrainSpec) -> None:
    """Fail with one line, before Ray schedules anything, when the requested workers cannot run here."""
    if spec.use_gpu:
        require("torch", "training")
        if not cuda_available():
            raise PsiRayError("train.use_gpu is set but this machine has no CUDA GPU; set use_gpu: false")
    if spec.strategy == "deepspeed":
        require("deepspeed", "training with DeepSpeed")
    if spec.lora:
        require("peft", "LoRA training")


def check_examples(messages: list[list[dict]], model_path: str, max_seq_len: int) -> int:
    """Encode the dataset once in the driver: an empty dataset or a model without a chat template is reported
    before any worker starts. Returns the number of usable examples."""
    from transformers import AutoTokenizer

    from psi_ray.train.data import encode_all

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    return len(encode_all(tokenizer, messages, max_seq_len))


def train(dataset: str | Path, out_dir: str | Path, spec: TrainSpec, seed: int = 0,
          model_dir: str | Path | None = None) -> TrainResult:
    """Fine-tune ``spec.model`` on ``dataset``; resume from ``out_dir`` if a run was interrupted there.

    The trained model goes to ``model_dir`` (default ``out_dir/model``). Bad input (no dataset, no ``messages``
    column, an unknown model, a missing extra) is reported before torch or Ray is imported: in about a second,
    not the ~6-17 s those imports and a tokenizer load took first."""
    from psi_ray.models import resolve_model
    from psi_ray.train.data import read_messages

    dataset = resolve_dataset(dataset)
    messages = read_messages(dataset)
    check_resources(spec)
    model_path = resolve_model(spec.model)
    check_examples(messages, model_path, spec.max_seq_len)  # bad data fails here, before Ray starts
    del messages  # the workers read the file themselves

    import ray
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from psi_ray.runtime import init_ray

    out_dir = Path(out_dir).resolve()
    target = Path(model_dir).resolve() if model_dir else out_dir / MODEL_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    adopt_legacy_names(out_dir)
    claim_output(out_dir, dataset, model_path, spec, seed)
    init_ray()
    cpus = ray.cluster_resources().get("CPU", 1)
    threads = max(1, int(spec.cpus_per_worker)) if spec.num_workers > 1 else max(1, int(cpus))
    loop_cfg = LoopConfig.from_spec(spec, model_path, str(dataset), seed, threads)
    if spec.strategy == "deepspeed":
        os.environ.setdefault("DS_BUILD_OPS", "0")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", CONTROLLER_POLL_S)  # Ray Train passes it on
    trainer = TorchTrainer(
        _loop,
        train_loop_config=loop_cfg.as_dict(),
        scaling_config=ScalingConfig(num_workers=spec.num_workers, use_gpu=spec.use_gpu,
                                     resources_per_worker={"CPU": spec.cpus_per_worker, **spec.resources}),
        run_config=RunConfig(name="train", storage_path=str(out_dir / TRAIN_STATE),
                             checkpoint_config=CheckpointConfig(num_to_keep=1)),
    )
    started = time.time()
    try:
        result = trainer.fit()
    except Exception as exc:  # Ray wraps worker failures; show the root cause on one line
        raise PsiRayError(f"training failed: {_root_cause(exc)}") from None
    if result.checkpoint is None:
        raise PsiRayError("training finished without a checkpoint")
    with result.checkpoint.as_directory() as folder:
        state = json.loads((Path(folder) / STATE).read_text())
        try:
            export(Path(folder) / MODEL, model_path, target, spec.lora)
        except OSError as exc:
            raise PsiRayError(f"could not write the trained model to {target}: {exc}") from None
    resumed_from = (state.get("resumed_at") or [0])[-1]  # what the workers did, not a guess from the folder
    return TrainResult(target, state["step"], int(result.metrics.get("examples", 0)),
                       state["losses"], time.time() - started, resumed_from)


def adopt_legacy_names(out_dir: Path) -> None:
    """An output folder written before the "_" names (``ray/``, ``training.json``) is renamed in place, so an
    interrupted training there resumes and the settings check still applies."""
    for old, new in (("ray", TRAIN_STATE), ("training.json", TRAIN_CLAIM)):
        if (out_dir / old).exists() and not (out_dir / new).exists():
            os.replace(out_dir / old, out_dir / new)


def claim_output(out_dir: Path, dataset: Path, model_path: str, spec: TrainSpec, seed: int) -> None:
    """Record what this output folder trains; refuse to resume a checkpoint made from other data or settings."""
    import hashlib

    digest = hashlib.sha256()
    with open(dataset, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    mine = {"dataset_sha256": digest.hexdigest(), "model": model_path, "seed": seed, "spec": spec.model_dump()}
    path = out_dir / TRAIN_CLAIM
    if path.exists():
        theirs = json.loads(path.read_text())
        if theirs != mine:
            changed = sorted(k for k in mine if theirs.get(k) != mine[k])
            raise PsiRayError(f"{out_dir} holds a training run made with a different {', '.join(changed)}; "
                              "use another --out, or delete that folder to start over")
        return
    atomic_write_text(path, json.dumps(mine, indent=2))


def _loop(cfg):
    """Module-level so Ray pickles a reference, not the function body."""
    from psi_ray.train.loop import train_loop

    train_loop(cfg)


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return last_line(exc)


def export(checkpoint_model: Path, base_path: str, target: Path, lora: bool) -> Path:
    """Write the trained model as a plain HF folder at ``target``. LoRA adapters are merged into the base, and
    the adapter itself is kept in ``target/adapter`` (:data:`~psi_ray.rundir.ADAPTER_DIR`): the eval stage
    serves it beside the base from one engine."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".model-", dir=target.parent))
    try:
        if lora:
            from peft import PeftModel

            base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
            model = PeftModel.from_pretrained(base, str(checkpoint_model)).merge_and_unload()
            (tmp / ADAPTER_DIR).mkdir()
            for name in ("adapter_config.json", "adapter_model.safetensors"):
                shutil.copy2(checkpoint_model / name, tmp / ADAPTER_DIR / name)
        else:
            model = AutoModelForCausalLM.from_pretrained(str(checkpoint_model), dtype=torch.float32)
        model.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(str(checkpoint_model)).save_pretrained(tmp)
        tmp.chmod(0o755)
        old = target.with_name(f".{target.name}-old-{os.getpid()}")
        if target.exists():  # the old model stays whole until the new one is in place
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
