"""The report shows principle hygiene counts from the 02/04 manifests, and the filter's reasons with zeros."""

import json

from psi_ray.report.collect import collect
from psi_ray.report.render import render_html, render_markdown


def _manifest(run, folder, data):
    (run / folder).mkdir(parents=True)
    # the name manifests had before "_manifest.json": a report of an older run still finds them
    (run / folder / "manifest.json").write_text(json.dumps({"finished_at": 1.0, "energy": {}, **data}))


def test_hygiene_and_reject_counts_reach_the_report(tmp_path):
    run = tmp_path / "r"
    (run).mkdir()
    (run / "config.json").write_text(json.dumps({"method": "psi", "task": {"adapter": "gsm8k"}}))
    _manifest(run, "02_principles", {"rows": 14, "kept": 10, "rejected": {"numbered_stub": 3, "echoes_prompt": 1}})
    _manifest(run, "04_summarize", {"rows": 4, "summaries_used": 3, "rejected": {"repetition": 1}})
    _manifest(run, "06_filter", {"rows": 448, "kept": 57,
                                 "rejected": {"wrong_equation": 81, "answer_mismatch": 12, "contaminated": 0}})
    r = collect(run)
    assert r["hygiene"] == {"principles": {"kept": 10, "rejected": {"numbered_stub": 3, "echoes_prompt": 1}},
                            "summarize": {"kept": 3, "rejected": {"repetition": 1}}}
    md = render_markdown(r)
    assert "## Principle hygiene" in md and "| numbered_stub | 3 |" in md and "| repetition | 1 |" in md
    assert "| contaminated | 0 |" in md and "| wrong_equation | 81 |" in md
    assert "Principle hygiene" in render_html(r)
