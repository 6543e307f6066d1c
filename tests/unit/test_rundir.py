"""Run-directory writes are atomic; the dataset file loads with `datasets` even when empty; stage folders read as
tables; run directories from before the "_" names still read."""

import pytest

from psi_ray.errors import PsiRayError
from psi_ray.rundir import ParquetSink, StageDir, typed_table
from psi_ray.stages import dataset


def test_manifest_digest_mismatch_is_an_error(tmp_path):
    sd = StageDir(tmp_path, 3, "cluster")
    assert sd.finished("abc") is None
    sd.write_manifest({"digest": "abc"})
    assert sd.finished("abc")["digest"] == "abc"
    with pytest.raises(PsiRayError, match="different config"):
        sd.finished("xyz")


def test_parquet_sink_is_atomic(tmp_path):
    target = tmp_path / "data.parquet"
    with pytest.raises(RuntimeError), ParquetSink(target, dataset.schema()) as sink:
        sink.write_table(dataset.to_table(typed_table([{"id": "a", "instruction": "q", "response": "r",
                                                        "principle_ids": ["H00"], "example_ids": [], "generator": "g",
                                                        "valid": True, "reject_reason": None}]), "gsm8k", "psi", {}))
        raise RuntimeError("killed mid-write")
    assert not target.exists() and not list(tmp_path.iterdir())


def test_empty_dataset_keeps_its_columns(tmp_path):
    import pyarrow.parquet as pq

    with ParquetSink(tmp_path / "data.parquet", dataset.schema()):
        pass
    assert pq.read_table(tmp_path / "data.parquet").schema.names == dataset.schema().names


def test_dataset_loads_with_datasets(tmp_path, n=3):
    import datasets

    rows = [{"id": f"i{i}", "instruction": f"q{i}", "response": f"r{i}", "principle_ids": ["H00"],
             "example_ids": ["seed-00000"], "generator": "g", "valid": True, "reject_reason": None} for i in range(n)]
    with ParquetSink(tmp_path / "data.parquet", dataset.schema()) as sink:
        sink.write_table(dataset.to_table(typed_table(rows), "gsm8k", "psi", {"temperature": 0.7}))
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "data.parquet"), split="train",
                               cache_dir=str(tmp_path / "cache"))
    assert len(ds) == n and "messages" in ds.column_names
    assert ds[0]["messages"] == [{"role": "user", "content": "q0"}, {"role": "assistant", "content": "r0"}]


def test_parts_with_empty_columns_still_read_as_one_table(tmp_path):
    """A shard where no row had an error (or none was verified) types those columns like the other shards."""
    import pandas as pd

    sd = StageDir.named(tmp_path, "verify")
    sd.write_part(0, [{"id": "a", "error": None, "verified": None, "agreement": None, "verify_answers": []}])
    sd.write_part(1, [{"id": "b", "error": "parse", "verified": True, "agreement": 0.5, "verify_answers": ["4"]}])
    table = pd.read_parquet(sd.path)
    assert list(table["id"]) == ["a", "b"] and list(table["verify_answers"][1]) == ["4"]
    assert table["verified"].tolist()[1] is True and table["agreement"].tolist()[1] == 0.5


def test_stage_folders_read_as_tables_by_arrow_tools(tmp_path):
    """Only the parts are table; the manifest, digest stamp, card and sample folders start with "_"."""
    import datasets
    import pandas as pd
    import pyarrow.dataset as pads

    sd = StageDir.named(tmp_path, "eval")
    sd.claim("abc")
    sd.write_part(0, [{"task": "gsm8k exact_match", "model": "base", "value": 0.5}])
    sd.write_part(1, [{"task": "gsm8k exact_match", "model": "finetuned", "value": 0.75}])
    sd.write_manifest({"digest": "abc"})
    (sd.path / "_samples" / "base").mkdir(parents=True)
    (sd.path / "_samples" / "base" / "samples_gsm8k.jsonl").write_text("{}\n")
    (sd.path / "_scores.json").write_text("{}")
    assert sorted(pd.read_parquet(sd.path)["value"]) == [0.5, 0.75]
    assert pads.dataset(sd.path).count_rows() == 2
    assert datasets.load_dataset("parquet", data_files=str(sd.path / "*.parquet"),
                                 cache_dir=str(tmp_path / "hf"))["train"].num_rows == 2


def test_run_directories_from_before_the_underscore_names_still_read(tmp_path):
    import json

    from psi_ray.rundir import model_dir, scores_file

    sd = StageDir.named(tmp_path, "filter")
    sd.path.mkdir(parents=True)
    (sd.path / "manifest.json").write_text(json.dumps({"digest": "old", "kept": 3}))
    assert sd.manifest()["kept"] == 3 and sd.finished("old")
    (tmp_path / "09_eval").mkdir()
    (tmp_path / "09_eval" / "scores.json").write_text("{}")
    (tmp_path / "08_train" / "model").mkdir(parents=True)
    assert scores_file(tmp_path) == tmp_path / "09_eval" / "scores.json"
    assert model_dir(tmp_path) == tmp_path / "08_train" / "model"
    sd.write_manifest({"digest": "new"})  # a rewrite takes the new name, which wins from then on
    assert sd.manifest_path.name == "_manifest.json" and sd.manifest()["digest"] == "new"
    (tmp_path / "model").mkdir()
    (tmp_path / "09_eval" / "_scores.json").write_text("{}")
    assert model_dir(tmp_path) == tmp_path / "model" and scores_file(tmp_path).name == "_scores.json"
