"""Content checks built from real failures of the built-in run: wrong arithmetic, answers that do not follow
from the solution, runaway expressions, labels leaking between adapters, decontamination, seed copies."""

import json
import time
from fractions import Fraction

import pytest

from psi_ray.evaluate.questions import eval_questions
from psi_ray.stages import filter as filters
from psi_ray.stages import verify
from psi_ray.tasks import arith, get_adapter
from tests.conftest import SHARED_DATA

Q = "Bella has to read some pages for school every month. How many pages does she read?"
GSM = get_adapter("gsm8k")


@pytest.mark.parametrize("solution,reason", [
    # kept rows of a built-in run, each with a visibly wrong inline equation
    ("She read 200 - 100 = 200 pages.\n#### 200", "wrong_equation"),
    ("They baked 16 + 16 = 22 cookies.\n#### 22", "wrong_equation"),
    ("The farm has 80 * 24 = 2020 eggs.\n#### 2020", "wrong_equation"),
    ("Bella bought 3*2=4 pages a month\n#### 4", "wrong_equation"),
    ("He pays 5 x 3 = $16 in all.\n#### 16", "wrong_equation"),
    ("That is 4 hours * 3 = 14 hours.\n#### 14", "wrong_equation"),
    ("<<3*4=13>>13 pages\n#### 13", "wrong_equation"),
    # the final line disagrees with the last computed result
    ("She has 12+1=<<12+1=13>>13\n#### 99", "answer_mismatch"),
    ("So 6 * 7 = 42 pages.\n#### 24", "answer_mismatch"),
    # malformed or runaway calculator steps
    ("<<2//0=1>>\n#### 1", "bad_calculation"),
    ("<<" + "(" * 1000 + "1" + ")" * 1000 + "=1>>\n#### 1", "bad_calculation"),
    ("<<" + "9" * 5000 + "+1=1>>\n#### 1", "bad_calculation"),
    ("<<(((((((((((((((((((((((((1)))))))))))))))))))))))))=1>>\n#### 1", "bad_calculation"),
    ("Question: How many? Answer: 2 + 2 = 4\n#### 4", "label_leak"),
])
def test_gsm8k_rejects_real_failures(solution, reason):
    assert GSM.check(Q, solution) == reason
    assert reason in GSM.reject_reasons  # so the filter manifest lists it, with zero when nothing hit it


@pytest.mark.parametrize("solution", [
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nAltogether 48+24 = <<48+24=72>>72 clips.\n#### 72",
    "It costs $3 x 2 = $6.\n#### 6",
    "That is 1,000 + 200 = 1,200 apples.\n#### 1,200",
    "20% * 50 = 10 students.\n#### 10",
    "2 hours * 3 = 6 hours\n#### 6",
    "Each gets 10/3 = 3.33 dollars.\n#### 3.33",
    "One quarter: 1/4 = 25% of them.\n#### 25",
    "The store is .50-.25 = $<<0.50-.25=0.25>>0.25 more per can.\n#### 25",
    "23 total meters – 13 calculated meters = 10 meters.\n#### 10",
    "Let x be the pages. Then 2x + 3 + 4 = 9, so x = 1.\n#### 1",
    "8 people eat 1 1/2 rolls each, 8 x 1 1/2 = 12 rolls.\n#### 12",
    "5 * 3 = 15 - 2 = 13 left.\n#### 13",
])
def test_gsm8k_accepts_right_solutions(solution):
    assert GSM.check(Q, solution) is None


@pytest.mark.parametrize("runaway", [
    "<<" + "2**" * 60 + "2=1>>\n#### 1",  # a generated power chain
    "<<" + "(" * 1000 + "1" + ")" * 1000 + "=1>>\n#### 1",  # 1,000-deep nesting (no RecursionError)
])
def test_runaway_arithmetic_is_rejected_within_a_second(runaway):
    t0 = time.perf_counter()
    assert GSM.check(Q, runaway) == "bad_calculation"
    inline = "It is " + "(" * 1000 + "2 + 2" + ")" * 1000 + " = 5\n#### 5"  # too long to read as an equation
    assert GSM.check(Q, inline) is None  # left unchecked, never an exception
    with pytest.raises(arith.ArithmeticLimitError):
        arith.evaluate("9**9**9**9")
    assert time.perf_counter() - t0 < 1.0


@pytest.mark.parametrize(("expr", "value"), [
    ("7/100", Fraction(7, 100)), ("2**-2", Fraction(1, 4)), ("7//2", Fraction(3)), ("5%", Fraction(1, 20)),
    ("1,200 * 3 - 0.5", Fraction(7199, 2)), ("-(3 - 10) / 4", Fraction(7, 4)), ("10/4*2", Fraction(5)),
])
def test_arithmetic_is_exact_whichever_number_types_it_runs_on(expr, value):
    """Whole numbers are computed as ints and the rest as Fractions: a division or a negative power of ints
    must never become a float (7/100 as a float is not 7/100), and callers always get a Fraction back."""
    for _ in range(2):  # computed, then from the cache
        got = arith.evaluate(expr)
        assert type(got) is Fraction and got == value
    assert type(arith.parse_number("12")) is Fraction and arith.parse_number("-3") == -3


def test_real_gsm8k_train_solutions_pass():
    """The checks must not reject the human-written data they are modelled on (a few real errors aside)."""
    rows = [json.loads(line) for line in (SHARED_DATA / "gsm8k" / "train.jsonl").open()][:1000]
    rejected = [r for r in rows if GSM.check(r["question"], r["answer"])]
    assert len(rejected) <= 25, [r["answer"][-80:] for r in rejected[:5]]


def test_mmlu_checks():
    a = get_adapter("mmlu")
    q = "Which planet is largest?\nA. Mars\nB. Jupiter\nC. Venus\nD. Earth"
    assert a.check(q, "Answer: B") is None
    assert a.check(q.replace("Venus", "Mars"), "Answer: B") == "duplicate_choices"
    assert a.check(q.replace("\nD. Earth", ""), "Answer: B") == "not_four_choices"
    assert a.check(q, "I think B") == "no_answer_letter"
    assert a.answer_of("reasoning...\nAnswer: C") == "C"


def test_generic_rejects_leaked_labels_echo_and_loops():
    a = get_adapter("generic")
    i = "How many grams are there in 2 kilograms?"
    assert a.check(i, "There are 2,000 grams.") is None
    # a real generic row: GSM8K labels copied from the prompt into the data
    assert a.check(i + "\nQuestion: How many grams are there in 74 meters?", "74") == "label_leak"
    assert a.check(i, 'It is 2,000 grams. Please replace "Question:" with yours.') == "label_leak"
    assert a.check(i, i) == "echo"
    assert a.check(i, "grams and more grams " * 6) == "repetition"
    q, r = a.parse("Instruction: Convert 3 m to cm.\nResponse: 300 cm.\nInstruction: next one")
    assert (q, r) == ("Convert 3 m to cm.", "300 cm.")


def test_planted_paraphrase_of_a_gsm8k_test_question_is_contaminated(tmp_path):
    test_q = eval_questions("gsm8k")[0]  # Janet's ducks
    paraphrase = test_q.replace("Janet", "Maria").replace("16", "18").replace("three", "two")
    decontam = filters.Decontaminator(eval_questions("gsm8k"), threshold=0.5)
    assert decontam.contaminated(paraphrase)
    assert decontam.contaminated("Solve this: " + test_q)
    fresh = "A baker sells 40 loaves on Monday and half as many on Tuesday. How many loaves in both days?"
    assert not decontam.contaminated(fresh)


def test_filter_counts_contaminated_and_seed_copies_with_a_sentence_appended():
    seeds = [{"instruction": json.loads(line)["question"]} for line in
             (SHARED_DATA / "gsm8k" / "train.jsonl").open().readlines()[:32]]
    dedup = filters.make_deduper(seeds, 0.8, 64, capacity=100)
    decontam = filters.Decontaminator(eval_questions("gsm8k"), threshold=0.5)
    base = {"principle_ids": [], "example_ids": [], "generator": "g", "error": None,
            "response": "2 + 3 = <<2+3=5>>5\n#### 5"}
    fresh = [f"A shop sells {n} pens on day one and {n + 3} pens on day two. How many pens were sold in the "
             f"{n} days of the {w} sale?" for n, w in zip(range(3, 23), ["spring", "summer", "autumn", "winter"] * 5, strict=False)]
    rows = [{"id": f"f{i}", "instruction": q, **base} for i, q in enumerate(fresh)]
    rows += [{"id": "seed+", "instruction": seeds[3]["instruction"] + " Also, what is her favourite color?", **base},
             {"id": "test", "instruction": eval_questions("gsm8k")[5], **base}]
    out = filters.apply_filters(rows, GSM, dedup, decontam)
    reasons = [r["reject_reason"] for r in out]
    assert reasons[:20] == [None] * 20  # distinct valid rows all survive
    assert reasons[20:] == ["copies_seed", "contaminated"]


def test_verify_agreement():
    assert verify.agreement("5", ["5", "5", "4", None], 0.5) == (True, 0.5)
    assert verify.agreement("5", ["4", "4", "5", None], 0.5) == (False, 0.25)
    assert verify.agreement("5", ["5", "4", None, None], 0.5) == (False, 0.25)
    assert verify.agreement("5", [], 0.5) == (False, 0.0)
    rows = [{"id": "a", "instruction": Q, "response": "2 + 3 = <<2+3=5>>5\n#### 5", "error": None},
            {"id": "b", "instruction": Q, "response": "no answer", "error": None}]
    plan = verify.build_prompts(rows, GSM, 3)
    assert [p["id"] for p in plan] == ["a#0", "a#1", "a#2"] and Q in plan[0]["prompt"][0]["content"]
    got = [{"id": "a#0", "raw_output": "... #### 5", "error": None},
           {"id": "a#1", "raw_output": "2 + 3 makes 5.0 pages in all.", "error": None},
           {"id": "a#2", "raw_output": "#### 7", "error": None}]
    out = verify.parse_outputs(rows, got, GSM, 0.5)
    assert out[0]["verified"] is True and out[0]["agreement"] == pytest.approx(2 / 3)
    assert out[1]["verified"] is None
