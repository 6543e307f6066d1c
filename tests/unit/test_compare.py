"""``psi-ray compare`` without a model: budget equalization (waves that stop at the kept target or the attempts
cap, rows past the target marked), the arms' configs and prompts (placebo, no-cluster, handwritten), stage
reuse between arms, and the reading of the intervals. The instance writer in the wave tests is a test double
(a generator of GSM8K-format answers) patched over the pipeline's ``stream``; everything else is real."""

from __future__ import annotations

import pytest

from psi_ray.config import JobConfig
from psi_ray.stages import guidance, instances


def test_next_wave_whole_shards_until_target_or_cap():
    assert instances.next_wave(0, 0, 64, 512, 64) == 320  # 64 / 0.25 × 1.1 = 282 → 5 shards
    assert instances.next_wave(320, 60, 64, 512, 64) == 64  # 4 more at ~19%: one shard
    assert instances.next_wave(320, 0, 64, 512, 64) == 192  # nothing kept yet: the rest of the cap
    assert instances.next_wave(320, 64, 64, 512, 64) == 0  # target reached
    assert instances.next_wave(512, 10, 64, 512, 64) == 0  # cap reached
    assert instances.next_wave(500, 10, 64, 512, 64) == 12  # never past the cap


# ---- waves through the real instances, filter and dataset stages, with a test-double writer -----------------

def answer(k: int, good: bool) -> str:
    """A GSM8K question and worked answer unique to ``k`` (as the model would continue the prompt);
    ``good=False`` miscomputes a step, which the filter rejects."""
    a, b, c = 2 + k % 997, 2 + k % 89, 2 + k % 7
    wrong = 0 if good else 1
    return (f" Sam has {a} coins and finds {b} more coins on each of {c} days at the stall number {k}. How many "
            f"coins does Sam have now?\nAnswer: Sam finds {b} * {c} = <<{b}*{c}={b * c + wrong}>>{b * c + wrong} "
            f"coins.\nSo {a} + {b * c + wrong} = <<{a}+{b * c + wrong}={a + b * c + wrong}>>{a + b * c + wrong}.\n"
            f"#### {a + b * c + wrong}")


def fake_generate_shards(keep_every: int, seen: list):
    """The data plane's ``generate_shards`` with a writer whose every ``keep_every``-th answer is right (0: none
    is): each shard parsed and written as the real one does, no engine."""
    from psi_ray.stages import instances

    def generate_shards(sd, shards, plan_args, spec, sampling, pool, adapter, tally):
        ranges = {s: instances.shard_range(s, plan_args["count"], plan_args["shard_size"]) for s in shards}
        seen.append(sum(b - a for a, b in ranges.values()))
        for s, (a, b) in ranges.items():
            planned = [{"id": f"inst-{k:07d}", "shard": s, "principle_ids": [], "example_ids": []} for k in range(a, b)]
            gens = []
            for k in range(a, b):
                text = answer(k, keep_every > 0 and k % keep_every == 0)
                gens.append({"id": f"inst-{k:07d}", "raw_output": text, "finish_reason": "stop", "prompt_tokens": 10,
                             "output_tokens": len(text.split()), "error": None, "node_id": "n"})
            tally.add(gens)
            sd.write_part(s, instances.parse_outputs(planned, gens, adapter, spec.model))
    return generate_shards


def run_waves(tmp_path, monkeypatch, keep_every: int, target: int, count: int):
    from psi_ray.pipeline import Run, dataplane, dataset_stage, filter_stage, psi
    from psi_ray.stages import seeds

    seen: list[int] = []
    monkeypatch.setattr(dataplane, "generate_shards", fake_generate_shards(keep_every, seen))
    cfg = JobConfig(runs_dir=str(tmp_path), method="student", shard_size=16, carbon={"enabled": False},
                    filter={"decontaminate": []}, instances={"count": count, "target_kept": target})
    seed_rows = seeds.load(cfg)
    r = Run(cfg)
    made = r.stage("instances", ("instances",), lambda sd: psi._instances(r, sd, seed_rows, []))
    kept = r.stage("filter", ("filter",), lambda sd: filter_stage(r, sd, made, seed_rows))
    data = r.stage("dataset", (), lambda sd: dataset_stage(r, sd, kept, []))
    return seen, made.manifest(), kept.manifest(), data.manifest()


def test_waves_stop_at_the_kept_target_and_the_dataset_holds_exactly_it(tmp_path, monkeypatch):
    seen, made, filt, data = run_waves(tmp_path, monkeypatch, keep_every=2, target=40, count=400)
    # Half the answers are right: the first wave (40 / 0.25 × 1.1 → 176 rows, 11 shards) keeps 88 >= 40.
    assert seen == [176]
    assert made["rows"] == 176 < 400 and made["stopped"] == "target reached" and made["kept_when_stopped"] == 88
    assert filt["kept"] == 40 and filt["rejected"]["over_budget"] == 48  # rows past the target: marked, kept apart
    assert data["valid"] == 40


def test_waves_stop_at_the_attempts_cap(tmp_path, monkeypatch):
    seen, made, filt, data = run_waves(tmp_path, monkeypatch, keep_every=0, target=40, count=96)
    assert sum(seen) == 96 and made["rows"] == 96  # every attempt used, none past the cap
    assert made["stopped"] == "attempts cap reached" and filt["kept"] == 0 and data["valid"] == 0


def test_a_second_wave_follows_a_low_kept_share(tmp_path, monkeypatch):
    seen, made, filt, data = run_waves(tmp_path, monkeypatch, keep_every=10, target=30, count=640)
    assert len(seen) >= 2 and made["stopped"] == "target reached"  # 18 of 176 kept: a second, larger wave
    assert seen[1] > seen[0] and filt["kept"] == data["valid"] == 30


# ---- arms -------------------------------------------------------------------------------------------------

def spec(**kw):
    from psi_ray.pipeline.compare import ARMS, CompareSpec

    return CompareSpec(**{"arms": tuple(ARMS), "kept": 64, "max_attempts": 8, "questions": 250,
                          "tasks": ("gsm8k",), **kw})


def test_every_arm_is_the_job_with_its_own_changes(tmp_path):
    from psi_ray.pipeline.compare import arm_config

    cfg = JobConfig(name="j", runs_dir=str(tmp_path), shard_size=50, train={"enabled": True}, eval={"enabled": True})
    arms = {a: arm_config(cfg, a, spec()) for a in spec().arms}
    assert {a: (c.method, c.instances.guidance) for a, c in arms.items()} == {
        "psi": ("psi", "summaries"), "student": ("student", "summaries"), "teacher": ("teacher", "summaries"),
        "placebo": ("psi", "placebo"), "no-cluster": ("psi", "low_level"), "handwritten": ("psi", "summaries")}
    for a, c in arms.items():
        assert c.instances.target_kept == 64 and c.instances.count == 550  # 64 × 8 = 512 → 11 shards of 50
        assert c.run_dir() == tmp_path / "j-compare" / a
        assert not c.train.enabled and not c.eval.enabled and c.eval.limit == 250
    assert arms["handwritten"].principles.source == "file"
    assert arms["handwritten"].principles.file.endswith("gsm8k_principles.yaml")
    assert arms["psi"].principles.source == "model"


def test_a_t_sweep_is_psi_arms_that_differ_only_in_principle_subsets(tmp_path):
    from psi_ray.pipeline.compare import arm_config, parse_arms

    cfg = JobConfig(name="j", runs_dir=str(tmp_path), shard_size=50, principles={"subsets": 4})
    arms = parse_arms("student,psi-T1,psi-T10")
    configs = {a: arm_config(cfg, a, spec(arms=arms)) for a in arms}
    assert configs["psi-T1"].principles.subsets == 1 and configs["psi-T10"].principles.subsets == 10
    assert configs["psi-T1"].cluster.num_clusters == 1 and configs["psi-T10"].cluster.num_clusters == 4
    psi = arm_config(cfg, "psi", spec()).model_dump()
    for a in ("psi-T1", "psi-T10"):
        data = configs[a].model_dump()
        assert configs[a].run_dir() == tmp_path / "j-compare" / a
        assert {k for k in data if data[k] != psi[k]} <= {"principles", "cluster", "run_id"}
        assert {k for k in data["principles"] if data["principles"][k] != psi["principles"][k]} == {"subsets"}


def test_arm_names_are_checked():
    from psi_ray.errors import PsiRayError
    from psi_ray.pipeline.compare import parse_arms

    assert parse_arms("psi, student,psi") == ("psi", "student")
    assert parse_arms("student,psi-T5") == ("student", "psi-T5")
    for bad in ("psi-T0", "psi-T", "psi-t5", "psi-T5x"):
        with pytest.raises(PsiRayError, match=f"unknown arm.*{bad}"):
            parse_arms(f"student,{bad}")
    with pytest.raises(PsiRayError, match="unknown arm.*psy"):
        parse_arms("psy,student")
    with pytest.raises(PsiRayError, match="must include 'student'"):
        parse_arms("psi,teacher")


def test_placebo_prompts_show_filler_of_the_same_length_and_no_principle(seed_rows):
    from psi_ray.stages.filter import normalize
    from psi_ray.tasks import get_adapter

    high = [{"principle_id": "H00", "text": "Write each calculation as <<a*b=c>> and carry results forward."},
            {"principle_id": "H01", "text": "State the final number alone after #### on the last line."}]
    fake = guidance.placebo(high, seed=0)
    assert [h["principle_id"] for h in fake] == ["H00", "H01"]
    for real, filler in zip(high, fake, strict=True):
        assert len(real["text"]) - 12 <= len(filler["text"]) <= len(real["text"])
        assert set(normalize(filler["text"]).split()) <= set(normalize(" ".join(guidance.PLACEBO_SENTENCES)).split())
    prompt = instances.plan(1, 1, 0, fake, seed_rows, 2, 2, get_adapter("gsm8k"))[0]["prompt"]
    text = "\n".join(m["content"] for m in prompt)
    assert all(f["text"] in text for f in fake) and not any(h["text"] in text for h in high)


def test_no_cluster_prompts_show_the_valid_low_level_principles_as_they_are(seed_rows):
    from psi_ray.pipeline.psi import engine_uses
    from psi_ray.tasks import get_adapter

    low = [{"principle_id": "L00", "text": "Name every quantity before you compute anything.", "valid": True},
           {"principle_id": "L01", "text": "ok", "valid": False},
           {"principle_id": "L02", "text": "Finish with the number alone after ####.", "valid": True}]
    high, manifest = guidance.as_high_level(low, "low-level principles, not clustered")
    assert [h["text"] for h in high] == [low[0]["text"], low[2]["text"]] and manifest["source"].startswith("low")
    prompt = instances.plan(1, 1, 0, high, seed_rows, 2, 2, get_adapter("gsm8k"))[0]["prompt"]
    text = "\n".join(m["content"] for m in prompt)
    assert low[0]["text"] in text and low[2]["text"] in text
    uses = [s for s, _ in engine_uses(JobConfig(instances={"guidance": "low_level"}))]
    assert "summarize" not in uses and "principles" in uses  # no summaries: M_L is not kept for them


@pytest.fixture(scope="module")
def seed_rows():
    from psi_ray.stages import seeds

    return seeds.load(JobConfig())


def test_arms_copy_the_stages_an_earlier_arm_finished_with_the_same_config(tmp_path):
    from psi_ray.pipeline import Run, seeds_stage
    from psi_ray.pipeline.compare import arm_config
    from psi_ray.rundir import StageDir
    from psi_ray.stages import seeds

    cfg = JobConfig(name="j", runs_dir=str(tmp_path), carbon={"enabled": False})
    rows = seeds.load(cfg)
    psi = Run(arm_config(cfg, "psi", spec()))
    seeds_stage(psi, rows)
    placebo = Run(arm_config(cfg, "placebo", spec()), reuse=[psi.dir])
    seeds_stage(placebo, rows)
    student = Run(arm_config(cfg, "student", spec()), reuse=[psi.dir])
    seeds_stage(student, rows)
    digest = StageDir.named(psi.dir, "seeds").manifest()["digest"]
    assert StageDir.named(placebo.dir, "seeds").manifest()["digest"] == digest  # copied: same config so far
    assert StageDir.named(placebo.dir, "seeds").read() == StageDir.named(psi.dir, "seeds").read()
    assert StageDir.named(student.dir, "seeds").manifest()["digest"] != digest  # another method: its own


def test_reading_says_when_no_arm_differs():
    from psi_ray.report.arms import reading

    def arm(diff, lo, hi):
        return {"eval": {"vs_student": {"gsm8k exact_match (strict-match)": {
            "n": 250, "difference": diff, "ci95": [lo, hi], "mcnemar_p": 0.5}}}}

    data = {"tasks": ["gsm8k"], "arms": {"student": {"eval": {"vs_student": {}}}, "psi": arm(0.02, -0.01, 0.05),
                                         "teacher": arm(-0.01, -0.04, 0.02)}}
    assert reading(data) == ["gsm8k exact_match (strict-match), 250 questions: no arm differs from student: "
                             "every 95% interval holds 0."]
    data["arms"]["psi"] = arm(0.06, 0.02, 0.10)
    assert "beyond its 95% interval: psi (+0.060, interval +0.020 … +0.100)" in reading(data)[0]


def test_saved_scores_are_reused_only_for_the_same_weights_and_questions(tmp_path, monkeypatch):
    """A compare run again with another --kept retrains the arms: their old scores must not be taken."""
    import psi_ray.evaluate as evaluate_pkg
    from psi_ray.pipeline.compare import eval_model

    calls = []

    def scored(model, tasks, out, limit=None, **_):
        calls.append((model, limit))
        return {"tasks": {"gsm8k": {"strict": 0.1}}}

    monkeypatch.setattr(evaluate_pkg, "evaluate", scored)
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights one")
    cfg = JobConfig(name="j", runs_dir=str(tmp_path), carbon={"enabled": False})
    out = tmp_path / "eval" / "psi"
    out.mkdir(parents=True)
    eval_model(str(model), out, cfg, spec())
    eval_model(str(model), out, cfg, spec())
    assert len(calls) == 1  # same weights, same questions: reused
    (model / "model.safetensors").write_bytes(b"weights two")  # retrained
    eval_model(str(model), out, cfg, spec())
    assert len(calls) == 2
    eval_model(str(model), out, cfg, spec(questions=100))
    assert calls[-1] == (str(model), 100)


def test_a_compare_at_another_budget_is_refused_at_once(tmp_path):
    """Arms generated for --kept 32 cannot serve a compare at --kept 64: one line naming both and the way out,
    before any stage runs, and the old compare's record is left as it was."""
    import json

    from psi_ray.errors import PsiRayError
    from psi_ray.pipeline.compare import compare, compare_dir

    cfg = JobConfig(name="j", runs_dir=str(tmp_path), carbon={"enabled": False})
    out = compare_dir(cfg)
    out.mkdir(parents=True)
    old = json.dumps({**spec(kept=32).__dict__, "job": "j"})
    (out / "compare_spec.json").write_text(old)
    with pytest.raises(PsiRayError, match="made with --kept 32 .*asked now: --kept 64, --max-attempts 8.*--runs-dir"):
        compare(cfg, spec())
    assert (out / "compare_spec.json").read_text() == old
    assert sorted(p.name for p in out.iterdir()) == ["compare_spec.json"]
