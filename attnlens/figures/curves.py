"""``curves``: a metric against the step, one line per group with a bootstrap interval band."""

from __future__ import annotations

import math
from typing import Sequence

from matplotlib.figure import Figure

from ..errors import BadOption
from .style import OKABE_ITO, _integer_steps, _legend, _metric_label, _new_figure, _panel, _styled, figure_width
from .tables import _draw_curves, _filter, _groups, step_curves


@_styled
def curves_figure(df, metrics: str | Sequence[str], *, role: str | Sequence[str | None] | None = None,
                  by: str = "method", layer: str | None = None, phase: str | None = "sample",
                  tokens: Sequence[str] | None = None,
                  width: str | float = "column", height: float | None = None, n_boot: int = 1000, ci: float = 0.95,
                  seed: int = 0, baseline: str | None = None) -> Figure:
    """Metric vs step, one line per group (``by``) with its ``ci`` bootstrap band over (prompt, seed) units.

    ``baseline`` (e.g. ``"none"``) plots every other group as its paired difference to the baseline (same prompt,
    seed and step) instead, with a zero line: the view to use when the methods' curves lie on top of each other.

    One panel per metric: side by side for up to three metrics, else in rows of two (column width) or four (page
    width), as for the default headline set of ``attnlens figure curves``. ``layer`` defaults to the ``all`` aggregate (``latent`` for the drift),
    ``phase`` to ``sample``; ``role`` is required when a metric has several (e.g. ``jsd``: bound/unbound/entities),
    one for all metrics or a list with one role (or None) per metric.
    """
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    if not metrics:
        raise BadOption("no metric given", hint="--metric jsd")
    roles = [role] * len(metrics) if role is None or isinstance(role, str) else list(role)
    if len(roles) != len(metrics):
        raise BadOption(f"{len(roles)} roles for {len(metrics)} metrics", hint="give one role per metric")
    w = figure_width(width)
    n = len(metrics)
    ncols = n if n <= 3 else (2 if w < 4 else 4)
    nrows = math.ceil(n / ncols)
    fig = _new_figure(w, height or (2.4 if nrows == 1 else 0.5 + 1.9 * nrows))
    grid = fig.subplots(nrows, ncols, squeeze=False)
    axes = grid.ravel()[:n]
    for ax in grid.ravel()[n:]:
        ax.set_axis_off()
    groups_all = _groups(df, by)
    for ax, metric, role in zip(axes, metrics, roles):
        rows = _filter(df, metric, role, layer, phase, tokens)
        curves = step_curves(rows, by=by, n_boot=n_boot, ci=ci, seed=seed, baseline=baseline)
        if baseline is not None:
            ax.axhline(0.0, color=OKABE_ITO[0], linewidth=0.6, linestyle=":")
        _draw_curves(ax, curves, groups_all)
        r = role or (rows["role"].iloc[0] if len(rows) else None)
        ax.set_ylabel(_metric_label(metric, r) + (f" − {baseline}" if baseline else ""))
        ax.set_xlabel("step")
        _integer_steps(ax)
        _panel(fig, ax)
    _legend(fig, axes, len(groups_all))
    return fig
