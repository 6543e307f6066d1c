"""Ray Train on a tiny model: an interrupted run, resumed, equals the uninterrupted run with the same seed
(the same loss at every step and the same final weights), for DeepSpeed ZeRO-2 (full fine-tuning) with its
training workers killed, and for DDP + LoRA with the whole ``psi-ray train`` process killed; LoRA is merged on
export."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration

TOL = 1e-6  # same seed, same data order, same thread count: CPU training is deterministic to float rounding


def weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def changed(a, b) -> bool:
    return any((a[k] - b[k]).abs().max() > 0 for k in a if k in b)


def max_difference(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def assert_same_run(resumed, full) -> None:
    """Per-step losses and final weights of a resumed run equal those of the uninterrupted one."""
    assert resumed.steps == full.steps and len(resumed.losses) == len(full.losses) == full.steps
    worst = max(abs(x - y) for x, y in zip(resumed.losses, full.losses, strict=True))
    assert worst <= TOL, list(zip(resumed.losses, full.losses, strict=True))
    assert max_difference(weights(resumed.model_dir), weights(full.model_dir)) <= TOL


def kill_train_workers() -> list[int]:
    """SIGKILL this test's Ray Train worker processes (descendants of this process), as a node loss would."""
    import psutil

    killed = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(proc.cmdline()):
                proc.kill()
                killed.append(proc.pid)
        except psutil.Error:
            pass
    return killed


RUN_MARK = "PSI_RAY_TEST_RUN"  # set in a killed run's environment; Ray's processes for that run inherit it


def kill_marked(mark: str) -> None:
    """SIGKILL every process whose environment carries ``mark`` (a run's driver and the Ray processes it started)."""
    import psutil

    for proc in psutil.process_iter():
        try:
            if proc.environ().get(RUN_MARK) == mark:
                proc.kill()
        except psutil.Error:
            pass


def interrupted_then_resumed(dataset, out, spec):
    """Train into ``out``, kill the workers as soon as Ray Train has registered a checkpoint, then run the same
    call again, which must resume from that checkpoint."""
    from psi_ray.errors import PsiRayError
    from psi_ray.train import train

    killed: list[int] = []
    snapshot = out / "_ray" / "train" / "checkpoint_manager_snapshot.json"  # written once a checkpoint is kept

    def kill_once_checkpointed():
        deadline = time.time() + 600
        while time.time() < deadline and not snapshot.exists():
            time.sleep(0.05)
        killed.extend(kill_train_workers())

    killer = threading.Thread(target=kill_once_checkpointed, daemon=True)
    killer.start()
    with pytest.raises(PsiRayError, match="training failed"):
        train(dataset, out, spec, seed=0)
    killer.join()
    assert killed
    assert not (out / "model").exists()
    return train(dataset, out, spec, seed=0)


def test_deepspeed_zero2_resume_equals_uninterrupted(ray_session, tiny_model, chat_dataset, tmp_path):
    from psi_ray.config import TrainSpec
    from psi_ray.train import train

    spec = TrainSpec(model=str(tiny_model), strategy="deepspeed", zero_stage=2, num_workers=2, batch_size=2,
                     epochs=2, lr=1e-3, checkpoint_every=2)
    full = train(chat_dataset, tmp_path / "full", spec, seed=0)
    assert full.steps == 12 and full.examples == 24 and full.resumed_from == 0  # 24 / (2 workers x 2) x 2
    assert full.losses[-1] < full.losses[0]
    assert changed(weights(full.model_dir), weights(tiny_model))
    checkpoints = [p for p in (tmp_path / "full" / "_ray" / "train").glob("checkpoint_*") if p.is_dir()]
    assert len(checkpoints) == 1  # one kept
    assert len(list((checkpoints[0] / "deepspeed" / "zero").glob("*optim_states.pt"))) == 2  # a shard per rank

    resumed = interrupted_then_resumed(chat_dataset, tmp_path / "cut", spec)
    assert 0 < resumed.resumed_from < full.steps and resumed.resumed_from % 2 == 0
    assert_same_run(resumed, full)


# One DDP + LoRA run, never interrupted: the LoRA export test reads it, and the killed CLI run (the same settings,
# as ``psi-ray train ... --lora`` sets them) must come out the same.
CLI_SETTINGS = ["--lora", "--batch-size", "2", "--epochs", "3", "--checkpoint-every", "3", "--lr", "1e-3"]


@pytest.fixture(scope="module")
def ddp_lora_full(ray_session, tiny_model, chat_dataset, tmp_path_factory):
    from psi_ray.config import TrainSpec
    from psi_ray.train import train

    spec = TrainSpec(model=str(tiny_model), lora=True, batch_size=2, epochs=3, checkpoint_every=3, lr=1e-3)
    assert spec.strategy == "ddp" and spec.num_workers == 2
    return spec, train(chat_dataset, tmp_path_factory.mktemp("ddp-full"), spec, seed=0)


def test_lora_is_merged_into_a_plain_model_and_kept_as_an_adapter(ddp_lora_full, tiny_model):
    """The model folder is a plain model (the adapter merged); ``adapter/`` inside it holds the PEFT adapter the
    eval stage serves beside the base, and merging that adapter again gives the same weights."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, result = ddp_lora_full
    assert result.steps == 18 and result.resumed_from == 0  # 24 examples / (2 workers x 2) x 3 epochs
    assert not (result.model_dir / "adapter_config.json").exists()
    merged = weights(result.model_dir)
    assert not any("lora" in k for k in merged) and changed(merged, weights(tiny_model))
    AutoModelForCausalLM.from_pretrained(result.model_dir)
    again = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model),
                                      str(result.model_dir / "adapter")).merge_and_unload().state_dict()
    assert max_difference({k: again[k] for k in merged}, merged) <= 1e-6


def test_killed_ddp_training_resumes_to_the_uninterrupted_result(ddp_lora_full, tiny_model, chat_dataset, tmp_path):
    from psi_ray.config import TrainSpec
    from psi_ray.train import TrainResult

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "psi_ray.cli", "train", str(chat_dataset), "--model", str(tiny_model), "--out",
           str(out), *CLI_SETTINGS]
    mark = f"killed-{tmp_path.name}"
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
                                env={**os.environ, RUN_MARK: mark})
        deadline = time.time() + 300
        # Kill once Ray Train has *registered* a checkpoint (its snapshot file), not when a checkpoint folder first
        # appears: a folder written but not yet registered is not resumed from (a loaded CI run hit that window).
        snapshot = out / "_ray" / "train" / "checkpoint_manager_snapshot.json"
        while time.time() < deadline and proc.poll() is None and not snapshot.exists():
            time.sleep(0.2)
        # The whole run dies at once, as on a lost machine: the CLI's process group and Ray's own processes (its
        # head, the training workers), which live in sessions of their own and would otherwise train on for a
        # few seconds after the driver is gone (on this tiny model that can reach the last step).
        os.killpg(proc.pid, signal.SIGKILL)
        kill_marked(mark)
        proc.wait()
    steps_on_disk = {json.loads(p.read_text())["step"] for p in out.glob("_ray/train/checkpoint_*/state.json")}
    assert steps_on_disk and max(steps_on_disk) < 18, (tmp_path / "first.log").read_text()[-3000:]
    assert not (out / "model").exists()
    spec, full = ddp_lora_full
    assert TrainSpec(**json.loads((out / "_training.json").read_text())["spec"]) == spec  # the same settings

    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    resumed_at = re.search(r"resumed from step (\d+) of 18", res.stdout + res.stderr)
    assert resumed_at and int(resumed_at.group(1)) >= 3 and int(resumed_at.group(1)) in steps_on_disk
    last = max((json.loads(p.read_text()) for p in out.glob("_ray/train/checkpoint_*/state.json")),
               key=lambda s: s["step"])
    assert last["resumed_at"] == [int(resumed_at.group(1))]
    assert_same_run(TrainResult(out / "model", last["step"], 24, last["losses"], 0.0, last["resumed_at"][-1]), full)
