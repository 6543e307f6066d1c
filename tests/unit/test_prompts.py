"""Golden tests: the rendered prompts are pinned; `psi-ray show-prompt` prints them."""

import os
from pathlib import Path

import pytest

from psi_ray import prompts
from psi_ray.tasks import get_adapter
from tests.conftest import run_cli

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
ADAPTER = get_adapter("gsm8k")
CASES = {
    "expand": {"example": "Question: q1\nAnswer: a1\n#### 1"},
    "principles": {"examples": ["Question: q1\nAnswer: #### 1", "Question: q2\nAnswer: #### 2"]},
    "summarize": {"principles": ["Check the arithmetic.", "Verify each step."]},
    "instances": {"principles": ["Check the arithmetic."], "examples": ["Question: q1\nAnswer: #### 1"]},
}


@pytest.mark.parametrize("stage", prompts.STAGES)
def test_golden(stage):
    text = prompts.render(stage, task=ADAPTER, **CASES[stage])
    golden = GOLDEN / f"{stage}.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text + "\n")
    assert text + "\n" == golden.read_text()


def test_student_prompt_has_no_principles_section():
    text = prompts.render("instances", task=ADAPTER, principles=[], examples=["Question: q\nAnswer: #### 1"])
    assert "principles" not in text.lower()


def test_show_prompt_cli():
    res = run_cli("show-prompt", "principles")
    assert res.returncode == 0 and "Example 1:" in res.stdout and "#### " in res.stdout
    bad = run_cli("show-prompt", "nope")
    assert bad.returncode == 2 and "expand" in bad.stderr
