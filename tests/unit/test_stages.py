"""Pure stage functions: subsets, principle parsing, clustering, filtering, dataset records."""

import json

import numpy as np
import pytest

from psi_ray.config import JobConfig
from psi_ray.rundir import typed_table
from psi_ray.stages import cluster, dataset, expand, instances, principles, summarize
from psi_ray.stages import filter as filters
from psi_ray.stages import seeds as seed_stage
from psi_ray.tasks import get_adapter


@pytest.fixture(scope="module")
def seed_rows():
    return seed_stage.load(JobConfig())


def test_subsets_same_seed_same_result():
    ids = [f"e{i}" for i in range(20)]
    a = principles.sample_subsets(ids, 10, 4, seed=7)
    assert a == principles.sample_subsets(list(reversed(ids)), 10, 4, seed=7)
    assert a != principles.sample_subsets(ids, 10, 4, seed=8)
    assert len({tuple(s) for s in a}) == 10 and all(len(s) == 4 for s in a)


def test_split_principles():
    text = "Intro line\n1. Read the problem twice before solving.\n2) Write every step down clearly.\n- short\n" \
           "* Check units and the final number.\n1. Read the problem twice before solving."
    assert principles.split_principles("1." + " Keep the first item, it is long enough.\n2. In the first example, x.") \
        == ["Keep the first item, it is long enough.", "In the first example, x."]  # hygiene rejects, not drops
    assert principles.split_principles(text) == [
        "Read the problem twice before solving.", "Write every step down clearly.", "short",
        "Check units and the final number.", "Read the problem twice before solving."]


def principles_prompt():
    return [{"role": "user", "content": "..."}, *principles.STARTED]


def test_principle_rows_keep_unparseable_outputs():
    plan = [{"id": "subset-000", "subset_id": 0, "example_ids": ["a"], "prompt": principles_prompt()}]
    rows = principles.parse_outputs(plan, [{"id": "subset-000", "raw_output": "no list here", "error": None}])
    assert len(rows) == 1 and rows[0]["text"] is None and rows[0]["error"].startswith("parse")


def test_kmeans_is_seeded():
    rng = np.random.default_rng(0)
    vecs = np.concatenate([rng.normal(c, 0.1, size=(10, 8)) for c in (0, 3, 6)])
    a = cluster.kmeans(vecs, 3, seed=1, algorithm="sklearn")
    assert (a == cluster.kmeans(vecs, 3, seed=1, algorithm="sklearn")).all()
    assert len(set(a[:10])) == 1 and len(set(a)) == 3


def test_cluster_principles_with_builtin_embedder_is_reproducible():
    texts = ["Add the numbers step by step.", "Sum each quantity carefully.", "Check the final answer twice.",
             "Verify the result at the end.", "Read the question slowly.", "Understand what is asked first."]
    rows = [{"principle_id": f"L{i}", "text": t} for i, t in enumerate(texts)]
    a = cluster.cluster_principles(rows, "minilm-l6", 3, seed=0, algorithm="sklearn")
    b = cluster.cluster_principles(rows, "minilm-l6", 3, seed=0, algorithm="sklearn")
    assert [r["cluster_id"] for r in a] == [r["cluster_id"] for r in b]
    assert a[0]["cluster_id"] == a[1]["cluster_id"]


def test_summary_cleaning_and_fallback():
    assert summarize.clean_summary("Principle: Always check the arithmetic. Then more.\n\nMore") == \
        "Always check the arithmetic."
    assert summarize.clean_summary("The principles are:\n1. Read twice.") == "Read twice."
    plan = [{"id": "H00", "cluster_id": 0, "member_ids": ["L0"], "members": ["Member principle text."]}]
    rows = summarize.parse_outputs(plan, [{"id": "H00", "raw_output": "", "error": None}])
    assert rows[0]["text"] == "Member principle text." and rows[0]["error"]


def test_instance_plan_is_deterministic_and_sharded(seed_rows):
    a = get_adapter("gsm8k")
    high = [{"principle_id": "H00", "text": "p0"}, {"principle_id": "H01", "text": "p1"}]
    p1 = instances.plan(10, 4, 0, high, seed_rows, 1, 2, a)
    p2 = instances.plan(10, 4, 0, high, seed_rows, 1, 2, a)
    assert [(r["id"], r["principle_ids"], r["example_ids"]) for r in p1] == \
        [(r["id"], r["principle_ids"], r["example_ids"]) for r in p2]
    assert [r["shard"] for r in p1] == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    assert p1[0]["prompt"][-1] == {"role": "assistant", "content": "Question:"}


def test_filter_reasons(seed_rows):
    a = get_adapter("gsm8k")
    base = {"principle_ids": [], "example_ids": [], "generator": "g"}
    q = "A farmer has 12 cows and buys 5 more at the market on Monday. How many cows does the farmer have now?"
    rows = [
        {"id": "i0", "instruction": q, "response": "12 + 5 = <<12+5=17>>17\n#### 17", "error": None, **base},
        {"id": "i1", "instruction": q.replace("now?", "now in total?"), "response": "<<12+5=17>>\n#### 17",
         "error": None, **base},
        {"id": "i2", "instruction": q, "response": "#### 17", "error": None, **base},
        {"id": "i3", "instruction": "Another question about apples and pears?", "response": "<<1+1=3>>\n#### 3",
         "error": None, **base},
        {"id": "i4", "instruction": seed_rows[0]["instruction"], "response": seed_rows[0]["response"],
         "error": None, **base},
        {"id": "i5", "instruction": "", "response": "", "error": "parse: no 'Question:'", **base},
    ]
    out = filters.apply_filters(rows, a, filters.make_deduper(seed_rows, 0.7, 64, capacity=100))
    assert [r["reject_reason"] for r in out] == [
        None, "near_duplicate", "exact_duplicate", "wrong_equation", "copies_seed", "parse"]
    recs = dataset.to_table(typed_table(out), "gsm8k", "psi", {"temperature": 0.7}).to_pylist()
    assert len(recs) == 1 and recs[0]["messages"] == [{"role": "user", "content": out[0]["instruction"]},
                                                      {"role": "assistant", "content": out[0]["response"]}]
    assert recs[0]["id"] == out[0]["id"] and recs[0]["valid"] and json.loads(recs[0]["sampling"]) == {"temperature": 0.7}


def test_d_initial_puts_seeds_first(seed_rows):
    pool = expand.d_initial(seed_rows[:2], [{"example_id": "x", "valid": False}])
    assert [r["example_id"] for r in pool] == ["seed-00000", "seed-00001", "x"]


@pytest.mark.parametrize("serve_adapter,has_adapter,one_engine", [
    (True, True, True), (False, True, False), (True, False, False)])
def test_the_eval_stage_scores_a_lora_run_from_one_engine_only_when_asked(tmp_path, monkeypatch, serve_adapter,
                                                                         has_adapter, one_engine):
    """``eval.serve_adapter`` with an adapter kept in ``model/adapter``: base and adapter from one engine
    (``evaluate_with_adapter``); otherwise, or for a fully trained model, each model scored by ``evaluate``."""
    from types import SimpleNamespace

    import psi_ray.evaluate
    from psi_ray.pipeline import closing
    from psi_ray.rundir import STAGE_SCORES

    calls = []
    report = {"tasks": {"gsm8k": {"exact_match,strict-match": 0.5}}}

    def one(target, tasks, out, **kw):
        calls.append(("evaluate", target))
        return {**report, "model": target}

    def shared(base, adapter, tasks, outs, records, **kw):
        calls.append(("evaluate_with_adapter", base, adapter, sorted(outs)))
        return {label: {**report, "model": records[label]} for label in outs}

    monkeypatch.setattr(psi_ray.evaluate, "evaluate", one)
    monkeypatch.setattr(psi_ray.evaluate, "evaluate_with_adapter", shared)
    if has_adapter:
        (tmp_path / "model" / "adapter").mkdir(parents=True)
    cfg = JobConfig(train={"model": "smollm2-135m"}, eval={"compare_base": False, "serve_adapter": serve_adapter})
    result = closing.eval_stage(SimpleNamespace(cfg=cfg, dir=tmp_path), SimpleNamespace(path=tmp_path),
                                trained=object())
    model = str(tmp_path / "model")
    assert calls == ([("evaluate_with_adapter", "smollm2-135m", str(tmp_path / "model" / "adapter"), ["finetuned"])]
                     if one_engine else [("evaluate", model)])
    assert json.loads((tmp_path / STAGE_SCORES).read_text())["models"] == {"finetuned": model}
    assert result.rows[0]["model"] == "finetuned"
