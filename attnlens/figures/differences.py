"""``differences``: paired differences to a baseline with their intervals (a forest plot), one panel per metric."""

from __future__ import annotations

from typing import Mapping, Sequence

from matplotlib.figure import Figure

from ..errors import BadOption
from .style import OKABE_ITO, _legend, _new_figure, _panel, _styled


@_styled
def differences_figure(tables: Mapping[str, object], metrics: Sequence[str], *, by: str = "variant",
                       role: str | None = None, groups: Sequence[str] | None = None, width: str | float = "page",
                       height: float | None = None, ci: float = 0.95) -> Figure:
    """Δ = group − baseline per metric, each with its paired interval, for one or more comparisons side by side.

    ``tables`` maps a name (e.g. a model) to the long table of a comparison (:func:`attnlens.compare.to_frame`, or
    the ``binding.csv`` that ``attnlens bench binding`` writes): columns ``metric``, ``role``, ``by``, ``diff``,
    ``diff_low``, ``diff_high``; the baseline is the row with no ``diff``. One panel per metric; each row is a group
    (in the first table's order, or ``groups``), one marker per table, the bar its ``ci`` interval; the line at 0 is
    "no effect". A group missing from a table is simply not drawn for it.
    """
    if not tables:
        raise BadOption("no comparison to draw", hint="pass {name: table}")
    if not metrics:
        raise BadOption("no metric given", hint="e.g. misbinding")
    parts = {}
    for name, t in tables.items():
        missing = {"metric", by, "diff", "diff_low", "diff_high"} - set(t.columns)
        if missing:
            raise BadOption(f"table '{name}' has no column(s) {', '.join(sorted(missing))}",
                            hint=f"pass a comparison's long table grouped by '{by}'")
        sel = t[t["diff"].notna()]
        if role is not None and "role" in sel.columns:
            sel = sel[sel["role"] == role]
        parts[name] = sel
    known = set().union(*(set(p["metric"]) for p in parts.values()))
    unknown = [m for m in metrics if m not in known]
    if unknown:
        raise BadOption(f"no differences for metric(s) {', '.join(unknown)}", hint=f"metrics: {', '.join(sorted(known))}")
    if groups is None:
        order: list[str] = []
        for p in parts.values():
            order += [g for g in dict.fromkeys(p[by]) if g not in order]
    else:
        order = list(groups)
    n_rows = len(order)
    fig = _new_figure(width, height or max(1.6, 0.22 * n_rows * max(1, len(parts)) ** 0.5 + 0.9))
    axes = fig.subplots(1, len(metrics), squeeze=False, sharey=True)[0]
    k = len(parts)
    offsets = [(i - (k - 1) / 2) * min(0.25, 0.7 / k) for i in range(k)]
    for ax, metric in zip(axes, metrics):
        ax.axvline(0.0, color="0.5", linewidth=0.6)
        for i, (name, p) in enumerate(parts.items()):
            rows = p[p["metric"] == metric].set_index(by)
            ys, xs, lo, hi = [], [], [], []
            for j, g in enumerate(order):
                if g in rows.index:
                    r = rows.loc[g]
                    ys.append(n_rows - 1 - j - offsets[i])  # the first table on top
                    xs.append(float(r["diff"]))
                    lo.append(float(r["diff"]) - float(r["diff_low"]))
                    hi.append(float(r["diff_high"]) - float(r["diff"]))
            if ys:
                ax.errorbar(xs, ys, xerr=[lo, hi], fmt="o", markersize=3, elinewidth=0.8, capsize=0,
                            color=OKABE_ITO[(i + 4) % len(OKABE_ITO)], label=name)
        ax.set_yticks(range(n_rows), list(reversed(order)))
        ax.set_ylim(-0.6, n_rows - 0.4)
        ax.set_xlabel(f"Δ {metric}")
        _panel(fig, ax)
    if k > 1:
        _legend(fig, axes, k)
    fig.suptitle(f"difference to the baseline, {int(round(ci * 100))} % paired interval", fontsize="medium")
    return fig


__all__ = ["differences_figure"]
