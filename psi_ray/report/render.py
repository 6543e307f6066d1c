"""Turn collected run dicts into one self-contained HTML page (figures as inline PNG) and a Markdown summary.

:func:`sections` lists the report's sections once; ``templates/report.html.j2`` and ``report.md.j2`` lay them
out (Jinja, autoescaped for HTML). The figures (``figures.py``) are embedded as base64, so ``report.html``
opens anywhere, offline, as one file; numbers are formatted by ``fmt.py``. Sections whose data a run does not
have (a teacher run's principles, an unfinished run's validity) are left out rather than drawn empty.
"""

from __future__ import annotations

import html
import re
import time
from pathlib import Path

from psi_ray.report.collect import ENERGY, TIERS
from psi_ray.report.figures import (
    fig_compare,
    fig_energy,
    fig_projection,
    fig_throughput,
    fig_timeline,
    fig_validity,
)
from psi_ray.report.fmt import num, pct, power_text, ratio, secs, when

# ---- shared text ---------------------------------------------------------------------------------------------

def headline(run: dict, comp: dict | None = None, notes: bool = True) -> list[str]:
    """The few lines a person reads first; printed by the CLI and opening both report files.

    ``notes`` adds the caveats (the page shows them in their own box instead).
    """
    t = run["totals"]
    lines = [f"{run['run_id']}: method {run['method']}, task {run['task'] or '?'}, "
             + ", ".join(f"{k} {v}" for k, v in run["models"]["writers"].items())]
    if run["valid"] is not None:
        lines.append(f"{num(run['valid'])} of {num(run['generated'])} generated instances valid "
                     f"({pct(run['valid_rate'])})")
    if not run["finished"]:
        doing = ", ".join(f"{r['folder']} ({r['parts']} part(s) written)" for r in run["running"]) or "none"
        lines.append(f"unfinished: in progress {doing}; not started {', '.join(run['missing']) or 'none'}")
    so_far = "" if run["finished"] else " so far"
    lines.append(f"energy{so_far} {num(t['energy_kwh'])} kWh, {num(t['emissions_kg'])} kgCO2e over "
                 f"{len(run['stages'])} stage(s), {secs(t['duration_s'])} of stage time; power {power_text(run)}")
    if run["per_1k_valid"]:
        p = run["per_1k_valid"]
        lines.append(f"per 1K valid instances: {num(p['energy_kwh'])} kWh, {num(p['emissions_kg'])} kgCO2e")
    if run["tokens"]:
        lines.append("output tokens: " + ", ".join(
            f"{v['label']} {num(v['output_tokens'])} ({num(v['tokens_per_s'])} tok/s)" for v in run["tokens"].values()))
    if comp and comp["teacher"]:
        for r in comp["rows"]:
            if r["ratio_to_teacher"] and r["run_id"] != comp["teacher"]:
                q = r["ratio_to_teacher"]
                lines.append(f"{r['run_id']} vs teacher {comp['teacher']}, per 1K valid: energy "
                             f"{ratio(q['energy_kwh'])}, emissions {ratio(q['emissions_kg'])}")
    if notes:
        lines.extend((comp or {}).get("notes") or run["notes"])
    return lines


def _compare_table(comp: dict) -> tuple[list[str], list[list[str]]]:
    head = ["run", "method", "writer model(s)", "generated", "valid", "valid rate", "kWh (data)", "kgCO2e (data)",
            "kWh / 1K valid", "kgCO2e / 1K valid", "kWh / 1K ÷ teacher", "kgCO2e / 1K ÷ teacher",
            "M_L output tokens", "M_g output tokens"] + [f"{t} (base → fine-tuned)" for t in comp["eval_tasks"]]
    body = []
    for r in comp["rows"]:
        p, q = r["per_1k"] or {}, r["ratio_to_teacher"] or {}
        body.append([r["run_id"] + ("" if r["finished"] else " (unfinished)"), r["method"],
                     "\n".join(f"{k.split()[0]} {v}" for k, v in r["writers"].items()), num(r["generated"]), num(r["valid"]),
                     pct(r["valid_rate"]), num(r["energy_kwh"]) if r["measured"] else "–",
                     num(r["emissions_kg"]) if r["measured"] else "–", num(p.get("energy_kwh")),
                     num(p.get("emissions_kg")), ratio(q.get("energy_kwh")), ratio(q.get("emissions_kg")),
                     num(r["output_tokens"].get("large")), num(r["output_tokens"].get("generator"))]
                    + [_score(r["eval"].get(t)) for t in comp["eval_tasks"]])
    return head, body


def _score(s: dict | None) -> str:
    if not s:
        return "–"
    if "base" in s and "finetuned" in s:
        return f"{num(s['base'])} → {num(s['finetuned'])}"
    return ", ".join(f"{k} {num(v)}" for k, v in s.items())


def _eval_table(scores: dict, paired: dict | None = None) -> tuple[list[str], list[list[str]]]:
    keys = sorted({k for s in scores.values() for k in s}, key=lambda k: (k != "base", k != "finetuned", k))
    paired = paired or {}
    body = []
    for task, s in sorted(scores.items()):
        change = s["finetuned"] - s["base"] if isinstance(s.get("base"), int | float) and \
            isinstance(s.get("finetuned"), int | float) else None
        row = [task, *(num(s.get(k)) for k in keys), "–" if change is None else f"{change:+.3g}"]
        if paired:
            p = paired.get(task)
            row += [f"{p['ci95'][0]:+.3g} … {p['ci95'][1]:+.3g}", f"{p['mcnemar_p']:.3g}", str(p["n"])] if p \
                else ["–", "–", "–"]
        body.append(row)
    extra = ["95% interval (paired bootstrap)", "McNemar p", "questions"] if paired else []
    return ["task", *keys, "fine-tuned − base", *extra], body


def _eval_note(run: dict) -> str:
    limit = run.get("eval_limit")
    scope = f"the first {limit} questions of each task" if limit else "every question of each task"
    note = f"lm-eval through the served endpoint; base and fine-tuned M_t on the same questions ({scope})."
    if run.get("eval_paired"):
        note += (" The interval resamples the questions (both models' answers together); where it holds 0, or p"
                 " is above 0.05, these questions show no difference between the models.")
    return note


def _stage_table(run: dict) -> tuple[list[str], list[list[str]]]:
    def energy(x):
        return [num(x[k]) if run["measured"] else "–" for k in ENERGY]
    head = ["stage", "model tier", "rows", "errors", "duration", "finished at", "kWh", "kgCO2e", "CPU kWh",
            "GPU kWh", "RAM kWh"]
    body = [[s["folder"], ", ".join(TIERS.get(t, t) for t in s["tiers"]) or "–", num(s["rows"]), num(s["errors"]),
             secs(s["duration_s"]), when(s["finished_at"]), *energy(s)] for s in run["stages"]]
    body.append(["total", "", "", "", secs(run["totals"]["duration_s"]), "", *energy(run["totals"])])
    return head, body


def _token_table(run: dict) -> tuple[list[str], list[list[str]]]:
    head = ["tier", "model", "stages", "requests", "prompt tokens", "output tokens", "stage time", "output tok/s"]
    body = [[v["label"], v["model"] or "?", ", ".join(v["stages"]), num(v["requests"]), num(v["prompt_tokens"]),
             num(v["output_tokens"]), secs(v["duration_s"]), num(v["tokens_per_s"])] for v in run["tokens"].values()]
    return head, body


def _validity_table(v: dict) -> tuple[list[str], list[list[str]]]:
    rows = [["kept (valid)", num(v["kept"]), pct(v["kept"] / v["generated"] if v["generated"] else None)]]
    rows += [[k, num(n), pct(n / v["generated"] if v["generated"] else None)] for k, n in v["rejected"].items()]
    return ["outcome", "instances", "share"], rows


def _hygiene_table(h: dict) -> tuple[list[str], list[list[str]]]:
    rows = []
    for stage, v in h.items():
        what = "low-level principles (stage 2)" if stage == "principles" else "summaries used (stage 4)"
        rows.append([what, "kept", num(v["kept"])])
        rows += [[what, reason, num(n)] for reason, n in sorted(v["rejected"].items())]
    return ["principles", "outcome", "count"], rows


# ---- HTML ----------------------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;font-size:16px;color:#222;
margin:0;background:#fafafa}
main{max-width:1180px;margin:0 auto;padding:24px 32px;background:#fff}
h1{font-size:28px;margin:0 0 4px}h2{font-size:21px;margin:36px 0 10px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#666;margin:0 0 16px}.note{background:#fff8e1;border-left:4px solid #f0b400;padding:10px 14px;margin:12px 0}
.headline{background:#f3f7fb;border-radius:6px;padding:12px 16px 12px 36px;margin:12px 0;line-height:1.6}
table{border-collapse:collapse;margin:10px 0;font-size:14px}th,td{border:1px solid #ddd;padding:5px 9px;
vertical-align:top}th{background:#f2f2f2;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
.wide{overflow-x:auto}.wide table{font-size:13px}.wide td,.wide th{padding:4px 6px}.wide td:first-child{white-space:nowrap}
img{max-width:100%;height:auto;display:block;margin:8px 0}
ul.tree>li{margin:10px 0}ul.tree ul{color:#444;font-size:15px}code{font-size:13px;color:#555}
"""


def _e(x) -> str:
    return html.escape(str(x))


NUMERIC = re.compile(r"^[-+]?[\d,.]+(e[-+]?\d+)?( ?(s|min|h|%|×))?$|^–$")


def _table(table: tuple[list[str], list[list[str]]], first_text: int = 1) -> str:
    """An HTML table (escaped, safe to insert); cells from column ``first_text`` on that hold a figure are
    right-aligned."""
    from markupsafe import Markup

    head, body = table
    def cell(i, c):
        text = _e(c).replace("\n", "<br>")
        return f'<td class="n">{text}</td>' if i >= first_text and NUMERIC.match(c) else f"<td>{text}</td>"
    rows = "".join("<tr>" + "".join(cell(i, c) for i, c in enumerate(r)) + "</tr>" for r in body)
    return Markup(f"<table><tr>{''.join(f'<th>{_e(h)}</th>' for h in head)}</tr>{rows}</table>")


def sections(run: dict, comp: dict | None = None) -> list[dict]:
    """The report's sections in page order, each listed once for both the page and the Markdown summary.

    A section has an ``id`` and ``title`` (the page), an ``md_title`` (``None``: page only), paragraphs
    (``text`` before and ``after`` the table on the page, ``md_text`` in Markdown), an optional ``figure``
    (called only when the page is drawn) with its ``alt`` text, drawn above the table unless ``figure_first``
    is false, a ``table`` ``(head, body)`` whose cells from
    column ``first_text`` on are right-aligned when numeric, and a principle ``tree``. Sections whose data a run
    does not have are left out.
    """
    from markupsafe import Markup

    out: list[dict] = []

    def add(sid, title, md_title=None, text=(), md_text=(), figure=None, alt="", table=None, first_text=1,
            wide=False, tree=None, after=(), figure_first=True):
        out.append({"id": sid, "title": title, "md_title": md_title, "text": list(text), "md_text": list(md_text),
                    "figure": figure, "alt": alt, "table": table, "first_text": first_text, "wide": wide,
                    "tree": tree, "after": list(after), "figure_first": figure_first})

    if comp:
        teacher = (f"Ratios divide each run's per-1K-valid figure by the teacher run {comp['teacher']}'s."
                   if comp["teacher"] else "No finished teacher run is among these, so there are no ratios.")
        chart = (lambda: fig_compare(comp["rows"])) if any(r["per_1k"] for r in comp["rows"]) else None
        add("compare", "Runs compared", "Runs compared", text=[teacher], figure=chart,
            alt="kWh per 1K valid instances by run", table=_compare_table(comp), first_text=3, wide=True,
            figure_first=False)
    if run["stages"]:
        status = [] if run["finished"] else [
            f"Unfinished: in progress {', '.join(r['folder'] for r in run['running']) or 'none'}; "
            f"not started {', '.join(run['missing']) or 'none'}."]
        add("timeline", "Stage timeline", text=status, figure=lambda: fig_timeline(run["stages"]),
            alt="stage timeline")
        per = run["per_1k_valid"]
        per_txt = [Markup("Per 1K valid instances: <b>{} kWh</b>, <b>{} kgCO2e</b> ({} valid).").format(
            num(per["energy_kwh"]), num(per["emissions_kg"]), num(run["valid"]))] if per else []
        power = f"Power source: {power_text(run)}."
        add("energy", "Energy and emissions per stage", "Stages, energy and emissions", text=[power],
            md_text=[power], figure=(lambda: fig_energy(run["stages"])) if run["measured"] else None,
            alt="energy per stage", table=_stage_table(run), first_text=2, after=per_txt)
    if run["tokens"]:
        add("throughput", "Throughput per model tier", "Throughput per model tier",
            text=["Output tokens divided by the wall time of the stages the tier ran in (engine start-up "
                  "included)."], figure=lambda: fig_throughput(run["tokens"], run["tokens_by_stage"]),
            alt="throughput per tier", table=_token_table(run))
    if run["validity"]:
        add("validity", "Validity and reject reasons", "Validity and reject reasons",
            figure=lambda: fig_validity(run["validity"]), alt="validity and reject reasons",
            table=_validity_table(run["validity"]))
    if run.get("hygiene"):
        add("hygiene", "Principle hygiene", "Principle hygiene",
            text=["Principles that echo the prompt, repeat words, are numbered stubs, too short or long, or "
                  "near-duplicate another are kept with a reason and never guide instances; a rejected summary "
                  "falls back to its cluster's most central valid member."],
            table=_hygiene_table(run["hygiene"]))
    if run["principles"]:
        add("principles", "Principle tree", "Principle tree", tree=run["principles"])
    if run["projection"]:
        add("projection", "Low-level principles in 2-D (PCA of their embeddings)",
            text=["Each point is one low-level principle, coloured by its k-means cluster."],
            figure=lambda: fig_projection(run["projection"]), alt="principle projection")
    if run["eval"]:
        note = _eval_note(run)
        add("eval", "Evaluation scores", "Evaluation scores", text=[note], md_text=[note],
            table=_eval_table(run["eval"], run.get("eval_paired")))
    return out


def _template(name: str):
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                             autoescape=name.endswith(".html.j2"), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True)
    env.filters.update(html_table=_table, md_table=lambda t: _md_table(*t),
                       oneline=lambda x: str(x).replace("\n", " "))
    return env.get_template(name)


def render_html(run: dict, comp: dict | None = None) -> str:
    """The whole report page for ``run`` (and the comparison table when ``comp`` is given)."""
    from markupsafe import Markup

    return _template("report.html.j2").render(
        run=run, css=Markup(CSS), generated=when(time.time()), headline=headline(run, comp, notes=False),
        notes=(comp or {}).get("notes") or run["notes"], sections=sections(run, comp))


# ---- Markdown ------------------------------------------------------------------------------------------------

def _md_table(head: list[str], body: list[list[str]]) -> str:
    def esc(c):
        return str(c).replace("|", "\\|").replace("\n", "<br>")
    lines = ["| " + " | ".join(esc(h) for h in head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in body]
    return "\n".join(lines)


def render_markdown(run: dict, comp: dict | None = None) -> str:
    """The summary: headline, then the same tables as the page, without figures."""
    text = _template("report.md.j2").render(run=run, headline=headline(run, comp), sections=sections(run, comp))
    return text.rstrip("\n") + "\n"
