"""``psi-ray compare`` on a GPU, small: two arms (psi and student) of the built-in job on vLLM, 32 kept rows
each, M_t trained in bf16 with DeepSpeed on one GPU, scored on the first 40 GSM8K test questions."""

import json

import pytest

from tests.gpu.conftest import needs

pytestmark = pytest.mark.gpu


@needs("ray", "vllm", "deepspeed", "lm_eval")
def test_two_arm_compare_on_gpu(ray_session, tmp_path):
    from psi_ray.config import load_config
    from psi_ray.pipeline.compare import CompareSpec, compare

    cfg = load_config("jobs/gsm8k_cpu.yaml", {"runs_dir": str(tmp_path)})
    gpu = {"num_gpus": 1, "num_cpus": 1}
    cfg = cfg.model_copy(update={
        "large": cfg.large.model_copy(update=gpu), "generator": cfg.generator.model_copy(update=gpu),
        "train": cfg.train.model_copy(update={"use_gpu": True, "strategy": "deepspeed", "lora": False,
                                              "num_workers": 1, "batch_size": 8}),
        "carbon": cfg.carbon.model_copy(update={"enabled": False})})
    spec = CompareSpec(arms=("psi", "student"), kept=32, max_attempts=16, questions=40, tasks=("gsm8k",))
    out = compare(cfg, spec)
    data = json.loads((out / "compare.json").read_text())
    steps = data["train_steps"]
    for arm in ("psi", "student"):
        row = data["arms"][arm]
        assert row["quality"]["kept"] <= 32 and row["train"]["steps"] == steps
        assert row["eval"]["scores"]["gsm8k"]
    vs = data["arms"]["psi"]["eval"]["vs_student"]["gsm8k exact_match (strict-match)"]
    assert vs["n"] == 40 and vs["ci95"][0] <= vs["difference"] <= vs["ci95"][1]
    assert (out / "compare.html").exists() and (out / "compare.md").exists()
