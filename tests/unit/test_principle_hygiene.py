"""Principle hygiene: the real failures of a run are rejected for the right reason, good principles kept,
rejects kept as rows and counted, the summarize fallback takes the most central valid member."""

import json

import pytest

from psi_ray import prompts
from psi_ray.errors import PsiRayError
from psi_ray.stages import cluster, hygiene, principles, summarize
from psi_ray.stages.hygiene import mark_near_duplicates, reject_reason
from psi_ray.tasks import get_adapter

GOOD = ["Write every calculation as an equation and check it.",
        "Read the question twice and list the quantities it gives."]
REPETITIVE = "Study how new problems solve a classic classic classic classic classic classic"
ECHO = ("Write 3 to 5 general principles that someone should follow to solve new problems of this kind "
        "correctly.")
STUBS = ["The ninth step: Use the example step by step", "The first step: Read what the question asks.",
         "Step 3: Divide the total by the number of groups.", "Principle 2: Keep the units in every line.",
         "First step, write down the known quantities."]


@pytest.fixture(scope="module")
def adapter():
    return get_adapter("gsm8k")


@pytest.fixture(scope="module")
def principles_prompt(adapter):
    """The principles prompt's own words, as stage 2's plan carries them."""
    return prompts.render("principles", task=adapter, examples=[])


def test_real_failures_rejected_for_the_right_reason(principles_prompt):
    assert reject_reason(REPETITIVE, principles_prompt) == "repetition"
    assert reject_reason(ECHO, principles_prompt) == "echoes_prompt"
    for stub in STUBS:
        assert reject_reason(stub, principles_prompt) == "numbered_stub", stub


def test_good_principles_accepted(principles_prompt):
    for text in GOOD:
        assert reject_reason(text, principles_prompt) is None
        assert reject_reason(text) is None


def test_each_rule_fires_on_its_own_shape():
    assert reject_reason("Check units.") == "too_short"
    assert reject_reason("Check " + "every number " * 30) == "too_long"
    assert reject_reason("Add the parts, then add the parts again to be sure.") == "repetition"  # 3-gram x2
    assert reject_reason("go go stop go wait wait stop stop") == "repetition"  # few distinct words only
    assert reject_reason("Understanding the problem statement:") == "numbered_stub"  # only a label
    # too short for a shared 6-word run, but every word pair of it is the prompt's: still an echo
    assert hygiene.echoes("Then follow to solve new problems.", ECHO)
    assert not hygiene.echoes(GOOD[0], ECHO)
    assert reject_reason(ECHO) is None  # no prompt, no echo check (a user's file)


def test_near_duplicates_point_to_the_kept_earlier_text():
    texts = ["Read the problem twice before solving.", "Check the units of every quantity.",
             "Read the problem twice before solving it.", "READ the problem twice, before solving!",
             "Estimate the answer before computing it."]
    assert mark_near_duplicates(texts) == [None, None, 0, 0, None]
    assert mark_near_duplicates(texts, threshold=1.01) == [None] * 5


def plan_row(subset_id: int, template_text: str) -> dict:
    return {"id": f"subset-{subset_id:03d}", "subset_id": subset_id, "example_ids": ["a"],
            "template_text": template_text,
            "prompt": [{"role": "user", "content": "..."}, *principles.STARTED]}


def test_parse_outputs_keeps_every_item_with_a_reason(principles_prompt):
    plan = [plan_row(0, principles_prompt), plan_row(1, principles_prompt), plan_row(2, principles_prompt)]
    outputs = [
        f" {GOOD[0]}\n2. {REPETITIVE}\n3. {ECHO}\n4. The ninth step: Use the example step by step\n"
        "5. Short.\n"
        "6. In the first example, add the apples to the pears.",
        f" {GOOD[1]}\n2. Write every calculation as an equation and check it!",  # a copy from another subset
        "I cannot write a list.",
    ]
    got = [{"id": p["id"], "raw_output": o, "error": None} for p, o in zip(plan, outputs, strict=True)]
    rows = principles.parse_outputs(plan, got)
    reasons = [r["reject_reason"] for r in rows]
    assert reasons == [None, "repetition", "echoes_prompt", "numbered_stub", "too_short", "mentions_example",
                       None, "near_duplicate", "parse"]
    assert [r["valid"] for r in rows] == [r is None for r in reasons]
    assert rows[-1]["text"] is None and rows[-1]["error"].startswith("parse")
    assert all(r["error"] is None for r in rows[:-1])
    assert principles.reject_counts(rows) == {"echoes_prompt": 1, "mentions_example": 1, "near_duplicate": 1,
                                             "numbered_stub": 1, "parse": 1, "repetition": 1, "too_short": 1}
    engine = principles.parse_outputs(plan[:1], [{"id": "subset-000", "raw_output": "", "error": "boom"}])
    assert engine[0]["reject_reason"] == "engine" and not engine[0]["valid"]


def test_build_prompts_carries_the_template_without_examples(adapter, principles_prompt):
    examples = [{"example_id": f"e{i}", "instruction": f"Q{i}: how many apples?",
                 "response": f"{i}\n#### {i}", "valid": True} for i in range(6)]
    plan = principles.build_prompts(examples, adapter, 2, 3, seed=0)
    assert plan[0]["template_text"] == principles_prompt
    assert "apples" in plan[0]["prompt"][0]["content"] and "apples" not in plan[0]["template_text"]


@pytest.mark.parametrize("name,content", [
    ("p.yaml", f"- {GOOD[0]}\n- {GOOD[1]}\n"),
    ("p.yml", f"principles:\n  - {GOOD[0]}\n  - text: {GOOD[1]}\n"),
    ("p.jsonl", "\n".join(json.dumps({"text": t}) for t in GOOD) + "\n\n"),
    ("p.json", json.dumps(GOOD)),
])
def test_principle_file_loads(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert principles.load_principle_file(path) == GOOD


@pytest.mark.parametrize("name,content,message", [
    ("missing.yaml", None, "does not exist"),
    ("p.yaml", "principles: []\n", "holds no principles"),
    ("p.yaml", "rules:\n  - a\n", "expected a list"),
    ("p.yaml", "- [unclosed\n", "not valid YAML"),
    ("p.json", "[1, 2]", "item 1 is not a string"),
    ("p.jsonl", '{"text": "ok text here"}\n{broken\n', "line 2"),
    ("p.jsonl", '{"body": "no text key"}\n', "item 1"),
    ("p.txt", "a principle", "unknown format"),
])
def test_bad_principle_file_raises_one_line(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(PsiRayError, match=message) as err:
        principles.load_principle_file(path)
    assert "\n" not in str(err.value)


def test_rows_from_texts_have_the_stage_columns_and_count_rejects(principles_prompt):
    rows = principles.rows_from_texts([*GOOD, REPETITIVE, GOOD[0]])
    parsed = principles.parse_outputs([plan_row(0, principles_prompt)],
                                      [{"id": "subset-000", "raw_output": f" {GOOD[0]}", "error": None}])
    assert set(rows[0]) == set(parsed[0])
    assert [r["reject_reason"] for r in rows] == [None, None, "repetition", "near_duplicate"]
    assert rows[0]["subset_id"] == -1 and rows[0]["example_ids"] == [] and rows[0]["raw_output"] is None
    assert principles.reject_counts(rows) == {"near_duplicate": 1, "repetition": 1}


def summarize_plan(members, centrality, adapter=None):
    own = prompts.render("summarize", task=adapter, principles=[]) if adapter else ""
    return {"id": "H00", "cluster_id": 0, "member_ids": [f"L000-{i:02d}" for i in range(len(members))],
            "members": members, "centrality": centrality, "template_text": own}


def test_summarize_falls_back_to_the_most_central_valid_member(adapter):
    members = [GOOD[0], REPETITIVE, GOOD[1], "Check every result against the question."]
    plan = [summarize_plan(members, [0.70, 0.95, 0.90, 0.90], adapter)]  # the loop is the most central
    rows = summarize.parse_outputs(plan, [{"id": "H00", "raw_output": f" {REPETITIVE}", "error": None}])
    assert rows[0]["text"] == GOOD[1]  # highest valid centrality; the tie with member 3 goes to the first
    assert rows[0]["reject_reason"] == "repetition"
    assert rows[0]["error"] == "summary rejected (repetition); kept the most central member L000-02"
    assert set(rows[0]) == {"principle_id", "cluster_id", "text", "member_ids", "error", "raw_output",
                            "reject_reason"}


def test_summarize_uses_a_good_summary_and_rejects_an_echo(adapter):
    plan = [summarize_plan(GOOD, [0.9, 0.8], adapter)]
    good = summarize.parse_outputs(plan, [{"id": "H00", "raw_output": " Check every step of the arithmetic.",
                                           "error": None}])
    assert good[0]["text"] == "Check every step of the arithmetic."
    assert good[0]["reject_reason"] is None and good[0]["error"] is None
    echo = summarize.parse_outputs(plan, [{"id": "H00", "error": None, "raw_output":
                                           " Merge them into one clear, general principle of one sentence."}])
    assert echo[0]["reject_reason"] == "echoes_prompt" and echo[0]["text"] == GOOD[0]
    same_as_member = summarize.parse_outputs(plan, [{"id": "H00", "raw_output": f" {GOOD[1]}",
                                                     "error": None}])
    assert same_as_member[0]["reject_reason"] is None  # repeating a member is a summary, not an echo


def test_summarize_without_centrality_or_valid_member():
    plan = [summarize_plan(["Step 1: add.", REPETITIVE, *GOOD], None)]
    rows = summarize.parse_outputs(plan, [{"id": "H00", "raw_output": "", "error": None}])
    assert rows[0]["text"] == GOOD[0] and rows[0]["reject_reason"] == "too_short"
    none_valid = summarize.parse_outputs([summarize_plan([REPETITIVE], [1.0])],
                                         [{"id": "H00", "raw_output": "", "error": "engine died"}])
    assert none_valid[0]["text"] is None and none_valid[0]["reject_reason"] == "engine"
    assert none_valid[0]["error"].startswith("engine: engine died; no member passed hygiene")


def test_cluster_skips_invalid_rows_and_scores_centrality():
    texts = ["Add the numbers step by step.", "Sum each quantity carefully.", "Check the final answer twice.",
             "Verify the result at the end.", "Read the question slowly.", "Understand what is asked first."]
    rows = [{"principle_id": f"L{i}", "text": t, "valid": True, "reject_reason": None}
            for i, t in enumerate(texts)]
    rows += [{"principle_id": "Lbad", "text": REPETITIVE, "valid": False, "reject_reason": "repetition"},
             {"principle_id": "Lnone", "text": None, "valid": False, "reject_reason": "parse"},
             {"principle_id": "Lold", "text": "Write the answer as a whole number."}]  # no `valid`: old data
    out = cluster.cluster_principles(rows, "minilm-l6", 3, seed=0, algorithm="sklearn")
    assert [r["principle_id"] for r in out] == [f"L{i}" for i in range(6)] + ["Lold"]
    assert all(-1.0 <= r["centrality"] <= 1.0 + 1e-6 for r in out)
    for c in {r["cluster_id"] for r in out}:
        members = [r for r in out if r["cluster_id"] == c]
        if len(members) == 1:
            assert members[0]["centrality"] == pytest.approx(1.0)
    with pytest.raises(PsiRayError, match="only 7 valid"):
        cluster.cluster_principles(rows, "minilm-l6", 8, seed=0, algorithm="sklearn")


def test_centrality_is_cosine_to_the_cluster_mean():
    import numpy as np

    vecs = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    got = cluster.centrality(vecs, np.array([0, 0, 1]))
    assert got == pytest.approx([np.sqrt(0.5), np.sqrt(0.5), 1.0])
