"""The run report: one self-contained ``report.html`` (figures inline) and a ``report.md`` summary per run.

``psi-ray report RUN_DIR [--compare RUN_DIR ...]`` calls :func:`write_report`. ``collect`` reads a run
directory into plain dicts (stage timeline, energy, tokens, principles, validity, eval scores); ``render``
draws them. Nothing here needs Ray or a model, and matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

from pathlib import Path


def write_report(run_dir, compare=()) -> dict:
    """Write ``RUN_DIR/report.html`` and ``RUN_DIR/report.md`` atomically; return their paths and the headline.

    ``compare`` lists other run directories to put beside this one in a comparison table.
    """
    from psi_ray.report import collect, render
    from psi_ray.rundir import atomic_write_text

    run_dir = Path(run_dir)
    run = collect.collect(run_dir)
    others = [collect.collect(d) for d in compare]
    comp = collect.compare([run, *others]) if others else None
    html_path, md_path = run_dir / "report.html", run_dir / "report.md"
    atomic_write_text(html_path, render.render_html(run, comp))
    atomic_write_text(md_path, render.render_markdown(run, comp))
    return {"html": html_path, "markdown": md_path, "headline": render.headline(run, comp), "run": run,
            "compare": comp}
