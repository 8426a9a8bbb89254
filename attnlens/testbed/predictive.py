"""Does an attention metric predict binding? ROC AUC of each metric for per-sample success, with DeLong intervals.

For every group of a metrics table (metric, role, layer, phase, step) each run contributes one score, the mean of
its rows in that group (over tokens or pairs), and one label, whether the evaluator scored its image a success.
The AUC is the probability that a random success scores higher than a random failure (ties count ½):

    AUC = (R₊ − m(m+1)/2) / (m·n)

with R₊ the sum of the mid-ranks of the m successes among all m + n runs. AUC > 0.5: higher values go with
success; AUC < 0.5: lower values do (e.g. the JSD of a bound pair); 0.5: no information. The interval is DeLong's
(DeLong, DeLong & Clarke-Pearson 1988): with the structural components V₁₀(i) = (r_i − r₊_i)/n of each success
and V₀₁(j) = 1 − (r_j − r₋_j)/m of each failure (r: mid-rank among all, r₊ / r₋: among successes / failures),

    Var(AUC) = s²(V₁₀)/m + s²(V₀₁)/n,   interval AUC ± z·√Var, clipped to [0, 1].

Runs recorded with the same (prompt, seed) under different methods are not independent; DeLong's interval treats
runs as independent samples, so it is too narrow when several methods are pooled. :func:`auc_cluster_bootstrap`
(``metric_auc(..., clusters=)``) resamples whole units instead: draw the units with replacement, give each run the
number of times its unit was drawn as a weight, and take the weighted AUC

    AUC_w = Σ_{i success} Σ_{j failure} w_i w_j ([s_i > s_j] + ½[s_i = s_j]) / (Σ_{success} w · Σ_{failure} w);

the interval is the percentile interval of AUC_w over the draws (draws without a success or a failure are skipped).
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Sequence

import numpy as np

from ..errors import AttnlensError
from ..figures import OKABE_ITO, _integer_steps, _new_figure, _panel, _styled, group_style

GROUP = ("metric", "role", "layer", "phase", "step")

#: below this many positives or negatives a DeLong interval is not to be trusted (it can collapse to a point:
#: "1.00 [1.00, 1.00]" at 2 successes and 2 failures); tables built from fewer say so
AUC_MIN_N = 10


def small_n_note(n_pos: int, n_neg: int, minimum: int = AUC_MIN_N) -> str | None:
    """The warning a table of AUCs carries when it rests on fewer than ``minimum`` positives or negatives."""
    if min(n_pos, n_neg) >= minimum:
        return None
    return (f"note: only {n_pos} positive and {n_neg} negative run(s): an AUC and its DeLong interval are not "
            f"reliable below {minimum} of each (an interval can collapse to a point); record more units")


def _midranks(x: np.ndarray) -> np.ndarray:
    """Mid-ranks (1-based, ties averaged) along the last axis."""
    from scipy.stats import rankdata

    return rankdata(x, axis=-1, method="average")


def auc_delong(scores: np.ndarray, labels: np.ndarray, ci: float = 0.95) -> dict[str, np.ndarray]:
    """ROC AUC of ``scores`` (groups × runs, or one row) for boolean ``labels`` (runs), with DeLong's interval.

    Returns arrays (one value per group): ``auc``, ``low``, ``high``, ``se``; ``n_pos`` and ``n_neg``. A group with
    no success or no failure has AUC NaN. Rows must be complete (no NaN); drop or impute before.

    Examples::

        >>> r = auc_delong(np.array([[0.1, 0.4, 0.35, 0.8]]), np.array([0, 0, 1, 1], bool))
        >>> float(r["auc"][0])
        0.75
    """
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    y = np.asarray(labels).astype(bool)
    if x.shape[-1] != y.shape[0]:
        raise AttnlensError(f"{x.shape[-1]} scores per group for {y.shape[0]} labels")
    if np.isnan(x).any():
        raise AttnlensError("scores contain NaN", hint="drop incomplete groups before computing the AUC")
    m, n = int(y.sum()), int((~y).sum())
    g = x.shape[0]
    nan = np.full(g, np.nan)
    if m == 0 or n == 0:
        return {"auc": nan, "low": nan.copy(), "high": nan.copy(), "se": nan.copy(),
                "n_pos": np.full(g, m), "n_neg": np.full(g, n)}
    r_all = _midranks(x)
    pos, neg = x[:, y], x[:, ~y]
    r_pos, r_neg = _midranks(pos), _midranks(neg)
    auc = (r_all[:, y].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    v10 = (r_all[:, y] - r_pos) / n
    v01 = 1.0 - (r_all[:, ~y] - r_neg) / m
    var = (v10.var(axis=1, ddof=1) / m if m > 1 else 0.0) + (v01.var(axis=1, ddof=1) / n if n > 1 else 0.0)
    se = np.sqrt(np.maximum(var, 0.0))
    z = NormalDist().inv_cdf(0.5 + ci / 2.0)
    return {"auc": auc, "low": np.clip(auc - z * se, 0.0, 1.0), "high": np.clip(auc + z * se, 0.0, 1.0), "se": se,
            "n_pos": np.full(g, m), "n_neg": np.full(g, n)}


def auc_cluster_bootstrap(scores: np.ndarray, labels: np.ndarray, clusters: Sequence, *, ci: float = 0.95,
                          n_boot: int = 2000, seed: int = 0) -> dict[str, np.ndarray]:
    """ROC AUC of ``scores`` (groups × runs, or one row) for boolean ``labels`` (runs) with a percentile interval
    from resampling whole ``clusters`` (one id per run, e.g. the run's (prompt, seed) unit) with replacement.

    Returns arrays (one value per group): ``auc`` (on all runs, as :func:`auc_delong`), ``low``, ``high``, ``se``
    (the standard deviation over draws); ``n_pos``, ``n_neg``; ``n_clusters``. The same ``seed`` gives the same
    draws for every group, so two groups' intervals come from the same resamples.

    Examples::

        >>> r = auc_cluster_bootstrap(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], bool), [0, 0, 1, 1])
        >>> float(r["auc"][0]), float(r["low"][0]), float(r["high"][0])
        (0.75, 0.75, 0.75)
    """
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    y = np.asarray(labels).astype(bool)
    if x.shape[-1] != y.shape[0] or len(clusters) != y.shape[0]:
        raise AttnlensError(f"{x.shape[-1]} scores per group, {y.shape[0]} labels and {len(clusters)} cluster ids")
    if np.isnan(x).any():
        raise AttnlensError("scores contain NaN", hint="drop incomplete groups before computing the AUC")
    _, cid = np.unique(np.asarray([str(c) for c in clusters]), return_inverse=True)  # clusters in order of str(id)
    k = int(cid.max()) + 1 if len(cid) else 0
    base = auc_delong(x, y, ci=ci)
    g = x.shape[0]
    out = {"auc": base["auc"], "n_pos": base["n_pos"], "n_neg": base["n_neg"], "n_clusters": np.full(g, k)}
    if not y.any() or y.all():
        nan = np.full(g, np.nan)
        return {**out, "low": nan, "high": nan.copy(), "se": nan.copy()}
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(k, np.full(k, 1.0 / k), size=n_boot).astype(np.float64)  # draws × clusters
    w = counts[:, cid]  # draws × runs: each run weighted by how often its cluster was drawn
    wp, wn = w[:, y], w[:, ~y]
    sp, sn = wp.sum(axis=1), wn.sum(axis=1)
    ok = (sp > 0) & (sn > 0)
    low, high, se = np.empty(g), np.empty(g), np.empty(g)
    for i in range(g):
        pos, neg = x[i, y], x[i, ~y]
        win = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])  # successes × failures
        a = np.einsum("bp,pn,bn->b", wp[ok], win, wn[ok]) / (sp[ok] * sn[ok])
        low[i], high[i] = np.quantile(a, [0.5 - ci / 2.0, 0.5 + ci / 2.0])
        se[i] = a.std(ddof=1) if len(a) > 1 else np.nan
    return {**out, "low": low, "high": high, "se": se}


def metric_auc(df, outcomes, *, label: str = "success", ci: float = 0.95, phase: str | None = "sample",
               runs: Sequence[str] | None = None, clusters=None, n_boot: int = 2000, seed: int = 0):
    """AUC of every (metric, role, layer, phase, step) group of the metrics table ``df`` for the ``label`` column
    of ``outcomes`` (one row per run, column ``run`` matching ``df.run``).

    ``phase`` keeps map rows of one phase (``None``: all); trajectory rows (layer ``latent``) are kept, guidance
    scalars (layer ``-``) are not (they exist for guided runs only). ``runs`` restricts to these runs. Groups
    where some run has no value are dropped. Returns a DataFrame with the group columns, ``auc``, ``low``,
    ``high``, ``se``, ``n_pos``, ``n_neg``, ``informative`` (= |AUC − 0.5|) and ``direction`` (higher or lower
    values go with ``label``).

    ``clusters`` (a mapping run → unit id, e.g. ``(prompt, seed)``) makes ``low``/``high``/``se`` the unit-level
    bootstrap of :func:`auc_cluster_bootstrap` (``n_boot`` draws from ``seed``; column ``n_clusters``) and keeps
    DeLong's as ``delong_low``/``delong_high``. It costs about ``n_boot`` × successes × failures per group: filter
    ``df`` to the groups you report first (e.g. the fixed point).
    """
    import pandas as pd

    if label not in outcomes.columns:
        raise AttnlensError(f"outcomes have no column '{label}'", hint=f"columns: {', '.join(outcomes.columns)}")
    out_runs = outcomes.dropna(subset=[label]).drop_duplicates("run").set_index("run")[label].astype(bool)
    rows = df[df["layer"] != "-"]
    if phase is not None:
        rows = rows[(rows["phase"] == phase) | (rows["layer"] == "latent")]
    keep = out_runs.index if runs is None else out_runs.index.intersection(list(runs))
    rows = rows[rows["run"].isin(keep)]
    if not len(rows):
        raise AttnlensError("no metric rows for the runs with outcomes",
                            hint="analyse the same runs the outcomes were scored on")
    unit = rows.groupby([*GROUP, "run"], observed=True, sort=True)["value"].mean()
    wide = unit.unstack("run")
    wide = wide.dropna(axis=0, how="any")
    cols = [r for r in wide.columns if r in out_runs.index]
    wide = wide[cols]
    if not len(wide):
        raise AttnlensError("no metric has a value for every run", hint="check that every run is complete")
    res = auc_delong(wide.to_numpy(), out_runs.loc[cols].to_numpy(), ci=ci)
    table = wide.index.to_frame(index=False)
    if clusters is not None:
        missing = [r for r in cols if r not in clusters]
        if missing:
            raise AttnlensError(f"{len(missing)} run(s) have no cluster id, e.g. {missing[0]}",
                                hint="give every analysed run its unit, e.g. its (prompt, seed)")
        table["delong_low"], table["delong_high"] = res["low"], res["high"]
        res = auc_cluster_bootstrap(wide.to_numpy(), out_runs.loc[cols].to_numpy(), [clusters[r] for r in cols],
                                    ci=ci, n_boot=n_boot, seed=seed)
        table["n_clusters"] = res["n_clusters"]
    for k in ("auc", "low", "high", "se", "n_pos", "n_neg"):
        table[k] = res[k]
    table["informative"] = (table["auc"] - 0.5).abs()
    table["direction"] = np.where(table["auc"] >= 0.5, "higher", "lower")
    return pd.DataFrame(table)


def best_predictors(auc_table, *, layer: str | None = None, top: int | None = None):
    """Per (metric, role): the (layer, step) with the largest |AUC − 0.5|, plus the AUC on the ``all`` aggregate
    at the last step. Sorted by informativeness. ``layer`` restricts the search to one layer (e.g. ``all``)."""
    import pandas as pd

    t = auc_table.dropna(subset=["auc"])
    if layer is not None:
        t = t[t["layer"] == layer]
    if not len(t):
        return pd.DataFrame(columns=["metric", "role", "layer", "step", "auc", "low", "high", "direction",
                                     "auc_final_all"])
    best = t.loc[t.groupby(["metric", "role"], observed=True)["informative"].idxmax()]
    last = auc_table[auc_table["layer"].isin(["all", "latent"])]
    last = last[last["step"] == last.groupby(["metric", "role"])["step"].transform("max")]
    final = last.set_index(["metric", "role"])["auc"]
    best = best.assign(auc_final_all=[final.get((m, r), np.nan) for m, r in zip(best["metric"], best["role"])])
    best = best.sort_values("informative", ascending=False)
    cols = ["metric", "role", "layer", "step", "auc", "low", "high", "direction", "auc_final_all", "n_pos", "n_neg"]
    best = best[cols].reset_index(drop=True)
    return best.head(top) if top else best


def fixed_point(auc_table, *, layer: str = "all"):
    """Per (metric, role): the AUC at a point fixed before looking — ``layer`` (default the ``all`` aggregate;
    trajectory metrics use their ``latent`` rows) at the last step — with its interval. Unlike
    :func:`best_predictors`, no (layer, step) is chosen after seeing the data, so the intervals are honest (up to the
    independence of the runs). Sorted by |AUC − 0.5|."""
    t = auc_table[auc_table["layer"].isin([layer, "latent"])].dropna(subset=["auc"])
    t = t[t["step"] == t.groupby(["metric", "role"], observed=True)["step"].transform("max")]
    cols = ["metric", "role", "layer", "step", "auc", "low", "high", "direction", "n_pos", "n_neg"]
    return t.sort_values("informative", ascending=False)[cols].reset_index(drop=True)


def auc_figure(auc_table, pairs: Sequence[tuple[str, str]], *, layer: str = "all", width: str | float = "page",
               height: float | None = None, title: str | None = None, label: str = "success"):
    """AUC against the step for each (metric, role) in ``pairs`` on one ``layer`` (default the ``all``
    aggregate; ``latent`` rows are used for trajectory metrics), with DeLong bands and the 0.5 chance line."""

    @_styled
    def build():
        fig = _new_figure(width, height or 2.2)
        ax = fig.subplots(1, 1)
        ax.axhline(0.5, color=OKABE_ITO[0], linewidth=0.6, linestyle=":")
        drawn = 0
        for i, (metric, role) in enumerate(pairs):
            part = auc_table[(auc_table["metric"] == metric) & (auc_table["role"] == role)
                             & auc_table["layer"].isin([layer, "latent"])].sort_values("step")
            if not len(part):
                continue
            st = group_style(i + 1)
            ax.fill_between(part["step"], part["low"], part["high"], color=st["color"], alpha=0.15, linewidth=0)
            ax.plot(part["step"], part["auc"], label=f"{metric} [{role}]", **st)
            drawn += 1
        if not drawn:
            raise AttnlensError("none of the requested metrics is in the AUC table",
                                hint="pass (metric, role) pairs that the analysis produced")
        ax.set_ylim(0.0, 1.0)
        ax.set_xlabel("step")
        ax.set_ylabel(f"AUC for {label} ({layer})")
        if title:
            ax.set_title(title)
        _integer_steps(ax)
        _panel(fig, ax)
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
        return fig

    return build()


def auc_agreement_figure(table, x_model: str, y_model: str, *, labels: Sequence[str] = ("bound", "success"),
                         runs: str = "all", highlight: Sequence[tuple[str, str]] = (), width: str | float = "page",
                         height: float | None = None):
    """Does an AUC analysis carry over from one model to another? One panel per label: each (metric, role) is a
    point at (AUC on ``x_model``, AUC on ``y_model``) with both intervals as error bars. Points in the lower-left or
    upper-right quadrant (split at 0.5) agree in direction; the diagonal is equal AUC. ``table`` is long, with
    columns ``model``, ``label``, ``runs``, ``metric``, ``role``, ``auc``, ``low``, ``high`` (one row per model, label,
    runs and metric, e.g. fixed-point tables of :func:`metric_auc` concatenated with those columns added);
    ``highlight`` names (metric, role) pairs to label on the plot."""
    want = [lab for lab in labels if ((table["label"] == lab) & (table["runs"] == runs)).any()]
    if not want:
        raise AttnlensError(f"no AUC rows for labels {', '.join(labels)} over '{runs}' runs",
                            hint="pass the labels and runs of the table (e.g. label 'bound', runs 'all')")
    for m in (x_model, y_model):
        if m not in set(table["model"]):
            raise AttnlensError(f"no AUC rows for model '{m}'", hint=f"models: {', '.join(sorted(set(table['model'])))}")
    keys = ["metric", "role"]

    @_styled
    def build():
        fig = _new_figure(width, height or 3.0)
        axes = fig.subplots(1, len(want), squeeze=False)[0]
        for ax, lab in zip(axes, want):
            part = table[(table["label"] == lab) & (table["runs"] == runs)]
            both = part[part["model"] == x_model].merge(part[part["model"] == y_model], on=keys, suffixes=("_x", "_y"))
            agree = (both["auc_x"] > 0.5) == (both["auc_y"] > 0.5)
            ax.axhline(0.5, color="0.6", linewidth=0.6, linestyle=":")
            ax.axvline(0.5, color="0.6", linewidth=0.6, linestyle=":")
            ax.plot([0, 1], [0, 1], color="0.8", linewidth=0.6)
            for ok, colour, name in ((True, OKABE_ITO[4], "same direction"), (False, OKABE_ITO[5], "opposite")):
                b = both[agree == ok]
                if not len(b):
                    continue
                ax.errorbar(b["auc_x"], b["auc_y"], xerr=[b["auc_x"] - b["low_x"], b["high_x"] - b["auc_x"]],
                            yerr=[b["auc_y"] - b["low_y"], b["high_y"] - b["auc_y"]], fmt="o", markersize=3,
                            color=colour, elinewidth=0.5, capsize=0, label=f"{name} ({len(b)})")
            for j, (metric, role) in enumerate(highlight):
                hit = both[(both["metric"] == metric) & (both["role"] == role)]
                if len(hit):
                    dx, dy, ha = ((5, 5, "left"), (5, -11, "left"), (5, 14, "left"))[j % 3]  # labels apart
                    ax.annotate(f"{metric} [{role}]", (hit["auc_x"].iloc[0], hit["auc_y"].iloc[0]), fontsize=6,
                                xytext=(dx, dy), textcoords="offset points", ha=ha)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_aspect("equal")
            ax.set_xlabel(f"AUC on {x_model}")
            ax.set_ylabel(f"AUC on {y_model}")
            ax.set_title(f"{lab}, {runs} runs")
            _panel(fig, ax)
        for ax in axes:  # the counts differ per panel: say them in each panel's legend entries, one legend below
            handles, names = ax.get_legend_handles_labels()
            ax.legend(handles, names, loc="upper left", bbox_to_anchor=(0.0, -0.18), ncol=2, frameon=False)
        return fig

    return build()


__all__ = ["auc_agreement_figure", "auc_cluster_bootstrap", "auc_delong", "auc_figure", "best_predictors", "fixed_point", "metric_auc"]
