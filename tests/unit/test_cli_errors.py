"""Bad input: one clear line on stderr, a non-zero exit, no traceback."""

import socket

from tests.conftest import run_cli


def assert_clean_error(res, *needles):
    assert res.returncode != 0, res.stdout
    assert "Traceback" not in res.stderr, res.stderr
    err_lines = [line for line in res.stderr.splitlines() if line.startswith("psi-ray: error:")]
    assert len(err_lines) == 1, res.stderr
    for n in needles:
        assert n in err_lines[0], err_lines[0]


def test_unknown_model_lists_choices():
    assert_clean_error(run_cli("generate", "--model", "no-such-model", "hi"), "smollm2-135m", "gemma3-270m")


def test_unknown_backend_lists_choices():
    assert_clean_error(run_cli("generate", "--backend", "nope", "hi"), "hf", "openai", "vllm")


def test_missing_config_file(tmp_path):
    assert_clean_error(run_cli("run", str(tmp_path / "missing.yaml")), "not found")


def test_missing_extra_names_the_install_command(tmp_path):
    # Shadow vLLM with a package that fails to import, as on a machine without the extra.
    fake = tmp_path / "vllm"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'vllm'\", name='vllm')\n")
    res = run_cli("generate", "--backend", "vllm", "--model", "smollm2-135m", "hi",
                  env={"PYTHONPATH": str(tmp_path)})
    assert_clean_error(res, "pip install")


def test_unreachable_endpoint():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once closed
    res = run_cli("generate", "--backend", "openai", "--model", "m", "--base-url", f"http://127.0.0.1:{port}/v1", "hi")
    assert_clean_error(res, "cannot reach")


def test_models_lists_builtins():
    res = run_cli("models")
    assert res.returncode == 0
    for name in ("smollm2-135m", "gemma3-270m", "minilm-l6"):
        assert name in res.stdout


def test_compare_bad_input_is_one_line_and_writes_nothing(tmp_path):
    runs = str(tmp_path / "runs")
    cases = [
        (["--arms", "psi,psy,student"], "unknown arm(s) psy"),
        (["--arms", "psi,teacher"], "must include 'student'"),
        (["--kept", "0"], "--kept must be at least 1"),
        (["--tasks", "gsm9k"], "unknown task(s) gsm9k"),
        (["--principles-file", str(tmp_path / "none.yaml")], "no such file"),
        (["--subsets", "1,five"], "--subsets takes positive whole numbers"),
        (["--arms", "student,psi-T0"], "unknown arm(s) psi-T0"),
    ]
    for extra, needle in cases:
        assert_clean_error(run_cli("compare", "jobs/gsm8k_cpu.yaml", "--runs-dir", runs, *extra), needle)
    assert not (tmp_path / "runs").exists()  # nothing half-written
