"""Config: every shipped YAML validates; bad files report every problem at once with its path or line."""

import json
import time
from pathlib import Path

import pytest

from psi_ray.config import JobConfig, load_config
from psi_ray.errors import PsiRayError
from psi_ray.redact import looks_secret
from tests.conftest import ROOT, run_cli

JOB_FILES = sorted((ROOT / "jobs").glob("*.yaml"))


@pytest.mark.parametrize("path", JOB_FILES, ids=[p.name for p in JOB_FILES])
def test_every_job_validates(path):
    cfg = load_config(path)
    assert cfg.instances.count >= 1


def test_all_errors_reported_at_once(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("instances: {count: -1}\nprinciples: {subsets: 0}\nlarge: {backend: nope}\nunknown_key: 1\n")
    with pytest.raises(PsiRayError) as exc:
        load_config(bad)
    msg = str(exc.value)
    for path in ("instances.count", "principles.subsets", "large.backend", "unknown_key"):
        assert path in msg


def test_malformed_yaml_names_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ninstances: [unclosed\n")
    with pytest.raises(PsiRayError, match=r"bad.yaml:\d+:\d+: malformed YAML"):
        load_config(bad)


def test_validate_cli_exit_codes(tmp_path):
    good = run_cli("validate", str(JOB_FILES[0]))
    assert good.returncode == 0 and "ok" in good.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: not-a-number\n")
    res = run_cli("validate", str(bad))
    assert res.returncode == 2 and "seed" in res.stderr and "Traceback" not in res.stderr


def test_relative_paths_resolve_against_the_job_file(tmp_path):
    (tmp_path / "job.yaml").write_text("task: {seeds: data/seeds.jsonl}\n")
    cfg = load_config(tmp_path / "job.yaml")
    assert cfg.path(cfg.task.seeds) == tmp_path / "data" / "seeds.jsonl"
    assert JobConfig().path("builtin:gsm8k_seeds.jsonl").exists()


def test_digest_follows_config():
    a, b = JobConfig(seed=1), JobConfig(seed=2)
    assert a.digest() != b.digest() and a.digest() == JobConfig(seed=1).digest()
    assert Path(a.run_dir()).name == "psi-psi"


# -- options are JSON-like and fit their backend; YAML that would hang or crash a run is refused -------------

def test_options_checked_against_the_backend(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("large: {backend: vllm, options: {max_modle_len: 2048, dtype: 16}}\n"
                   "generator: {backend: hf, options: {batch_size: 8, threads: 2}}\n"
                   "instances: {count: 0}\n")
    with pytest.raises(PsiRayError) as exc:
        load_config(job)
    msg = str(exc.value)
    assert "2 error(s)" in msg and "instances.count" in msg  # reported together with the rest
    line = next(li for li in msg.splitlines() if li.startswith("  large.options: "))
    assert "max_modle_len: unknown option for the vllm backend (it takes: dtype, engine_kwargs, " in line
    assert "dtype: Input should be a valid string" in line


def test_engine_kwargs_cannot_run_repository_code_or_swap_the_model(tmp_path):
    from psi_ray.backends import load_backend

    job = tmp_path / "job.yaml"
    job.write_text("large: {backend: vllm, options: {engine_kwargs: {trust_remote_code: true, model: /x}}}\n")
    with pytest.raises(PsiRayError) as exc:
        load_config(job)
    assert "engine_kwargs.trust_remote_code: refused" in str(exc.value) and "engine_kwargs.model: refused" in str(exc.value)
    with pytest.raises(PsiRayError, match="trust_remote_code refused"):  # a direct caller is refused too
        load_backend("vllm", "smollm2-135m", engine_kwargs={"trust_remote_code": True})
    with pytest.raises(TypeError, match="max_modle_len"):  # and a misspelt option is never silently dropped
        load_backend("hf", "smollm2-135m", max_modle_len=8)


def test_option_values_must_be_json_like(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("large:\n  backend: vllm\n  options:\n    engine_kwargs: {when: 2024-01-01, 7: x, "
                   "ratio: .nan, tags: !!set {a: null}, at: [1, 2001-12-14t21:59:43.10-05:00]}\n")
    with pytest.raises(PsiRayError) as exc:
        load_config(job)
    msg = str(exc.value)
    assert "1 error(s)" in msg and "large.options: " in msg
    for part in ("engine_kwargs.when: a YAML date (2024-01-01) is not a JSON value; quote it",
                 "engine_kwargs: key 7 is a number, not a string",
                 "engine_kwargs.ratio: nan is not a finite number",
                 "engine_kwargs.tags: a YAML set", "engine_kwargs.at[1]: a YAML timestamp"):
        assert part in msg, msg


def test_a_secret_in_the_job_file_is_pointed_at_the_environment(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("large: {backend: openai, model: m, options: {api_key: sk-live-123}}\n")
    with pytest.raises(PsiRayError) as exc:
        load_config(job)
    msg = str(exc.value)
    assert "large.options: api_key: unknown option for the openai backend" in msg
    assert "put it in an environment variable and name that with api_key_env" in msg
    assert "sk-live-123" not in msg


@pytest.mark.parametrize("key,secret", [
    ("api_key", True), ("apiKey", True), ("hf_token", True), ("HF_TOKEN", True), ("password", True),
    ("db_password", True), ("client_secret", True), ("authorization", True), ("private_key", True),
    ("RAY_AUTH_TOKEN", True), ("aws_secret_access_key", True),
    ("api_key_env", False), ("token_path", False), ("max_tokens", False), ("tokenizer", False),
    ("max_num_batched_tokens", False), ("key", False), ("base_url", False), ("author", False)])
def test_looks_secret(key, secret):
    assert looks_secret(key) is secret


def test_redacted_dump_masks_secret_values_and_keeps_the_rest():
    engine = {"hf_token": "hf_live_123", "max_num_batched_tokens": 64}
    cfg = JobConfig(large={"backend": "openai", "model": "m", "options": {"api_key_env": "MY_KEY"}},
                    generator={"backend": "vllm", "options": {"engine_kwargs": engine}})
    text = cfg.redacted_json()
    assert "hf_live_123" not in text and '"hf_token": "***"' in text
    assert '"api_key_env": "MY_KEY"' in text and '"max_num_batched_tokens": 64' in text
    assert json.loads(text)["generator"]["options"]["engine_kwargs"]["hf_token"] == "***"
    assert JobConfig().redacted_dump() == JobConfig().model_dump(mode="json")  # no field of ours looks secret
    assert "base_dir" not in cfg.redacted_dump(exclude={"base_dir"})


def test_anchors_allowed_alias_bombs_refused(tmp_path):
    ok = tmp_path / "ok.yaml"
    ok.write_text("expand: {sampling: &s {temperature: 0.5}}\ninstances: {sampling: *s}\n")
    assert load_config(ok).instances.sampling.temperature == 0.5
    levels = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    levels += [f"{c}: &{c} [{','.join([f'*{p}'] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi", strict=True)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(levels) + "\n")  # 9**9 values once expanded
    start = time.monotonic()
    with pytest.raises(PsiRayError, match=r"bomb.yaml:\d+:\d+: refused YAML: aliases expand to more than"):
        load_config(bomb)
    assert time.monotonic() - start < 1.0
