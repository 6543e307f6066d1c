"""Numbers and times as the report prints them (thousands separators, three significant digits, UTC)."""

from __future__ import annotations

import time


def num(x) -> str:
    """A figure as people read it: thousands separators for counts, three significant digits otherwise."""
    if x is None:
        return "–"
    if isinstance(x, bool) or isinstance(x, int):
        return f"{x:,}"
    if x == 0:
        return "0"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def secs(x) -> str:
    if x is None:
        return "–"
    return f"{x:.1f} s" if x < 120 else f"{x / 60:.1f} min" if x < 7200 else f"{x / 3600:.2f} h"


def pct(x) -> str:
    return "–" if x is None else f"{x:.1%}"


def ratio(x) -> str:
    return "–" if x is None else f"{x:.2f}×"


def when(t) -> str:
    return "–" if t is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def power_text(run: dict) -> str:
    if not run["measured"]:
        return "not measured (carbon tracking was off)"
    if run["power_source"] == "rapl":
        return "measured from RAPL energy counters"
    return "estimated: codecarbon found no RAPL counters and used its CPU power tables (RAM and GPU likewise)"
