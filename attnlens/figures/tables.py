"""Selecting a figure's rows from a metrics table and summarising them per step (shared by the kind modules)."""

from __future__ import annotations

import difflib
from typing import Sequence

import numpy as np

from ..analysis import AGGREGATE_ALL, SCALAR_PREFIX
from ..compare import natural_key
from ..errors import BadOption, EmptySelection, MetricNotFound
from .style import group_style


def _filter(df, metric: str, role: str | None, layer: str | None, phase: str | None, tokens: Sequence[str] | None,
            any_layer: bool = False):
    """Rows of one metric; ``role`` is required when the metric has several; ``layer`` defaults to ``all``
    (the drift has its own layer, scalars theirs); ``any_layer`` skips the layer filter."""

    if df is None or not len(df):
        raise EmptySelection("the metrics table is empty", hint="analyse runs first: attnlens analyze runs/")
    rows = df[df["metric"] == metric]
    if not len(rows):

        known = sorted(df["metric"].unique())
        close = difflib.get_close_matches(metric, known, n=3)
        raise MetricNotFound(f"metric '{metric}' is not in the table",
                            hint=(f"did you mean {', '.join(close)}? " if close else "") + f"known: {', '.join(known)}")
    roles = sorted(rows["role"].unique())
    if role is None and len(roles) > 1:
        raise BadOption(f"metric '{metric}' has several roles ({', '.join(roles)})", hint="choose one with --role")
    if role is not None:
        if role not in roles:
            raise MetricNotFound(f"metric '{metric}' has no role '{role}'", hint=f"roles: {', '.join(roles)}")
        rows = rows[rows["role"] == role]
    if metric.startswith(SCALAR_PREFIX):
        layer, phase = None, None
    elif metric.startswith("latent_drift"):
        layer = None
    elif layer is None:
        layer = AGGREGATE_ALL
    if layer is not None and not any_layer:
        if layer not in set(rows["layer"].unique()):
            raise MetricNotFound(f"layer '{layer}' has no '{metric}' rows",
                                hint=f"layers: {', '.join(sorted(rows['layer'].unique()))}")
        rows = rows[rows["layer"] == layer]
    if phase is not None:
        if phase not in set(rows["phase"].unique()):
            raise MetricNotFound(f"phase '{phase}' has no '{metric}' rows",
                                hint=f"phases: {', '.join(sorted(rows['phase'].unique()))}")
        rows = rows[rows["phase"] == phase]
    if tokens:
        rows = rows[rows["token"].isin(list(tokens))]
        if not len(rows):
            raise EmptySelection(f"no '{metric}' rows for tokens {', '.join(tokens)}")
    return rows


def _groups(rows, by: str) -> list[str]:
    """The groups in display order: ``none`` (the baseline, black) first, then in natural order (``i5`` before
    ``i15``). Colours follow this
    order over the whole table, so a method keeps its colour in every figure drawn from the same table."""
    if by not in rows.columns:
        raise BadOption(f"cannot group by '{by}'", hint="use method or variant")

    vals = [str(v) for v in rows[by].unique()]
    return sorted(vals, key=lambda g: (not g.startswith("none"), natural_key(g)))



def step_curves(rows, by: str = "method", n_boot: int = 1000, ci: float = 0.95, seed: int = 0,
                baseline: str | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Per group: ``step``, ``mean``, ``low``, ``high``, ``n`` over (prompt, seed) units (each unit the mean of its
    rows at that step), with a percentile bootstrap over units per step (``numpy.random.default_rng(seed)``).

    With ``baseline`` (a group), every other group's curve is the paired difference group − baseline of the same
    (prompt, seed) unit at the same step (units without a baseline partner are left out); the baseline is omitted.
    """
    def wide_of(g):
        part = rows[rows[by].astype(str) == g]
        return part.groupby(["prompt", "seed", "step"], observed=True)["value"].mean().unstack("step")

    groups = _groups(rows, by)
    base = None
    if baseline is not None:
        if baseline not in groups:
            raise BadOption(f"baseline '{baseline}' has no rows", hint=f"{by} values: {', '.join(groups)}")
        base = wide_of(baseline)
    out = {}
    for g in groups:
        if g == baseline:
            continue
        wide = wide_of(g)
        if base is not None:
            units = wide.index.intersection(base.index)
            steps_ = wide.columns.intersection(base.columns)
            wide = wide.loc[units, steps_] - base.loc[units, steps_]
            if not len(units):
                continue
        v = wide.to_numpy(dtype=np.float64)  # (units, steps), NaN where a unit has no value at a step
        steps = wide.columns.to_numpy()
        with np.errstate(all="ignore"):
            mean = np.nanmean(v, axis=0)
            low, high = mean.copy(), mean.copy()
            if v.shape[0] > 1 and n_boot > 0:
                rng = np.random.default_rng(seed)
                idx = rng.integers(0, v.shape[0], size=(n_boot, v.shape[0]))
                boots = np.nanmean(v[idx], axis=1)
                a = (1 - ci) / 2
                low, high = np.nanquantile(boots, [a, 1 - a], axis=0)
        out[g] = {"step": steps, "mean": mean, "low": low, "high": high, "n": v.shape[0]}
    return out


def _draw_curves(ax, curves: dict[str, dict[str, np.ndarray]], groups_all: list[str], label_n: bool = True) -> None:
    """Bands first, then lines on top, so no band hides another group's line."""
    for g, c in curves.items():
        st = group_style(groups_all.index(g))
        ax.fill_between(c["step"], c["low"], c["high"], color=st["color"], alpha=0.15, linewidth=0)
    for g, c in curves.items():
        st = group_style(groups_all.index(g))
        ax.plot(c["step"], c["mean"], label=f"{g} (n={c['n']})" if label_n else g, **st)
