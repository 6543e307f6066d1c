"""The run report: figures computed right from synthetic run directories, sections skipped where data is absent.

``make_run`` writes a run directory the way the pipeline does (config.json, manifests, small Parquet parts), so
these tests need neither Ray nor a model; the browser test in tests/integration reuses it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from psi_ray.errors import PsiRayError
from psi_ray.report import collect, render, write_report
from psi_ray.rundir import StageDir, atomic_write_text, write_parquet

MODEL_STAGES = {"expand": "generator", "principles": "large", "summarize": "large"}


def energy(kwh: float) -> dict:
    """A stage manifest's ``energy``, as ``carbon.measure`` fills it, for 10 s at ``kwh``."""
    return {"duration_s": 10.0, "energy_kwh": kwh, "emissions_kg": kwh * 0.4, "cpu_energy_kwh": kwh / 2,
            "gpu_energy_kwh": 0.0, "ram_energy_kwh": kwh / 2, "power_source": "estimate", "cpu_power_w": 5.0,
            "nodes": 1}


def make_run(root: Path, run_id: str, method: str, *, large: str = "smollm2-135m", generator: str = "smollm2-135m",
             stage_kwh: float = 0.001, generated: int = 400, valid: int = 300, upto: str = "dataset",
             scores: dict | None = None) -> Path:
    """A run directory with every stage up to ``upto`` finished; each stage used ``stage_kwh`` and 10 s.

    ``scores`` (``{"<task> <metric>": {"base": x, "finetuned": y}}``) adds the eval stage as a run writes it:
    ``09_eval/_scores.json`` (the shape ``closing.eval_stage`` writes) and the stage's manifest."""
    run_dir = root / run_id
    cfg = {"name": "gsm8k-test", "method": method, "seed": 0, "task": {"adapter": "gsm8k"},
           "large": {"model": large}, "generator": {"model": generator}, "instances": {"count": generated}}
    atomic_write_text(run_dir / "config.json", json.dumps(cfg))
    names = [s for s in collect.STAGES if method == "psi" or s not in collect.PSI_ONLY]
    names = names[: names.index(upto) + 1]
    t = 1_700_000_000.0
    for name in names:
        index = collect.STAGES.index(name)
        sd = StageDir(run_dir, index, name)
        t += 10.0
        m = {"stage": name, "digest": "d", "seed": 0, "method": method, "rows": 4, "errors": 0, "finished_at": t,
             "energy": energy(stage_kwh)}
        tier = MODEL_STAGES.get(name)
        if name == "instances":
            tier = "large" if method == "teacher" else "generator"
            m.update(rows=generated, tier=tier, shards=2)
        if tier:
            m["tokens"] = {tier: {"requests": 4, "prompt_tokens": 400, "output_tokens": 250}}
        if name == "cluster":
            sd.write_part(0, [{"principle_id": f"L000-0{i}", "text": f"low principle {i}", "cluster_id": i % 2,
                               "x": float(i), "y": float(i * i)} for i in range(4)])
        if name == "summarize":
            sd.write_part(0, [{"principle_id": f"H0{c}", "cluster_id": c, "text": f"high principle {c}",
                               "member_ids": [f"L000-0{i}" for i in range(4) if i % 2 == c]} for c in range(2)])
        if name == "filter":
            m.update(rows=generated, kept=valid, rejected={"near_duplicate": (generated - valid) // 2,
                                                           "no_final_answer": generated - valid
                                                           - (generated - valid) // 2})
        if name == "dataset":
            m.update(rows=valid, valid=valid, dataset=str(sd.path / "data.parquet"))
        if name in ("seeds", "expand", "principles"):
            write_parquet(sd.part_path(0), [{"id": "a"}])
        sd.write_manifest(m)
    if scores is not None:
        sd = StageDir(run_dir, 9, "eval")
        atomic_write_text(sd.path / "_scores.json", json.dumps(
            {"limit": 50, "tasks": scores, "models": {"base": "smollm2-135m", "finetuned": str(run_dir / "08_train")},
             "main_metric": {"gsm8k": "exact_match,strict-match"}}))
        sd.write_manifest({"stage": "eval", "digest": "d", "seed": 0, "method": method, "rows": len(scores),
                           "scores": scores, "limit": 50, "finished_at": t + 10.0, "energy": energy(stage_kwh)})
    return run_dir


GSM8K_EM = "gsm8k exact_match (strict-match)"  # a key of scores.json's "tasks", as closing.table makes it


@pytest.fixture
def runs(tmp_path):
    psi = make_run(tmp_path, "gsm8k-psi", "psi", stage_kwh=0.001, valid=300)
    teacher = make_run(tmp_path, "gsm8k-teacher", "teacher", stage_kwh=0.004, valid=200)
    return psi, teacher


@pytest.fixture
def evaluated(tmp_path):
    """The psi run of ``runs`` with its eval stage finished too."""
    return make_run(tmp_path / "evaluated", "gsm8k-psi", "psi", stage_kwh=0.001, valid=300,
                    scores={GSM8K_EM: {"base": 0.1, "finetuned": 0.12}})


def test_per_1k_figures_and_teacher_ratio(runs):
    psi, teacher = runs
    out = write_report(psi, [teacher])
    run, comp = out["run"], out["compare"]
    assert run["totals"]["energy_kwh"] == pytest.approx(8 * 0.001)
    psi_per_1k = 8 * 0.001 / 300 * 1000
    teacher_per_1k = 4 * 0.004 / 200 * 1000
    assert run["per_1k_valid"]["energy_kwh"] == pytest.approx(psi_per_1k)
    assert run["per_1k_valid"]["emissions_kg"] == pytest.approx(psi_per_1k * 0.4)
    assert comp["teacher"] == "gsm8k-teacher"
    rows = {r["run_id"]: r for r in comp["rows"]}
    assert rows["gsm8k-psi"]["ratio_to_teacher"]["energy_kwh"] == pytest.approx(psi_per_1k / teacher_per_1k)
    assert rows["gsm8k-psi"]["ratio_to_teacher"]["emissions_kg"] == pytest.approx(psi_per_1k / teacher_per_1k)
    assert rows["gsm8k-teacher"]["ratio_to_teacher"]["energy_kwh"] == pytest.approx(1.0)
    assert rows["gsm8k-psi"]["output_tokens"] == {"large": 500, "generator": 500}
    assert rows["gsm8k-teacher"]["output_tokens"] == {"large": 250}
    assert run["valid_rate"] == pytest.approx(0.75)

    page, md = out["html"].read_text(), out["markdown"].read_text()
    want_ratio = render.ratio(psi_per_1k / teacher_per_1k)
    for text in (page, md):
        assert want_ratio in text and "gsm8k-teacher" in text and render.num(psi_per_1k) in text
    assert any(want_ratio in line for line in out["headline"])
    assert not [p.name for p in psi.iterdir() if p.name.startswith(".report")]  # atomic writes left no temp files


def test_eval_scores_are_read_from_the_eval_stage(evaluated, runs):
    run = collect.collect(evaluated)
    assert run["eval"] == {GSM8K_EM: {"base": 0.1, "finetuned": 0.12}} and run["eval_limit"] == 50
    out = write_report(evaluated, [runs[1]])
    for text in (out["html"].read_text(), out["markdown"].read_text()):
        assert "0.1 → 0.12" in text and GSM8K_EM in text  # in the comparison and the eval table
        assert "the first 50 questions" in text
    assert collect.collect(runs[0])["eval"] is None  # no eval stage, no scores


def test_per_1k_generation_figures_leave_eval_energy_out(evaluated, runs):
    with_eval, without = collect.collect(evaluated), collect.collect(runs[0])
    assert with_eval["per_1k_valid"]["energy_kwh"] == pytest.approx(without["per_1k_valid"]["energy_kwh"])


def test_throughput_is_output_tokens_over_stage_time(runs):
    run = collect.collect(runs[0])
    assert run["tokens"]["large"]["output_tokens"] == 500  # principles + summarize
    assert run["tokens"]["large"]["tokens_per_s"] == pytest.approx(500 / 20.0)
    assert run["tokens"]["generator"]["tokens_per_s"] == pytest.approx(500 / 20.0)  # expand + instances
    assert [s["offset_s"] for s in run["stages"]] == pytest.approx([10.0 * i for i in range(8)])


def test_same_model_note_only_when_models_are_equal(tmp_path, runs):
    page = write_report(runs[0], [runs[1]])["html"].read_text()
    assert "reflects token counts only, not a model-size saving" in page
    assert "reflects token counts only" in (runs[0] / "report.md").read_text()
    a = make_run(tmp_path / "other", "psi-7b", "psi", large="qwen-7b", generator="qwen-1.5b")
    b = make_run(tmp_path / "other", "teacher-7b", "teacher", large="qwen-7b", generator="qwen-1.5b")
    out = write_report(a, [b])
    assert "token counts only" not in out["html"].read_text()
    assert "token counts only" not in out["markdown"].read_text()


def test_teacher_report_skips_principle_sections(runs):
    psi, teacher = runs
    page = write_report(teacher)["html"].read_text()
    assert 'id="principles"' not in page and 'id="projection"' not in page and 'id="compare"' not in page
    assert "01_expand" not in page and 'id="validity"' in page and 'id="eval"' not in page
    psi_page = write_report(psi)["html"].read_text()
    assert 'id="principles"' in psi_page and 'id="projection"' in psi_page and 'id="eval"' not in psi_page
    assert "high principle 1" in psi_page and "low principle 3" in psi_page


def test_principle_tree_groups_members(runs):
    tree = collect.collect(runs[0])["principles"]
    assert [(h["id"], [m["id"] for m in h["members"]]) for h in tree] == [
        ("H00", ["L000-00", "L000-02"]), ("H01", ["L000-01", "L000-03"])]


def test_unfinished_run_reports_what_is_done(tmp_path):
    run_dir = make_run(tmp_path, "half", "psi", upto="principles")
    (run_dir / "03_cluster").mkdir()
    out = write_report(run_dir)
    run = out["run"]
    assert not run["finished"] and run["per_1k_valid"] is None and run["validity"] is None
    assert run["principles"] is None and run["projection"] is None
    assert [r["folder"] for r in run["running"]] == ["03_cluster"]
    assert run["missing"] == ["summarize", "instances", "filter", "dataset"]
    page = out["html"].read_text()
    assert 'id="timeline"' in page and 'id="validity"' not in page and 'id="principles"' not in page
    assert any(line.startswith("unfinished") for line in out["headline"])


def test_estimated_power_is_said(runs):
    page = write_report(runs[1])["html"].read_text()
    assert "estimated" in page and "RAPL" in page


def test_not_a_run_dir_is_one_line_error(tmp_path, capsys):
    from psi_ray.cli import main

    with pytest.raises(PsiRayError, match="not a run directory"):
        collect.collect(tmp_path)
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("psi-ray: error:") and "not a run directory" in err[0]


def test_cli_prints_report_path_and_headline(runs, capsys):
    from psi_ray.cli import main

    assert main(["report", str(runs[0]), "--compare", str(runs[1])]) == 0
    out = capsys.readouterr().out
    assert str(runs[0] / "report.html") in out and "per 1K valid instances" in out and "teacher" in out


def test_html_is_self_contained(runs):
    page = write_report(runs[0], [runs[1]])["html"].read_text()
    assert "data:image/png;base64," in page
    assert "<link" not in page and "<script" not in page and 'src="http' not in page


def test_a_run_with_the_verify_stage_reports_it_on_its_tier(runs):
    """Stage 5b tallies its tokens as ``verify (generator)``: the stage is drawn and listed as an M_g stage and
    its tokens are credited to the generator's model (a run with verify on once failed to report, KeyError)."""
    psi = runs[0]
    StageDir(psi, 5, "verify").write_manifest(
        {"stage": "verify", "digest": "d", "seed": 0, "method": "psi", "rows": 4, "errors": 0, "checked": 2,
         "finished_at": 1_700_000_200.0, "energy": energy(0.001),
         "tokens": {"verify (generator)": {"requests": 4, "prompt_tokens": 100, "output_tokens": 60}}})
    run = collect.collect(psi)
    [verify] = [s for s in run["stages"] if s["folder"] == "05_verify"]
    assert verify["tiers"] == ["generator"]
    assert run["tokens"]["verify (generator)"]["model"] == "smollm2-135m"
    md = write_report(psi)["markdown"].read_text()
    assert "| 05_verify | M_g |" in md


def test_report_modules_do_not_import_matplotlib():
    code = ("import sys, psi_ray, psi_ray.cli, psi_ray.cli.pipeline, psi_ray.cli.report, psi_ray.report, "
            "psi_ray.report.collect, psi_ray.report.render; psi_ray.cli.build_parser(); "
            "sys.exit(1 if 'matplotlib' in sys.modules else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_number_formatting():
    assert render.num(1234567) == "1,234,567"
    assert render.num(0.00069459) == "0.000695"
    assert render.num(None) == "–"
    assert render.ratio(0.4567) == "0.46×"
    assert render.when(0) == time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(0))
