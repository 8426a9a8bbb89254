"""Formatting results for people: the per-variant summary text and numbers with 3 significant digits."""

from __future__ import annotations

import math


def fmt(v: float) -> str:
    """A number with 3 significant digits (``–`` for NaN)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–" if v is None or math.isnan(v) else ("∞" if v > 0 else "−∞")
    if v == 0:
        return "0"
    a = abs(v)
    if 1e-3 <= a < 1e4:
        digits = max(0, 2 - int(math.floor(math.log10(a))))
        return f"{v:.{digits}f}"
    return f"{v:.2e}"


def format_summary(summary) -> str:
    """The per-variant summary as plain text: one column per variant, one row per headline metric (what
    ``attnlens analyze`` prints; numbers with 3 significant digits)."""

    if summary is None or not len(summary):
        return "(no rows)"
    t = summary.set_index("variant").drop(columns=["method"]).T
    lines = []
    width0 = max(len(str(i)) for i in t.index)
    cols = [str(c) for c in t.columns]
    widths = [max(len(c), 9) for c in cols]
    lines.append(" " * width0 + "  " + "  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    for name, row in t.iterrows():
        cells = [str(int(v)) if name == "runs" else fmt(float(v)) for v in row.to_numpy()]
        lines.append(str(name).ljust(width0) + "  " + "  ".join(c.rjust(w) for c, w in zip(cells, widths)))
    return "\n".join(lines)
