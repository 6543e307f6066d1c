"""The report's figures: matplotlib ``Figure`` objects on the Agg canvas (no pyplot, no global backend switch),
returned as base64 PNG for inline embedding. matplotlib is imported inside the functions, so importing this
module stays light."""

from __future__ import annotations

import base64
import io

from psi_ray.report.fmt import num, ratio, secs

TIER_COLOURS = {"large": "#c0392b", "generator": "#2e86c1", None: "#95a5a6"}
METHOD_COLOURS = {"psi": "#27ae60", "teacher": "#c0392b", "student": "#2e86c1"}
RC = {"font.size": 12, "axes.titlesize": 13, "axes.labelsize": 12, "xtick.labelsize": 11, "ytick.labelsize": 11,
      "legend.fontsize": 11, "axes.spines.top": False, "axes.spines.right": False}


def _tier(s: dict):
    """The tier a stage ran its model on (None: no model)."""
    return s["tiers"][0] if s["tiers"] else None


# ---- figures -------------------------------------------------------------------------------------------------

def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", facecolor="white")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _tier_legend(ax, stages: list[dict]) -> None:
    from matplotlib.patches import Patch

    names = {"large": "M_L stage", "generator": "M_g stage", None: "no model"}
    tiers = [t for t in TIER_COLOURS if any(_tier(s) == t for s in stages)]
    ax.legend(handles=[Patch(color=TIER_COLOURS[t], label=names[t]) for t in tiers], loc="lower left",
              bbox_to_anchor=(0, 1.01), ncol=len(tiers), frameon=False, borderaxespad=0)


def _hbar(labels, values, colours, notes, xlabel, left=None, width=10.0, headroom=1.25, legend=None) -> str:
    """One horizontal bar per label (top to bottom), each annotated at its end; the PNG as base64."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    left = left or [0.0] * len(values)
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(width, 0.5 * len(labels) + 1.4), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.barh(range(len(labels)), [max(v, 0.0) for v in values], left=left, color=colours, height=0.6)
        for i, note in enumerate(notes):
            ax.annotate(note, (left[i] + values[i], i), xytext=(5, 0), textcoords="offset points", va="center",
                        fontsize=10.5)
        ax.set_yticks(range(len(labels)), labels)
        ax.invert_yaxis()
        ax.set_xlim(0, max([lf + v for lf, v in zip(left, values, strict=True)] + [1e-12]) * headroom)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 4))
        ax.set_xlabel(xlabel)
        if legend:
            legend(ax)
        return _png(fig)


def fig_timeline(stages: list[dict]) -> str:
    starts, t = [], 0.0
    for s in stages:  # stages without finished_at are drawn one after another
        starts.append(s["offset_s"] if s["offset_s"] is not None else t)
        t = starts[-1] + s["duration_s"]
    return _hbar([s["folder"] for s in stages], [s["duration_s"] for s in stages],
                 [TIER_COLOURS[_tier(s)] for s in stages], [secs(s["duration_s"]) for s in stages],
                 "seconds since the first stage started", left=starts, headroom=1.15,
                 legend=lambda ax: _tier_legend(ax, stages))


def fig_energy(stages: list[dict]) -> str:
    """kWh per stage; each bar also names its kgCO2e (one grid factor per run makes a second chart redundant)."""
    return _hbar([s["folder"] for s in stages], [s["energy_kwh"] for s in stages],
                 [TIER_COLOURS[_tier(s)] for s in stages],
                 [f"{num(s['energy_kwh'])} kWh · {num(s['emissions_kg'])} kgCO2e" for s in stages],
                 "energy (kWh)", headroom=1.6, legend=lambda ax: _tier_legend(ax, stages))


def fig_throughput(tokens: dict, by_stage: list[dict]) -> str:
    labels, values, colours, notes = [], [], [], []
    for tier, t in tokens.items():
        entries = [(f"{t['label']}, all stages", t, "")] + [(f"   {e['stage']}", e, "88") for e in by_stage
                                                            if e["tier"] == tier]
        for label, e, alpha in entries:
            labels.append(label)
            values.append(e["tokens_per_s"] or 0.0)
            colours.append(TIER_COLOURS.get(tier, "#7f8c8d") + alpha)
            notes.append(f"{values[-1]:.1f} tok/s  ({num(e['output_tokens'])} tok / {secs(e['duration_s'])})")
    return _hbar(labels, values, colours, notes, "output tokens per second of stage wall time", headroom=1.7)


def fig_validity(v: dict) -> str:
    values = [v["kept"], *v["rejected"].values()]
    return _hbar(["kept (valid)", *v["rejected"]], values, ["#27ae60"] + ["#e67e22"] * len(v["rejected"]),
                 [num(x) for x in values], f"instances (of {num(v['generated'])} generated)", width=9, headroom=1.15)


def fig_compare(rows: list[dict]) -> str:
    rows = [r for r in rows if r["per_1k"]]
    vals = [r["per_1k"]["energy_kwh"] for r in rows]
    notes = [f"{num(v)} kWh" + (f"  ({ratio(r['ratio_to_teacher']['energy_kwh'])} teacher)"
                                if r["ratio_to_teacher"] else "") for v, r in zip(vals, rows, strict=True)]
    return _hbar([f"{r['run_id']} ({r['method']})" for r in rows], vals,
                 [METHOD_COLOURS.get(r["method"], "#7f8c8d") for r in rows], notes, "kWh per 1K valid instances",
                 headroom=1.6)


def _near_groups(points: list[dict], frac: float = 0.08) -> list[list[dict]]:
    """Points chained within ``frac`` of the plot's span, so close neighbours share one label instead of
    printing over each other."""
    span = max(max(p[k] for p in points) - min(p[k] for p in points) for k in ("x", "y")) or 1.0
    eps2 = (frac * span) ** 2
    groups: list[list[dict]] = []
    for p in sorted(points, key=lambda p: p["id"]):
        near = [g for g in groups if any((p["x"] - q["x"]) ** 2 + (p["y"] - q["y"]) ** 2 <= eps2 for q in g)]
        merged = [p] + [q for g in near for q in g]
        groups = [g for g in groups if g not in near] + [sorted(merged, key=lambda q: q["id"])]
    return groups


def fig_projection(points: list[dict]) -> str:
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    clusters = sorted({p["cluster_id"] for p in points})
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(9, 6), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        cmap = matplotlib.colormaps["tab10"]
        for i, c in enumerate(clusters):
            pts = [p for p in points if p["cluster_id"] == c]
            name = f"{pts[0]['high_id']} · " if pts[0]["high_id"] else ""
            ax.scatter([p["x"] for p in pts], [p["y"] for p in pts], s=70, color=cmap(i % 10), alpha=0.85,
                       edgecolor="white", label=f"{name}cluster {c} ({len(pts)})")
        if len(points) <= 60:
            for group in _near_groups(points):
                ids = [p["id"] for p in group]
                top = max(group, key=lambda p: p["y"])
                ax.annotate(", ".join(ids) if len(ids) <= 3 else f"{ids[0]} +{len(ids) - 1}", (top["x"], top["y"]),
                            xytext=(5, 5), textcoords="offset points", fontsize=9, color="#444444")
        ax.margins(x=0.15, y=0.08)  # room for the labels of points at the edges
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False, title="high-level principle")
        return _png(fig)
