"""Training data: the loss falls on assistant tokens only; batches are seeded, full and disjoint per rank."""

import pytest

from psi_ray.errors import PsiRayError
from psi_ray.train.data import IGNORE, collate, encode, encode_all
from psi_ray.train.loop import batch_indices, steps_per_epoch, total_steps

CONV = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "2 + 3 = <<2+3=5>>5\n#### 5"}]


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def test_labels_mask_the_prompt_and_keep_the_answer(tokenizer):
    e = encode(tokenizer, CONV, 512)
    prompt = tokenizer(tokenizer.apply_chat_template(CONV[:1], tokenize=False, add_generation_prompt=True),
                       add_special_tokens=False)["input_ids"]
    assert e["input_ids"][: len(prompt)] == prompt
    assert e["labels"][: len(prompt)] == [IGNORE] * len(prompt)
    answer = e["labels"][len(prompt):]
    assert answer == e["input_ids"][len(prompt):] and IGNORE not in answer
    assert "#### 5" in tokenizer.decode(answer)


def test_truncation_and_rows_without_an_answer(tokenizer):
    full = encode(tokenizer, CONV, 512)
    cut = encode(tokenizer, CONV, len(full["input_ids"]) - 2)
    assert cut["input_ids"] == full["input_ids"][:-2] and cut["labels"] == full["labels"][:-2]
    assert encode(tokenizer, CONV, 3) is None  # nothing of the answer is left
    assert encode(tokenizer, CONV[:1], 512) is None  # no assistant turn
    with pytest.raises(PsiRayError, match="no training example"):
        encode_all(tokenizer, [CONV], 3)


def test_collate_pads_with_ignored_labels(tokenizer):
    a = encode(tokenizer, CONV, 512)
    n = len(a["input_ids"]) - 2
    b = encode(tokenizer, CONV, n)
    batch = collate([a, b], pad_id=0)
    assert batch["input_ids"].shape == (2, len(a["input_ids"]))
    assert batch["attention_mask"][1].sum() == n and (batch["labels"][1, n:] == IGNORE).all()


def test_model_without_chat_template_is_refused(tokenizer):
    tokenizer = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tokenizer.chat_template = None
    with pytest.raises(PsiRayError, match="chat template"):
        encode_all(tokenizer, [CONV], 512)


def test_batches_cover_each_epoch_and_ranks_are_disjoint():
    n, batch, world = 10, 2, 2
    per_epoch = steps_per_epoch(n, batch, world)
    assert per_epoch == 3
    seen = []
    for step in range(per_epoch):
        r0, r1 = (batch_indices(step, n, batch, r, world, seed=1) for r in range(world))
        assert len(r0) == len(r1) == batch and not set(r0) & set(r1)
        seen += r0 + r1
    assert set(seen) == set(range(n))  # the last step wraps around to stay full
    assert batch_indices(4, n, batch, 0, world, 1) == batch_indices(4, n, batch, 0, world, 1)  # resume sees the same
    assert batch_indices(0, n, batch, 0, world, 1) != batch_indices(3, n, batch, 0, world, 1)  # new order per epoch
    assert total_steps(n, batch, world, epochs=2, max_steps=None) == 6
    assert total_steps(n, batch, world, epochs=2, max_steps=4) == 4


def test_loop_config_is_built_from_the_spec_and_refuses_unknown_keys():
    import dataclasses

    import pytest

    from psi_ray.config import TrainSpec
    from psi_ray.train.loop import LoopConfig

    resolved = {"model_path", "dataset", "seed", "threads"}  # what the driver works out; the rest is the spec's
    assert {f.name for f in dataclasses.fields(LoopConfig)} - resolved <= set(TrainSpec.model_fields)
    spec = TrainSpec(lr=1e-4, max_steps=7, strategy="deepspeed", zero_stage=3)
    cfg = LoopConfig.from_spec(spec, "/m", "/d.parquet", seed=3, threads=2)
    assert (cfg.lr, cfg.max_steps, cfg.strategy, cfg.zero_stage, cfg.threads) == (1e-4, 7, "deepspeed", 3, 2)
    assert LoopConfig.from_dict(cfg.as_dict()) == cfg  # what Ray Train carries to the workers
    with pytest.raises(TypeError, match="unexpected keyword"):
        LoopConfig.from_dict({**cfg.as_dict(), "learning_rate": 1.0})


def test_a_training_folder_from_before_the_underscore_names_is_adopted(tmp_path):
    from psi_ray.train.run import adopt_legacy_names

    (tmp_path / "ray" / "train").mkdir(parents=True)
    (tmp_path / "training.json").write_text("{}")
    adopt_legacy_names(tmp_path)
    assert (tmp_path / "_ray" / "train").is_dir() and (tmp_path / "_training.json").is_file()
    assert not (tmp_path / "ray").exists() and not (tmp_path / "training.json").exists()


def test_a_relative_dataset_path_reaches_the_workers_absolute(tmp_path, monkeypatch):
    """Ray Train workers run in another working directory: ``psi-ray train data.parquet`` must hand them an
    absolute path (a relative one failed in every worker with "not a readable Parquet dataset")."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from psi_ray.train.run import resolve_dataset

    pq.write_table(pa.table({"messages": [[{"role": "user", "content": "hi"}]]}), tmp_path / "data.parquet")
    monkeypatch.chdir(tmp_path)
    path = resolve_dataset("data.parquet")
    assert path.is_absolute() and path == tmp_path / "data.parquet"
