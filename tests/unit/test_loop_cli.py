"""train / serve / eval at the CLI edge: bad input gives one clear line, exit 2, and nothing is written; the
base vs fine-tuned score table is built from lm-eval's metric names."""

import pyarrow as pa
import pyarrow.parquet as pq

from psi_ray.pipeline.closing import table
from tests.conftest import run_cli
from tests.unit.test_cli_errors import assert_clean_error


def test_train_needs_a_dataset(tmp_path):
    assert_clean_error(run_cli("train", str(tmp_path)), "no dataset", "07_dataset")
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    assert_clean_error(run_cli("train", str(bad), "--out", str(tmp_path / "out")), "not a readable Parquet")
    assert not (tmp_path / "out" / "model").exists()


def test_train_checks_columns_and_arguments(tmp_path):
    data = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["a"]}), data)
    assert_clean_error(run_cli("train", str(data), "--out", str(tmp_path / "o"), "--model", "smollm2-135m",
                               "--num-workers", "1"), "no 'messages' column", "text")
    assert_clean_error(run_cli("train", str(data), "--lr", "-1"), "lr")
    chat = tmp_path / "chat.parquet"  # the dataset is read first, so the model check needs a valid one
    pq.write_table(pa.table({"messages": [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]]}),
                   chat)
    assert_clean_error(run_cli("train", str(chat), "--model", "no-such-model"), "unknown model")


def test_eval_rejects_unknown_tasks_and_unreachable_endpoints():
    assert_clean_error(run_cli("eval", "http://127.0.0.1:9/v1", "--tasks", "gsm8k,trivia"), "trivia", "gsm8k, mmlu")
    assert_clean_error(run_cli("eval", "http://127.0.0.1:9/v1", "--tasks", "gsm8k"), "cannot reach")


def test_serve_rejects_a_folder_that_is_not_a_model(tmp_path):
    assert_clean_error(run_cli("serve", str(tmp_path)), "no config.json")
    assert_clean_error(run_cli("serve", "smollm2-135m", "--num-cpus", "0"), "serve arguments", "num_cpus")
    assert_clean_error(run_cli("serve", "smollm2-135m", "--host", "0.0.0.0"), "without a key", "--allow-no-key")
    assert_clean_error(run_cli("serve", "smollm2-135m", "--adapter", "ft"), "NAME=DIR")
    assert_clean_error(run_cli("serve", "smollm2-135m", "--adapter", f"ft={tmp_path}"), "not a PEFT LoRA adapter")


def test_score_table_pairs_base_and_finetuned():
    reports = {"base": {"tasks": {"gsm8k": {"exact_match,strict-match": 0.02, "exact_match,flexible-extract": 0.04}}},
               "finetuned": {"tasks": {"gsm8k": {"exact_match,strict-match": 0.06, "exact_match,flexible-extract": 0.08},
                                       "mmlu": {"acc,none": 0.3}}}}
    assert table(reports) == {
        "gsm8k exact_match (strict-match)": {"base": 0.02, "finetuned": 0.06},
        "gsm8k exact_match (flexible-extract)": {"base": 0.04, "finetuned": 0.08},
        "mmlu acc": {"finetuned": 0.3},
    }


def test_job_env_keys_come_from_the_submitted_jobs_runtime_env(monkeypatch):
    import json

    from psi_ray.runtime import job_env_keys

    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert job_env_keys() == set()
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(
        {"runtime_env": {"working_dir": "x", "env_vars": {"HF_HUB_OFFLINE": "1", "PSI_RAY_HOME": "/h"}}}))
    assert job_env_keys() == {"HF_HUB_OFFLINE", "PSI_RAY_HOME"}


def test_training_output_refuses_other_settings(tmp_path, tiny_model):
    import pytest

    from psi_ray.config import TrainSpec
    from psi_ray.errors import PsiRayError
    from psi_ray.train.run import claim_output

    data = tmp_path / "d.parquet"
    pq.write_table(pa.table({"x": [1]}), data)
    claim_output(tmp_path, data, str(tiny_model), TrainSpec(lr=1e-4), 0)
    claim_output(tmp_path, data, str(tiny_model), TrainSpec(lr=1e-4), 0)  # the same run resumes
    with pytest.raises(PsiRayError, match="different spec"):
        claim_output(tmp_path, data, str(tiny_model), TrainSpec(lr=1e-3), 0)
    pq.write_table(pa.table({"x": [2]}), data)
    with pytest.raises(PsiRayError, match="different dataset_sha256"):
        claim_output(tmp_path, data, str(tiny_model), TrainSpec(lr=1e-4), 0)


def test_job_eval_tasks_are_the_shipped_ones():
    import pytest
    from pydantic import ValidationError

    from psi_ray.config import EvalSpec
    from psi_ray.evaluate import TASKS

    assert set(EvalSpec.model_fields["tasks"].annotation.__args__[0].__args__) == set(TASKS)
    with pytest.raises(ValidationError):
        EvalSpec(tasks=["trivia"])


def test_train_flags_come_from_train_spec():
    """Every TrainSpec field the train verb takes is a flag whose help shows the field's own default."""
    import argparse

    from psi_ray.cli.loop import TRAIN_FLAGS, add_spec_flags
    from psi_ray.config import TrainSpec

    parser = argparse.ArgumentParser()
    add_spec_flags(parser)
    actions = {a.dest: a for a in parser._actions}
    for name, dest in TRAIN_FLAGS.items():
        field = TrainSpec.model_fields[name]
        assert f"default {field.default}" in actions[dest].help or field.default is None, name
    assert actions["strategy"].choices == ["ddp", "deepspeed"] and actions["zero_stage"].choices == [2, 3]
    args = parser.parse_args(["--epochs", "0.5", "--lora", "--gpu", "--zero-stage", "3"])
    assert (args.epochs, args.lora, args.gpu, args.zero_stage, args.lr) == (0.5, True, True, 3, None)
    assert set(TRAIN_FLAGS) == set(TrainSpec.model_fields) - {"enabled", "resources"}  # a new field gets a flag
