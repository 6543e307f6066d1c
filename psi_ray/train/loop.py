"""The per-worker training loop that Ray Train runs in every worker process.

One loop for both strategies: torch DDP (gloo on CPU, nccl on GPU; Ray Train sets up the process group) and
DeepSpeed ZeRO-2/3 (bf16 on GPU, fp32 on CPU with a torch optimizer). Data order is a seeded permutation per
epoch and every step takes a fixed slice of it, so a resumed run sees exactly the batches it had left.
Checkpoints go through ``ray.train.report``: ``state.json`` (step, per-step losses, the steps the run was
resumed at), the model in ``model/`` (HF folder or LoRA adapter, written by rank 0) and the optimizer
(``optimizer.pt`` for DDP, DeepSpeed's own files otherwise).
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from psi_ray.errors import PsiRayError

STATE = "state.json"
MODEL = "model"


@dataclass(frozen=True)
class LoopConfig:
    """Everything a training worker needs, resolved on the driver: the ``TrainSpec`` settings the loop reads,
    plus the local model folder, the dataset file, the seed and the torch threads per worker.

    Ray Train hands workers a plain dict (:meth:`as_dict`); :meth:`from_dict` rebuilds this class there, so a
    missing or unknown key fails at the worker's first line instead of as a ``KeyError`` mid-training.
    """

    model_path: str
    dataset: str
    seed: int
    threads: int
    strategy: str
    zero_stage: int
    lora: bool
    lora_rank: int
    use_gpu: bool
    epochs: float
    batch_size: int
    lr: float
    max_seq_len: int
    checkpoint_every: int
    max_steps: int | None

    @classmethod
    def from_spec(cls, spec, model_path: str, dataset: str, seed: int, threads: int) -> LoopConfig:
        """The loop's settings from a validated ``TrainSpec`` (fields the loop does not read are left out)."""
        mine = {f.name for f in fields(cls)}
        return cls(model_path=model_path, dataset=dataset, seed=seed, threads=threads,
                   **{k: v for k, v in spec.model_dump().items() if k in mine})

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LoopConfig:
        return cls(**data)


def batch_indices(step: int, n: int, batch: int, rank: int, world: int, seed: int) -> list[int]:
    """The example indices rank ``rank`` trains on at global step ``step`` (wraps to keep batches full)."""
    import random

    per_epoch = steps_per_epoch(n, batch, world)
    epoch, offset = divmod(step, per_epoch)
    order = list(range(n))
    random.Random(seed * 100_003 + epoch).shuffle(order)
    start = offset * batch * world
    return [order[(start + j) % n] for j in range(rank, batch * world, world)]


def steps_per_epoch(n: int, batch: int, world: int) -> int:
    return max(1, math.ceil(n / (batch * world)))


def total_steps(n: int, batch: int, world: int, epochs: float, max_steps: int | None) -> int:
    """Steps of the whole run: ``epochs`` passes over ``n`` examples, capped at ``max_steps``."""
    steps = max(1, math.ceil(steps_per_epoch(n, batch, world) * epochs))
    return min(steps, max_steps) if max_steps else steps


def train_loop(config: dict) -> None:
    """Ray Train entry point: build model, data and optimizer; train from the last checkpoint to the end."""
    import ray.train
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from psi_ray.train.data import collate, encode_all, read_messages

    cfg = LoopConfig.from_dict(config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if not cfg.use_gpu:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    examples = encode_all(tokenizer, read_messages(Path(cfg.dataset)), cfg.max_seq_len)
    dtype = torch.bfloat16 if cfg.use_gpu and cfg.strategy == "deepspeed" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(cfg.model_path, dtype=dtype)
    if cfg.lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=cfg.lora_rank, lora_alpha=2 * cfg.lora_rank,
                                                 target_modules="all-linear", task_type="CAUSAL_LM"))
    steps = total_steps(len(examples), cfg.batch_size, world, cfg.epochs, cfg.max_steps)
    runner = (DeepSpeedRunner if cfg.strategy == "deepspeed" else DDPRunner)(model, cfg, steps)
    start, losses, resumed_at = 0, [], []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            state = json.loads((Path(folder) / STATE).read_text())
            start, losses = state["step"], state["losses"]
            resumed_at = [*state.get("resumed_at", []), start]  # every resume of this run, for the manifest
            runner.load(Path(folder))
        print(f"[train] resumed from step {start} of {steps}")
    every = cfg.checkpoint_every or steps_per_epoch(len(examples), cfg.batch_size, world)
    for step in range(start, steps):
        idx = batch_indices(step, len(examples), cfg.batch_size, rank, world, cfg.seed)
        losses.append(runner.step(collate([examples[i] for i in idx], pad_id)))
        if rank == 0 and ((step + 1) % 5 == 0 or step == start):
            print(f"[train] step {step + 1}/{steps} loss {losses[-1]:.4f}")
        done = step + 1 == steps
        if not done and (step + 1) % every:
            continue
        metrics = {"step": step + 1, "steps": steps, "loss": losses[-1], "examples": len(examples)}
        with tempfile.TemporaryDirectory() as folder:
            runner.save(Path(folder), rank)
            if rank == 0:
                (Path(folder) / STATE).write_text(json.dumps({"step": step + 1, "losses": losses,
                                                               "resumed_at": resumed_at}))
                tokenizer.save_pretrained(Path(folder) / MODEL)
            has_files = any(Path(folder).iterdir())
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder) if has_files else None)


def _scheduler(optimizer, steps: int):
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1 - s / max(1, steps)))


class DDPRunner:
    """torch DDP via ``ray.train.torch.prepare_model``; AdamW with linear decay and gradient clipping."""

    def __init__(self, model, cfg: LoopConfig, steps: int):
        import ray.train.torch
        import torch

        self.model = ray.train.torch.prepare_model(model)
        self.inner = model
        self.device = ray.train.torch.get_device()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        self.scheduler = _scheduler(self.optimizer, steps)

    def step(self, batch: dict) -> float:
        import torch

        batch = {k: v.to(self.device) for k, v in batch.items()}
        loss = self.model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def save(self, folder: Path, rank: int) -> None:
        import torch

        if rank != 0:
            return
        self.inner.save_pretrained(folder / MODEL)
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                   folder / "optimizer.pt")

    def load(self, folder: Path) -> None:

        _load_weights(self.inner, folder / MODEL)
        opt = read_optimizer_state(folder / "optimizer.pt")
        self.optimizer.load_state_dict(opt["optimizer"])
        self.scheduler.load_state_dict(opt["scheduler"])


class DeepSpeedRunner:
    """DeepSpeed ZeRO over the process group Ray Train made; a torch AdamW (DeepSpeed's CPU Adam needs a build)."""

    def __init__(self, model, cfg: LoopConfig, steps: int):
        import deepspeed
        import torch

        ds_config = {
            "train_micro_batch_size_per_gpu": cfg.batch_size,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": 1.0,
            "zero_optimization": {"stage": cfg.zero_stage,
                                  "stage3_gather_16bit_weights_on_model_save": cfg.zero_stage == 3},
            "bf16": {"enabled": bool(cfg.use_gpu)},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9,
        }
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=_scheduler(optimizer, steps), config=ds_config,
            dist_init_required=False)

    def step(self, batch: dict) -> float:
        batch = {k: v.to(self.engine.device) for k, v in batch.items()}
        loss = self.engine(**batch).loss
        self.engine.backward(loss)
        self.engine.step()
        return float(loss.detach())

    def save(self, folder: Path, rank: int) -> None:
        # Collective: every rank writes its optimizer shard; ZeRO-3 gathers the weights on every rank.
        self.engine.save_checkpoint(str(folder / "deepspeed"), tag="zero")
        module = self.engine.module
        state = (self.engine._zero3_consolidated_16bit_state_dict() if self.engine.zero_optimization_stage() == 3
                 else None)
        if rank == 0:  # with ZeRO-3, ``state`` holds the gathered weights (peft picks its adapters from it)
            module.save_pretrained(folder / MODEL, state_dict=state)

    def load(self, folder: Path) -> None:
        self.engine.load_checkpoint(str(folder / "deepspeed"), tag="zero")


def _load_weights(model, folder: Path) -> None:
    """Load weights saved by ``save_pretrained`` (full model or LoRA adapter) into ``model`` in place."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, state)
    else:
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if "lm_head" not in k]:
            raise RuntimeError(f"checkpoint does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")


def read_optimizer_state(path: Path) -> dict:
    """``optimizer.pt`` as :meth:`DDPRunner.save` wrote it, loaded with ``weights_only``: tensors and plain
    containers only, so a checkpoint folder that holds a crafted pickle (code run on load) is refused."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = (str(exc).strip().splitlines() or ["unpickling failed"])[0]
        raise PsiRayError(f"{path}: refused: not a plain tensor checkpoint ({first})") from None
