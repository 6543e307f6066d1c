"""Run-directory writes are atomic; the dataset file loads with `datasets` even when empty; stage folders read as
tables; run directories from before the "_" names still read."""

import pytest

from psi_ray.errors import PsiRayError
from psi_ray.rundir import ParquetSink, StageDir
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
        sink.write(dataset.to_records([{"id": "a", "instruction": "q", "response": "r", "principle_ids": ["H00"],
                                        "example_ids": [], "generator": "g", "valid": True,
                                        "reject_reason": None}], "gsm8k", "psi", {}))
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
        sink.write(dataset.to_records(rows, "gsm8k", "psi", {"temperature": 0.7}))
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "data.parquet"), split="train",
                               cache_dir=str(tmp_path / "cache"))
    assert len(ds) == n and "messages" in ds.column_names
    assert ds[0]["messages"] == [{"role": "user", "content": "q0"}, {"role": "assistant", "content": "r0"}]
