"""Task adapters: seeds, parsing and checks."""

import pytest

from psi_ray.errors import PsiRayError
from psi_ray.tasks import get_adapter
from psi_ray.tasks.gsm8k import evaluate, final_answer
from tests.conftest import SHARED_DATA

GOOD = "He has 3 * 4 = <<3*4=12>>12 apples.\nThen 12 + 1 = <<12+1=13>>13.\n#### 13"


def test_gsm8k_check():
    a = get_adapter("gsm8k")
    q = "Tom has 3 bags with 4 apples each and finds one more. How many apples?"
    assert a.check(q, GOOD) is None
    assert a.check(q, GOOD.replace("=12>>", "=11>>")) == "wrong_equation"
    assert a.check(q, GOOD.replace("#### 13", "")) == "no_final_answer"
    assert a.check(q, "<<2//0=1>>\n#### 1") == "bad_calculation"
    assert final_answer("x\n#### 1,234") == "1234"
    assert evaluate("+30+46") == 76 and evaluate("1/3*3") == 1


def test_gsm8k_parse_keeps_first_pair_and_cuts_after_final():
    a = get_adapter("gsm8k")
    q, r = a.parse("Question: How many?\nAnswer: 2 + 2 = <<2+2=4>>4\n#### 4\nExtra talk.\nQuestion: next")
    assert q == "How many?" and r.endswith("#### 4") and "Extra" not in r


def test_mmlu_seeds_from_shared_data():
    a = get_adapter("mmlu")
    rows = a.load_seeds(SHARED_DATA / "mmlu" / "dev")
    assert len(rows) == 285
    assert a.check(rows[0]["instruction"], rows[0]["response"]) is None
    q, r = a.parse(" What is 1+1?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer: B")
    assert r == "Answer: B" and a.check(q, r) is None


def test_generic_roundtrip(tmp_path):
    a = get_adapter("generic")
    f = tmp_path / "s.jsonl"
    f.write_text('{"instruction": "Say hello politely.", "response": "Hello!"}\n')
    rows = a.load_seeds(f)
    assert rows[0]["seed_id"] == "seed-00000"
    assert a.parse("Instruction: Do X now.\nResponse: Done.") == ("Do X now.", "Done.")


def test_unknown_adapter():
    with pytest.raises(PsiRayError, match="gsm8k"):
        get_adapter("nope")
