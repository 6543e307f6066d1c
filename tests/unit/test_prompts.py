"""Golden tests: every stage's prompt for every adapter is pinned; `psi-ray show-prompt` prints them.

``UPDATE_GOLDEN=1 pytest tests/unit/test_prompts.py`` rewrites the golden files and skips (it never compares
a file with the text it just wrote).
"""

import os
from pathlib import Path

import pytest

from psi_ray import prompts
from psi_ray.tasks import ADAPTERS, get_adapter
from tests.conftest import run_cli

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def cases(adapter) -> dict:
    ex1, ex2 = adapter.format_example("q1", "a1"), adapter.format_example("q2", "a2")
    return {
        "expand": {"example": ex1},
        "principles": {"examples": [ex1, ex2]},
        "summarize": {"principles": ["Check the arithmetic.", "Verify each step."]},
        "instances": {"principles": ["Check the arithmetic."], "examples": [ex1]},
        "verify": {"question": "q1"},
    }


@pytest.mark.parametrize("task", sorted(ADAPTERS))
@pytest.mark.parametrize("stage", prompts.STAGES)
def test_golden(stage, task):
    adapter = get_adapter(task)
    text = prompts.render(stage, task=adapter, **cases(adapter)[stage])
    golden = GOLDEN / task / f"{stage}.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text + "\n")
        pytest.skip(f"wrote {golden}")
    assert text + "\n" == golden.read_text()


@pytest.mark.parametrize("task", sorted(ADAPTERS))
def test_prompts_use_only_the_adapters_labels(task):
    adapter = get_adapter(task)
    other = {"gsm8k": "Instruction:", "mmlu": "Instruction:", "generic": "Question:"}[task]
    for stage in ("expand", "instances"):
        text = prompts.render(stage, task=adapter, **cases(adapter)[stage])
        assert adapter.labels[0] in text and other not in text


def test_student_prompt_has_no_principles_section():
    text = prompts.render("instances", task=get_adapter("gsm8k"), principles=[], examples=["Question: q\nAnswer: #### 1"])
    assert "principles" not in text.lower()


@pytest.mark.parametrize("task,label", [("gsm8k", "Question:"), ("mmlu", "Question:"), ("generic", "Instruction:")])
def test_show_prompt_cli_for_each_adapter(task, label):
    res = run_cli("show-prompt", "instances", "--task", task)
    assert res.returncode == 0, res.stderr
    assert label in res.stdout and "(high-level principle 1)" in res.stdout
    if task == "generic":
        assert "Question:" not in res.stdout and "Answer:" not in res.stdout


def test_show_prompt_cli_errors():
    bad = run_cli("show-prompt", "nope")
    assert bad.returncode == 2 and "expand" in bad.stderr
