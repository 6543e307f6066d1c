"""Ray Train on a tiny model: DeepSpeed ZeRO-2 with 2 CPU workers, LoRA merged on export, and resume after the
training process is killed."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def changed(a, b) -> bool:
    return any((a[k] - b[k]).abs().max() > 0 for k in a if k in b)


def test_deepspeed_zero2_on_two_cpu_workers(ray_session, tiny_model, chat_dataset, tmp_path):
    from psi_ray.config import TrainSpec
    from psi_ray.train import train

    spec = TrainSpec(model=str(tiny_model), strategy="deepspeed", zero_stage=2, num_workers=2, batch_size=2,
                     epochs=1, lr=1e-3, checkpoint_every=3)
    result = train(chat_dataset, tmp_path, spec, seed=0)
    assert result.steps == 6 and result.examples == 24 and len(result.losses) == 6
    assert result.losses[-1] < result.losses[0]
    assert changed(weights(result.model_dir), weights(tiny_model))
    checkpoints = [p for p in (tmp_path / "ray" / "train").glob("checkpoint_*") if p.is_dir()]
    assert len(checkpoints) == 1  # one kept
    assert (checkpoints[0] / "deepspeed" / "zero").is_dir()  # ZeRO optimizer shards, one per rank
    assert len(list((checkpoints[0] / "deepspeed" / "zero").glob("*optim_states.pt"))) == 2


def test_lora_is_merged_into_a_plain_model(ray_session, tiny_model, chat_dataset, tmp_path):
    from transformers import AutoModelForCausalLM

    from psi_ray.config import TrainSpec
    from psi_ray.train import train

    spec = TrainSpec(model=str(tiny_model), lora=True, lora_rank=4, num_workers=2, batch_size=4, lr=1e-2)
    result = train(chat_dataset, tmp_path, spec, seed=0)
    assert not (result.model_dir / "adapter_config.json").exists()
    merged = weights(result.model_dir)
    assert not any("lora" in k for k in merged) and changed(merged, weights(tiny_model))
    AutoModelForCausalLM.from_pretrained(result.model_dir)


def test_killed_training_resumes_from_the_last_checkpoint(tiny_model, chat_dataset, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "psi_ray.cli", "train", str(chat_dataset), "--model", str(tiny_model), "--out", str(out),
           "--batch-size", "2", "--epochs", "3", "--checkpoint-every", "3", "--lr", "1e-3"]
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and not list(out.glob("ray/train/checkpoint_*/state.json")):
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    steps_on_disk = {json.loads(p.read_text())["step"] for p in out.glob("ray/train/checkpoint_*/state.json")}
    assert steps_on_disk and max(steps_on_disk) < 18, (tmp_path / "first.log").read_text()[-3000:]
    assert not (out / "model").exists()

    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    resumed = re.search(r"resumed from step (\d+) of 18", res.stdout + res.stderr)
    assert resumed and int(resumed.group(1)) >= 3 and int(resumed.group(1)) in steps_on_disk
    final = [json.loads(p.read_text()) for p in out.glob("ray/train/checkpoint_*/state.json")]
    last = max(final, key=lambda s: s["step"])
    assert last["step"] == 18 and len(last["losses"]) == 18  # 24 examples / (2 x 2) x 3 epochs, none repeated
    assert (out / "model" / "model.safetensors").exists()
