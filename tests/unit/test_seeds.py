"""Bad seeds fail before any model loads: clear message, non-zero exit, nothing written."""

import os
from pathlib import Path

import pytest

from psi_ray.config import JobConfig
from psi_ray.errors import PsiRayError
from psi_ray.stages import seeds
from psi_ray.tasks import base as task_base
from psi_ray.tasks.base import read_records
from tests.conftest import run_cli


def cfg_for(path, **kw):
    return JobConfig(task={"adapter": kw.pop("adapter", "gsm8k"), "seeds": str(path)}, **kw)


@pytest.mark.parametrize("content,needle", [
    (b"", "empty"),
    (b'{"q": "x", "a": "y"}\n', "missing ['question', 'answer']"),
    (b'{"question": "caf\xe9", "answer": "#### 1"}\n', "UTF-8"),
    (b'{"question": "How many?", "answer": "It is 4."}\n', "####"),
    (b'not json\n', "not a JSON object"),
])
def test_bad_seed_files(tmp_path, content, needle):
    f = tmp_path / "seeds.jsonl"
    f.write_bytes(content)
    with pytest.raises(PsiRayError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        seeds.load(cfg_for(f))


def test_missing_file(tmp_path):
    with pytest.raises(PsiRayError, match="not found"):
        seeds.load(cfg_for(tmp_path / "nope.jsonl"))


def test_more_subsets_than_seeds_allow(tmp_path):
    f = tmp_path / "seeds.jsonl"
    f.write_text("".join(f'{{"question": "Question number {i}?", "answer": "#### {i}"}}\n' for i in range(4)))
    with pytest.raises(PsiRayError, match="subset_size=5"):
        seeds.load(cfg_for(f, principles={"subsets": 1, "subset_size": 5}, cluster={"num_clusters": 1}))
    with pytest.raises(PsiRayError, match="only 1 distinct subsets"):
        seeds.load(cfg_for(f, principles={"subsets": 2, "subset_size": 4}, cluster={"num_clusters": 1}))


def test_cli_run_with_bad_seeds_writes_nothing(tmp_path):
    (tmp_path / "seeds.jsonl").write_text('{"question": "How many?", "answer": "no marker"}\n')
    job = tmp_path / "job.yaml"
    job.write_text("task: {seeds: seeds.jsonl}\nruns_dir: runs\n")
    res = run_cli("run", str(job), timeout=120)
    assert res.returncode == 2 and "####" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "runs").exists()


# -- seed files are read as written --------------------------------------------------------------------------

def test_jsonl_keeps_a_line_separator_inside_a_string(tmp_path):
    f = tmp_path / "seeds.jsonl"
    f.write_text('{"question": "Two lines\u2028in one\u0085string?", "answer": "#### 2"}\r\n'
                 '{"question": "Next?", "answer": "#### 3"}\n', encoding="utf-8")
    rows = read_records(f, "gsm8k")
    assert [r["question"] for r in rows] == ["Two lines\u2028in one\u0085string?", "Next?"]


def test_csv_keeps_newlines_in_quoted_fields_and_drops_a_bom(tmp_path):
    f = tmp_path / "seeds.csv"
    text = '\ufeffquestion,answer\r\n"Line one\nline two, with a comma","3 + 4 = 7\n#### 7"\r\n'
    f.write_bytes(text.encode())
    rows = read_records(f, "gsm8k")
    assert rows == [{"question": "Line one\nline two, with a comma", "answer": "3 + 4 = 7\n#### 7"}]
    assert seeds.load(cfg_for(f, method="student"))[0]["answer"] == "7"


def test_json_array_file(tmp_path):
    f = tmp_path / "seeds.json"
    f.write_text('[{"question": "One?", "answer": "#### 1"},\n {"question": "Two?", "answer": "#### 2"}]\n')
    assert [r["answer"] for r in read_records(f, "gsm8k")] == ["#### 1", "#### 2"]


def test_devices_pipes_and_huge_files_are_refused_without_reading(tmp_path, monkeypatch):
    fifo = tmp_path / "seeds.jsonl"
    os.mkfifo(fifo)  # opening it would block until a writer comes
    with pytest.raises(PsiRayError, match="not a regular file"):
        read_records(fifo, "gsm8k")
    with pytest.raises(PsiRayError, match="/dev/zero: not a regular file"):
        read_records(Path("/dev/zero"), "gsm8k")
    big = tmp_path / "big.jsonl"
    with open(big, "wb") as fh:
        fh.truncate(600 << 20)  # sparse: 600 MiB on paper, nothing on disk
    with pytest.raises(PsiRayError, match=r"big.jsonl: 600 MiB; seed files are at most 512 MiB"):
        read_records(big, "gsm8k")
    monkeypatch.setattr(task_base, "MAX_SEED_BYTES", 10)  # a file that grows past its stat size
    small = tmp_path / "s.jsonl"
    small.write_text('{"question": "x"}\n')
    with pytest.raises(PsiRayError, match="at most"):
        read_records(small, "gsm8k")
