"""Bad input everywhere gets a clear answer: one table of bad seeds, configs, CLI arguments and environments.

Each row runs one ``psi-ray`` command in a fresh ``tmp_path`` (the working directory too) and expects its exit
code, exactly one ``psi-ray: error: ...`` line (or argparse's own) holding every needle, no traceback, and
nothing written: the folder holds the same files afterwards, and no run directory. Most rows call
``psi_ray.cli.main`` in this process (fast); rows marked ``sub`` run ``python -m psi_ray.cli`` in a fresh
interpreter, as a user would. Arithmetic that runs away is covered in ``test_content_checks.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from psi_ray import cli
from tests.conftest import run_cli

GSM = '{"question": "What is 2 + 2?", "answer": "2 + 2 = 4\\n#### 4"}\n'
FIVE = GSM * 5
BOMB = 'a: &a ["x","x","x","x","x","x","x","x","x"]\n' + "".join(
    f"{c}: &{c} [{','.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefg", "bcdefgh", strict=True))
FIFO, SPARSE, BROKEN_LINK, FOLDER = object(), object(), object(), object()


def job(seeds: str = "seeds.jsonl", extra: str = "") -> str:
    return f"runs_dir: runs\ntask: {{seeds: {seeds}}}\n{extra}"


@dataclass
class Case:
    id: str
    argv: list[str]
    files: dict = field(default_factory=dict)  # name -> text, bytes, or FIFO / SPARSE / BROKEN_LINK / FOLDER
    needles: tuple[str, ...] = ()
    code: int = 2
    env: dict = field(default_factory=dict)
    prefix: str = "psi-ray: error:"
    sub: bool = False  # run in a fresh interpreter


RUN = ["run", "job.yaml"]
VALIDATE = ["validate", "job.yaml"]
REMOTE = "http://10.255.255.1:9"  # unroutable: a request there would hang


def seeded(content, name: str = "seeds.jsonl", extra: str = "") -> dict:
    """A job reading ``name``, and that seed file."""
    return {"job.yaml": job(name, extra), name: content}


def cfg(text: str) -> dict:
    return {"job.yaml": text}


OPENAI_JOB = job(extra=f"large: {{backend: openai, model: m, options: {{base_url: '{REMOTE}/v1', "
                 "api_key_env: PSI_T_KEY}}\n")
CASES = [
    # -- seed files ------------------------------------------------------------------------------------------
    Case("seeds-empty", RUN, seeded(""), ("is empty",), sub=True),
    Case("seeds-missing-columns", RUN, seeded('{"q": "x", "a": "y"}\n'), ("missing ['question', 'answer']",)),
    Case("seeds-not-utf8", RUN, seeded(b'{"question": "caf\xe9", "answer": "#### 1"}\n'),
         ("not valid UTF-8 (byte 17)",)),
    Case("seeds-no-final-answer", RUN, seeded('{"question": "x?", "answer": "4"}\n'),
         ("row 1: GSM8K answer has no final '#### <number>' line",)),
    Case("seeds-not-json", RUN, seeded("not json\n"), ("seeds.jsonl:1: not a JSON object",)),
    Case("seeds-nan", RUN, seeded(GSM + '{"question": NaN, "answer": "#### 1"}\n'),
         ("seeds.jsonl:2: not a JSON object: NaN is not a JSON value",)),
    Case("seeds-array-line", RUN, seeded("[1, 2]\n"), ("expected a JSON object per line",)),
    Case("seeds-file-missing", RUN, cfg(job("nope.jsonl")), ("seed file not found", "nope.jsonl")),
    Case("seeds-dev-zero", RUN, cfg(job("/dev/zero")), ("/dev/zero: not a regular file",), sub=True),
    Case("seeds-fifo", RUN, seeded(FIFO), ("seeds.jsonl: not a regular file",)),
    Case("seeds-too-big", RUN, seeded(SPARSE), ("seeds.jsonl: 600 MiB; seed files are at most 512 MiB",)),
    Case("seeds-broken-link", RUN, seeded(BROKEN_LINK, "s/a.jsonl") | cfg(job("s")),
         ("a.jsonl: cannot read it",)),
    Case("seeds-csv-extra-field", RUN, seeded("question,answer\nx,#### 1,extra\n", "s.csv"),
         ("s.csv:2: 3 fields, the header has 2",)),
    Case("seeds-bad-parquet", RUN, seeded(b"PAR1 not really", "s.parquet"),
         ("s.parquet: not a readable Parquet file",)),
    Case("seeds-empty-folder", RUN, seeded("x", "s/notes.txt") | cfg(job("s")),
         ("no .jsonl, .csv or .parquet",)),
    Case("seeds-empty-field", RUN, seeded('{"question": "", "answer": "#### 1"}\n'),
         ("row 1 has an empty 'question'",)),
    Case("seeds-mmlu-answer", RUN,
         {"job.yaml": "runs_dir: runs\ntask: {adapter: mmlu, seeds: s.csv}\n",
          "s.csv": "question,choice0,choice1,choice2,choice3,answer\nQ?,a,b,c,d,7\n"},
         ("answer must be 0-3, got '7'",)),
    Case("seeds-too-few-for-subsets", RUN,
         seeded(FIVE, extra="principles: {subsets: 1, subset_size: 9}\ncluster: {num_clusters: 1}\n"),
         ("principles.subset_size=9 is larger than the 5 seeds",)),
    # -- job files -------------------------------------------------------------------------------------------
    Case("config-missing", ["run", "missing.yaml"], {}, ("config file not found: missing.yaml",)),
    Case("config-folder", ["run", "d"], {"d/x": "x"}, ("d: not a regular file",)),
    Case("config-dev-zero", ["validate", "/dev/zero"], {}, ("/dev/zero: not a regular file",),
         prefix="/dev/zero:"),
    Case("config-malformed", RUN, cfg("name: x\ninstances: [unclosed\n"), ("job.yaml:3:1: malformed YAML",)),
    Case("config-top-level-list", RUN, cfg("- a\n- b\n"), ("expected a mapping at the top level, got list",)),
    Case("config-alias-bomb", RUN, cfg(BOMB), ("refused YAML: aliases expand to more than 20000",), sub=True),
    Case("config-recursive-alias", RUN, cfg("large: &x {options: [*x]}\n"), ("recursive YAML",)),
    Case("config-duplicate-key", RUN, cfg("name: a\nseed: 1\nname: b\n"),
         ("job.yaml:3:1: refused YAML: duplicate key 'name'",)),
    Case("config-deep", RUN, cfg("x: " + "[" * 40 + "]" * 40 + "\n"), ("nested deeper than 32 levels",)),
    Case("config-not-utf8", RUN, cfg(b"name: caf\xe9\n"), ("job.yaml: not UTF-8 text (byte 9)",)),
    Case("config-huge", RUN, cfg("# " + "x" * (1 << 20) + "\n"), ("larger than 1024 KiB",)),
    Case("config-option-date", RUN,
         cfg("large: {backend: vllm, options: {engine_kwargs: {since: 2024-01-01}}}\n"), ("1 error(s)",)),
    Case("config-option-int-key", RUN, cfg("large: {backend: hf, options: {1: x}}\n"), ("1 error(s)",)),
    Case("config-unknown-option", RUN, cfg("large: {backend: vllm, options: {max_modle_len: 9}}\n"),
         ("1 error(s)",)),
    Case("config-option-type", VALIDATE, cfg("large: {backend: hf, options: {batch_size: '8'}}\n"),
         ("job.yaml: 1 error(s)",), prefix="job.yaml:"),
    Case("config-secret-option", VALIDATE,
         cfg("large: {backend: openai, model: m, options: {api_key: sk-live-9}}\n"),
         ("job.yaml: 1 error(s)",), prefix="job.yaml:"),
    Case("config-seed-negative", RUN, cfg("seed: -1\n"), ("1 error(s)",)),
    Case("config-seed-huge", RUN, cfg(f"seed: {2**64}\n"), ("1 error(s)",)),
    Case("config-run-id-escapes", RUN, cfg("run_id: ../../elsewhere\n"), ("1 error(s)",)),
    Case("config-count-inf", RUN, cfg("instances: {count: .inf}\n"), ("1 error(s)",)),
    Case("config-temperature-nan", RUN, cfg("expand: {sampling: {temperature: .nan}}\n"), ("1 error(s)",)),
    Case("config-unknown-key", RUN, cfg("instancse: {count: 3}\n"), ("1 error(s)",)),
    Case("config-runs-dir-under-a-file", RUN, {"job.yaml": "runs_dir: notes.txt/runs\n", "notes.txt": "x"},
         ("cannot create the run directory", "notes.txt/runs/psi-psi: Not a directory")),
    Case("config-principle-file-unset", RUN, cfg("principles: {source: file}\n"), ("1 error(s)",)),
    Case("config-clusters-exceed-subsets", RUN, cfg("principles: {subsets: 2}\ncluster: {num_clusters: 3}\n"),
         ("1 error(s)",)),
    # -- command-line arguments ------------------------------------------------------------------------------
    Case("cli-run-id-escapes", [*RUN, "--run-id", "../x"], seeded(FIVE), ("1 error(s)",)),
    Case("cli-bad-method", [*RUN, "--method", "bogus"], cfg(job()), ("argument --method: invalid choice",),
         prefix="psi-ray run: error:"),
    Case("cli-unknown-backend", ["generate", "--backend", "nope", "hi"], {},
         ("unknown backend 'nope'", "openai")),
    Case("cli-unknown-model", ["generate", "--model", "no-such-model", "hi"], {},
         ("no-such-model", "smollm2-135m")),
    Case("cli-base-url-no-scheme", ["generate", "--backend", "openai", "--model", "m", "--base-url", "h:8/v1",
                                    "x"], {}, ("base_url 'h:8/v1' is not an http:// or https:// URL",)),
    Case("cli-unknown-stage", ["show-prompt", "nope"], {}, ("unknown stage 'nope'",)),
    Case("cli-not-a-run", ["principles", "."], {}, ("no finished summarize stage",)),
    Case("cli-submit-env-no-equals", ["submit", "job.yaml", "--env", "sk-oops", "--dry-run"], cfg(job()),
         ("--env #1 has no '='",)),
    Case("cli-submit-env-bad-key", ["submit", "job.yaml", "--env", "A-B=1", "--dry-run"], cfg(job()),
         ("--env #1 has 'A-B=...'",)),
    Case("cli-submit-bad-address", ["submit", "job.yaml", "--address", "ftp://head:8265"], cfg(job()),
         ("--address ftp://head:8265: expected the head's job server URL",)),
    # -- environment -----------------------------------------------------------------------------------------
    Case("env-key-to-remote-http", ["generate", "--backend", "openai", "--model", "m", "--base-url",
                                    f"{REMOTE}/v1", "hi"], {},
         ("refusing to send the API key from $OPENAI_API_KEY over plain http to 10.255.255.1",),
         env={"OPENAI_API_KEY": "sk-live-env"}, sub=True),
    Case("env-key-to-remote-http-in-a-job", RUN, {"job.yaml": OPENAI_JOB, "seeds.jsonl": FIVE},
         ("refusing to send the API key from $PSI_T_KEY",), env={"PSI_T_KEY": "sk-live-env"}),
    Case("env-key-to-remote-http-in-eval", ["eval", f"{REMOTE}/v1", "--api-key-env", "PSI_T_KEY"], {},
         ("refusing to send the API key from $PSI_T_KEY over plain http to 10.255.255.1", "--allow-insecure-key"),
         env={"PSI_T_KEY": "sk-live-env"}),
    Case("env-token-to-remote-http", ["submit", "job.yaml", "--address", REMOTE], cfg(job()),
         ("refusing to send the Ray auth token over plain http",), env={"RAY_AUTH_TOKEN": "tok-live-env"},
         sub=True),
    Case("env-token-path-missing", ["submit", "job.yaml"], cfg(job()),
         ("RAY_AUTH_TOKEN_PATH=/nonexistent/tok: cannot read the token file",),
         env={"RAY_AUTH_TOKEN_PATH": "/nonexistent/tok"}),
    Case("env-ray-address-bad", ["submit", "job.yaml"], cfg(job()),
         ("--address gopher://x: expected the head's job server URL",), env={"RAY_ADDRESS": "gopher://x"}),
    Case("env-openai-concurrency", RUN, seeded(FIVE, extra="large: {backend: openai, model: m, "
                                               "options: {concurrency: 0}}\n"),
         ("openai backend: concurrency must be >= 1",)),
]
# Field paths of the config rows whose needle is only the count: the path each must name on its own line.
PATHS = {"config-option-date": "large.options: engine_kwargs.since: a YAML date (2024-01-01)",
         "config-option-int-key": "large.options: key 1 is a number, not a string",
         "config-unknown-option": "large.options: max_modle_len: unknown option for the vllm backend",
         "config-seed-negative": "seed: Input should be greater than or equal to 0",
         "config-seed-huge": "seed: Input should be less than 4294967296",
         "config-run-id-escapes": "run_id: must be a plain folder name",
         "config-count-inf": "instances.count: Input should be a finite number",
         "config-temperature-nan": "expand.sampling.temperature: Input should be a finite number",
         "config-unknown-key": "instancse: Extra inputs are not permitted",
         "config-principle-file-unset": "(top level): principles.source is 'file' but principles.file is not "
                                        "set",
         "config-clusters-exceed-subsets": "(top level): cluster.num_clusters (3) exceeds principles.subsets "
                                           "(2)",
         "config-option-type": "large.options: batch_size: Input should be a valid integer",
         "config-secret-option": "large.options: api_key: unknown option for the openai backend",
         "cli-run-id-escapes": "run_id: must be a plain folder name (no '/', '\\', '..' or control "
                               "characters), got '../x'"}


def make_files(root: Path, files: dict) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is FIFO:
            os.mkfifo(path)
        elif content is SPARSE:
            with open(path, "wb") as fh:
                fh.truncate(600 << 20)  # 600 MiB on paper, nothing on disk
        elif content is BROKEN_LINK:
            path.symlink_to(root / "no-such-target")
        elif content is FOLDER:
            path.mkdir()
        else:
            path.write_bytes(content if isinstance(content, bytes) else content.encode())


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def clean_env(monkeypatch):
    """No key, token or cluster address from the caller's environment; whatever main() sets is undone."""
    saved = dict(os.environ)
    for var in ("OPENAI_API_KEY", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS",
                "RAY_API_SERVER_ADDRESS"):
        os.environ.pop(var, None)
    os.environ["HOME"] = "/nonexistent"  # no ~/.ray/auth_token
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_the_table_is_large_and_varied():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)
    kinds = {c.id.split("-")[0] for c in CASES}
    assert kinds == {"seeds", "config", "cli", "env"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path, monkeypatch, capsys, clean_env):
    make_files(tmp_path, case.files)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    if case.sub:
        env = {k: v for k, v in os.environ.items()} | case.env
        res = run_cli(*case.argv, env=env, cwd=tmp_path, timeout=120)
        code, out, err = res.returncode, res.stdout, res.stderr
    else:
        os.environ.update(case.env)
        try:
            code = cli.main(case.argv)
        except SystemExit as exc:  # argparse
            code = exc.code
        captured = capsys.readouterr()
        out, err = captured.out, captured.err
    assert code == case.code, out + err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(case.prefix)]
    assert len(lines) == 1, err
    for needle in case.needles:
        assert needle in lines[0], lines[0]
    if case.id in PATHS:  # the field path on an indented line of its own
        assert any(line.startswith(f"  {PATHS[case.id]}") for line in err.splitlines()), err
    for secret in (*case.env.values(), "sk-live-9", "sk-oops"):
        if secret.startswith(("sk-", "tok-")):
            assert secret not in out + err
    assert snapshot(tmp_path) == before, "a failed command left files behind"
    assert not (tmp_path / "runs").exists()
