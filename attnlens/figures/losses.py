"""``losses``: the guidance loss terms per step, one panel per term, one line per group."""

from __future__ import annotations

import math
from typing import Sequence

from matplotlib.figure import Figure

from ..analysis import SCALAR_PREFIX
from ..errors import BadOption, EmptySelection, MetricNotFound
from .style import BOOKKEEPING, _integer_steps, _legend, _new_figure, _panel, _styled, figure_width
from .tables import _draw_curves, _groups, step_curves


@_styled
def losses_figure(df, terms: Sequence[str] | None = None, *, by: str = "method", iteration: str = "first",
                  width: str | float = "page", height: float | None = None, n_boot: int = 1000, ci: float = 0.95,
                  seed: int = 0, per_group: bool = True) -> Figure:
    """Guidance loss terms (``scalar/<term>`` rows) per step, with a bootstrap band over (prompt, seed) units.
    ``per_group`` (default): one panel per (group, term), each on its own y axis — the methods' losses differ by
    orders of magnitude (Divide & Bind's beside SynGen's lies flat on a shared axis); else one panel per term with one
    line per group. ``iteration``: ``first`` (the loss of the step's first guidance forward, before refinement),
    ``last`` (after the last refinement pass) or ``mean``. Default terms: every recorded scalar except the
    bookkeeping ones (:data:`BOOKKEEPING`)."""

    if df is None or not len(df):
        raise EmptySelection("the metrics table is empty", hint="analyse runs first: attnlens analyze runs/")
    sc = df[df["metric"].str.startswith(SCALAR_PREFIX)]
    available = sorted(m[len(SCALAR_PREFIX):] for m in sc["metric"].unique())
    if not available:
        raise EmptySelection("no loss terms in the table (only guided runs log them)",
                            hint="record with a guidance method, e.g. attnlens record ... --method syngen")
    if terms is None:
        terms = [t for t in available if t not in BOOKKEEPING]
        terms = sorted(terms, key=lambda t: (t != "loss", t)) or available
    else:
        terms = [t[len(SCALAR_PREFIX):] if t.startswith(SCALAR_PREFIX) else t for t in terms]
        bad = [t for t in terms if t not in available]
        if bad:
            raise MetricNotFound(f"no loss term '{bad[0]}' in the table", hint=f"terms: {', '.join(available)}")
    if iteration not in ("first", "last", "mean"):
        raise BadOption(f"unknown iteration '{iteration}'", hint="first, last or mean")
    groups_all = _groups(df, by)
    panels: list[tuple[str, str | None]] = [(t, None) for t in terms]
    if per_group:  # the (group, term) pairs that have rows, groups in the table's order
        have = sc.groupby([by, "metric"], observed=True).size()
        panels = [(t, g) for g in groups_all for t in terms if have.get((g, SCALAR_PREFIX + t), 0)]
    n = len(panels)
    ncols = min(n, 3 if figure_width(width) > 4 else 2)
    nrows = math.ceil(n / ncols)
    fig = _new_figure(width, height or (0.5 + 1.5 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, (term, group) in enumerate(panels):
        ax = axes[i // ncols][i % ncols]
        rows = sc[sc["metric"] == SCALAR_PREFIX + term]
        if group is not None:
            rows = rows[rows[by] == group]
        if iteration == "first":
            rows = rows[rows["iteration"] == 0]
        elif iteration == "last":
            last = rows.groupby(["run", "step"], observed=True)["iteration"].transform("max")
            rows = rows[rows["iteration"] == last]
        _draw_curves(ax, step_curves(rows, by=by, n_boot=n_boot, ci=ci, seed=seed), groups_all, label_n=False)
        ax.set_title(term if group is None else f"{group}: {term}")
        ax.set_xlabel("step")
        _integer_steps(ax)
        _panel(fig, ax)
    for j in range(n, nrows * ncols):
        axes[j // ncols][j % ncols].set_axis_off()
    _legend(fig, axes.ravel(), len(groups_all))
    return fig
