"""Bad seeds fail before any model loads: clear message, non-zero exit, nothing written."""

import pytest

from psi_ray.config import JobConfig
from psi_ray.errors import PsiRayError
from psi_ray.stages import seeds
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
