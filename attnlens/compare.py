"""Paired comparisons of methods (or any grouping) on (prompt, seed) units, with bootstrap intervals.

Procedure (``docs/analysis.md``):

1. From a metrics table (``attnlens.analysis``), keep the selected metrics, roles, layers, phase and steps.
2. **Aggregate per unit first**: one value per (group, prompt, seed, metric, role) = the mean over the selected
   steps, layers, tokens or pairs, iterations (and samples) — every row of a unit has the same weight.
3. **Pair**: for each (metric, role), keep the (prompt, seed) units that every group has (a unit missing in one
   group, or NaN there, is dropped from all of them, and counted in ``dropped``).
4. **Bootstrap**: resample the units with replacement ``n_boot`` times (default 2000) with
   ``numpy.random.default_rng(seed)`` (default 0, drawn afresh for every (metric, role), so adding a metric never
   changes another's interval); the same resampled units are used for every group, so differences are paired.
   Intervals are percentile intervals (default 95 %). ``diff`` = group − baseline, per unit, then the same.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .analysis import AGGREGATE_ALL, HEADLINE, METRIC_INFO, SCALAR_PREFIX
from .errors import BadOption, EmptySelection, MetricNotFound, NotFoundError
from .report import fmt
from .selection import step_filter

UNIT = ("prompt", "seed")


def natural_key(text: str) -> list:
    """Sort key that orders numbers inside names by value: ``syngen-i5`` before ``syngen-i15``."""

    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", str(text)) if t]
NON_MAP_LAYERS = ("latent", "-")


#: below this many paired (prompt, seed) units a comparison says its intervals are not to be trusted: the
#: percentile bootstrap of a mean under-covers badly at small n (at n = 3 a nominal 95 % interval covers far less)
SMALL_N = 10


@dataclass
class Comparison:
    """The result of :func:`compare`.

    ``table``: one row per (metric, role, group) with ``n`` units, ``mean``, ``low``, ``high`` and, for groups other
    than the baseline, ``diff``, ``diff_low``, ``diff_high`` (group − baseline); ``higher_is`` from the metric
    registry. ``units``: the per-unit values (group, prompt, seed, metric, role, value) the statistics come from.
    """

    table: Any
    units: Any
    by: str
    baseline: str
    groups: list[str]
    n_boot: int
    ci: float
    seed: int
    selection: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------------ selection
def select_rows(df, *, metrics: Sequence[str] | None = None, roles: Sequence[str] | None = None,
                layers: Sequence[str] | None = None, phase: str | None = "sample", steps: Any = None,
                tokens: Sequence[str] | None = None):
    """Filter a metrics table. ``metrics=None`` keeps the headline (metric, role) pairs of
    :data:`attnlens.analysis.HEADLINE`; ``layers=None`` keeps the ``all`` aggregate (trajectory and scalar rows
    have their own layer, ``latent`` / ``-``, and are kept whatever ``layers`` says); ``phase`` applies to map rows
    (scalars are always phase ``guidance``); ``steps`` takes the ``analyze`` syntax (``0:25``, ``0,10,20``)."""

    if df is None or not len(df):
        raise EmptySelection("the metrics table is empty", hint="analyse some runs first: attnlens analyze runs/")
    known_metrics = set(df["metric"].unique())
    if metrics is None:
        pairs = [(m, r) for m, r in HEADLINE if m in known_metrics]
        keep = np.zeros(len(df), dtype=bool)
        for m, r in pairs:
            keep |= ((df["metric"] == m) & (df["role"] == r)).to_numpy()
        out = df[keep]
    else:
        names = []
        for raw in metrics:
            names += [x.strip() for x in str(raw).split(",") if x.strip()]
        missing = [m for m in names if m not in known_metrics]
        if missing:

            close = difflib.get_close_matches(missing[0], sorted(known_metrics), n=3)
            raise MetricNotFound(f"metric '{missing[0]}' is not in the table",
                                hint=(f"did you mean {', '.join(close)}? " if close else "")
                                + f"the table has: {', '.join(sorted(known_metrics))}")
        out = df[df["metric"].isin(names)]
    if roles:
        bad = [r for r in roles if r not in set(out["role"].unique())]
        if bad:
            raise EmptySelection(f"role '{bad[0]}' has no rows for the selected metrics",
                                hint=f"roles present: {', '.join(sorted(out['role'].unique()))}")
        out = out[out["role"].isin(list(roles))]
    map_rows = ~out["layer"].isin(NON_MAP_LAYERS)
    lay = [AGGREGATE_ALL] if layers is None else [str(x) for x in layers]
    if layers is not None:
        present = set(out.loc[map_rows, "layer"].unique())
        bad = [x for x in lay if x not in present]
        if bad and map_rows.any():
            raise NotFoundError(f"layer '{bad[0]}' is not in the table",
                                hint=f"layers present: {', '.join(sorted(present))}")
    keep = ~map_rows | out["layer"].isin(lay)
    if phase is not None:
        keep &= ~map_rows | (out["phase"] == phase)
    out = out[keep]
    if steps is not None:
        ok = step_filter(steps)
        out = out[out["step"].map(ok).astype(bool)]
    if tokens:
        out = out[out["token"].isin(list(tokens))]
    if not len(out):
        raise EmptySelection("no rows left after the selection",
                            hint="check --metric/--role/--layers/--phase/--steps against 'attnlens analyze' output")
    return out


def unit_values(df, by: str = "method"):
    """One value per (group, prompt, seed, metric, role): the mean of the selected rows of that unit."""
    if by not in df.columns:
        raise BadOption(f"cannot group by '{by}'", hint="use a column of the table, e.g. method or variant")
    if by in UNIT:
        raise BadOption(f"cannot group by '{by}': runs are paired on (prompt, seed)",
                            hint="group by method or variant")
    g = df.groupby([by, *UNIT, "metric", "role"], observed=True, sort=True)["value"].mean()
    out = g.reset_index().rename(columns={by: "group"})
    out["group"] = out["group"].astype(str)
    return out


# ------------------------------------------------------------------------------------------------------ statistics
def bootstrap_means(values: np.ndarray, n_boot: int = 2000, ci: float = 0.95, seed: int = 0) -> dict[str, np.ndarray]:
    """Mean and percentile interval of the column means of ``values`` (units × columns), resampling rows (units)
    with replacement; the same resampled rows for every column (paired). Returns ``mean``, ``low``, ``high``."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[:, None]
    n = v.shape[0]
    mean = v.mean(axis=0)
    if n < 2 or n_boot < 1:
        return {"mean": mean, "low": mean.copy(), "high": mean.copy()}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    boots = v[idx].mean(axis=1)  # (n_boot, columns)
    alpha = (1.0 - ci) / 2.0
    low, high = np.quantile(boots, [alpha, 1.0 - alpha], axis=0)
    return {"mean": mean, "low": low, "high": high}


def compare(df, *, by: str = "method", baseline: str | None = None, metrics: Sequence[str] | None = None,
            roles: Sequence[str] | None = None, layers: Sequence[str] | None = None, phase: str | None = "sample",
            steps: Any = None, tokens: Sequence[str] | None = None, n_boot: int = 2000, ci: float = 0.95,
            seed: int = 0) -> Comparison:
    """Compare groups (``by``, default ``method``) paired on (prompt, seed) units.

    Args:
        df: a metrics table (``attnlens.analysis.analyze_runs`` / ``load_table``).
        baseline: the group differences are taken against (default ``none`` if present, else the first group).
        metrics, roles, layers, phase, steps, tokens: the selection (:func:`select_rows`).
        n_boot, ci, seed: bootstrap resamples, interval coverage, RNG seed.

    Examples::

        >>> import attnlens
        >>> from attnlens.analysis import load_table
        >>> pipe = attnlens.load_pipeline("attnlens-tiny")
        >>> for method in ("none", "syngen"):
        ...     _ = attnlens.sample(pipe, "a red crown", method=method, out=f"runs/{method}", num_inference_steps=4)
        >>> c = compare(load_table("runs/"), by="method", metrics=["jsd"], roles=["bound"])
        >>> print(to_markdown(c))                                                             # doctest: +ELLIPSIS
        | method | jsd [bound] |
        |---|---:|
        | none (baseline) | ... |
        | syngen | ... |
        | Δ syngen − none | ... |
        <BLANKLINE>
        Mean and 95% paired bootstrap interval, n = 1 (prompt, seed) units ...
    """
    import pandas as pd


    if not 0.0 < ci < 1.0:
        raise BadOption(f"--ci must be between 0 and 1, got {ci}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise BadOption(f"--n-boot must be a positive number of bootstrap resamples, got {n_boot!r}",
                        hint="e.g. --n-boot 2000")
    rows = select_rows(df, metrics=metrics, roles=roles, layers=layers, phase=phase, steps=steps, tokens=tokens)
    units = unit_values(rows, by=by)
    groups = sorted(units["group"].unique(), key=natural_key)
    if baseline is None:
        baseline = "none" if "none" in groups else groups[0]
    elif baseline not in groups:

        close = difflib.get_close_matches(baseline, groups, n=3)
        raise NotFoundError(f"baseline '{baseline}' is not a {by} in the table",
                            hint=f"{by} values: {', '.join(groups)}"
                            + (f" (did you mean {close[0]}?)" if close else ""))
    notes: list[str] = []
    out = []
    for (metric, role), part in units.groupby(["metric", "role"], sort=True):
        wide = part.pivot_table(index=list(UNIT), columns="group", values="value", aggfunc="mean")
        present = [g for g in groups if g in wide.columns]
        wide = wide[present]
        complete = wide.dropna(how="any")
        dropped = len(wide) - len(complete)
        if dropped:
            notes.append(f"{metric} [{role}]: {dropped} (prompt, seed) unit(s) not present in every {by}; dropped")
        if not len(complete):
            notes.append(f"{metric} [{role}]: no (prompt, seed) unit shared by every {by}; skipped")
            continue
        v = complete.to_numpy()
        stats = bootstrap_means(v, n_boot=n_boot, ci=ci, seed=seed)
        diffs = None
        if baseline in present:
            b = present.index(baseline)
            diffs = bootstrap_means(v - v[:, [b]], n_boot=n_boot, ci=ci, seed=seed)
        info = METRIC_INFO.get(metric if not metric.startswith(SCALAR_PREFIX) else "", {})
        for j, g in enumerate(present):
            row = {"metric": metric, "role": role, "group": g, "n": len(complete), "dropped": dropped,
                   "mean": stats["mean"][j], "low": stats["low"][j], "high": stats["high"][j],
                   "diff": math.nan, "diff_low": math.nan, "diff_high": math.nan,
                   "higher_is": info.get("higher_is", "n/a")}
            if diffs is not None and g != baseline:
                row.update(diff=diffs["mean"][j], diff_low=diffs["low"][j], diff_high=diffs["high"][j])
            out.append(row)
    table = pd.DataFrame(out, columns=["metric", "role", "group", "n", "dropped", "mean", "low", "high", "diff",
                                       "diff_low", "diff_high", "higher_is"])
    if len(table) and int(table["n"].min()) < 2:
        notes.append("fewer than 2 (prompt, seed) units for some metric: its interval is just the mean")
    elif len(table) and int(table["n"].min()) < SMALL_N:
        notes.append(f"only {int(table['n'].min())} paired (prompt, seed) units for some metric: a bootstrap interval "
                     f"from fewer than {SMALL_N} is too narrow to trust (record more seeds or prompts)")
    selection = {"metrics": list(metrics) if metrics else "headline", "roles": list(roles) if roles else "all",
                 "layers": list(layers) if layers else ["all"], "phase": phase, "steps": steps,
                 "tokens": list(tokens) if tokens else "all"}
    return Comparison(table=table, units=units, by=by, baseline=baseline, groups=groups, n_boot=n_boot, ci=ci,
                      seed=seed, selection=selection, notes=notes)


# ------------------------------------------------------------------------------------------------------ rendering
def _cell(mean: float, low: float, high: float) -> str:
    return f"{fmt(mean)} [{fmt(low)}, {fmt(high)}]"


def wide_rows(c: Comparison) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the paper layout: one column per (metric, role) ("jsd [bound]"), one row per group
    ("mean [low, high]"), then one row per non-baseline group with its paired difference to the baseline
    ("Δ syngen − none")."""
    keys = [k for k, _ in c.table.groupby(["metric", "role"], sort=True)]
    header = [c.by] + [f"{m} [{r}]" for m, r in keys]
    cells = {(r.metric, r.role, r.group): r for r in c.table.itertuples()}
    rows = []
    for g in c.groups:
        row = [g + (" (baseline)" if g == c.baseline else "")]
        for m, r in keys:
            x = cells.get((m, r, g))
            row.append(_cell(x.mean, x.low, x.high) if x is not None else "–")
        rows.append(row)
    for g in c.groups:
        if g == c.baseline:
            continue
        row = [f"Δ {g} − {c.baseline}"]
        for m, r in keys:
            x = cells.get((m, r, g))
            ok = x is not None and isinstance(x.diff, float) and math.isfinite(x.diff)
            row.append(_cell(x.diff, x.diff_low, x.diff_high) if ok else "–")
        rows.append(row)
    return header, rows


def units_line(c: Comparison) -> str:
    n = sorted({int(v) for v in c.table["n"]}) if len(c.table) else [0]
    return f"n = {n[0]} (prompt, seed) units" if len(n) == 1 else f"n = {n[0]}–{n[-1]} (prompt, seed) units"


def caption(c: Comparison) -> str:
    sel = c.selection
    return (f"Mean and {c.ci:.0%} paired bootstrap interval, {units_line(c)} ({c.n_boot} resamples, "
            f"seed {c.seed}); Δ = {c.by} − {c.baseline} per unit. Layers {', '.join(sel.get('layers', []))}, "
            f"phase {sel.get('phase')}, steps {sel.get('steps') or 'all'}.")


def to_frame(c: Comparison):
    """The long table (one row per metric, role, group)."""
    return c.table.copy()


def to_csv(c: Comparison) -> str:
    """The long table as CSV (full precision)."""
    return c.table.rename(columns={"group": c.by}).to_csv(index=False, float_format="%.6g")


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(c: Comparison) -> str:
    """The wide table as GitHub Markdown, with a caption line."""
    header, rows = wide_rows(c)
    lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(_md_escape(x) for x in r) + " |" for r in rows]
    return "\n".join(lines) + "\n\n" + caption(c) + "\n"


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    out = "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))
    return out.replace("Δ", r"$\Delta$").replace("−", "--").replace("–", "--").replace("∞", r"$\infty$")


def to_latex(c: Comparison) -> str:
    """The wide table as a LaTeX ``tabular`` with booktabs rules (``\\usepackage{booktabs}``), in a ``table``
    float with the caption."""
    header, rows = wide_rows(c)
    cols = "l" + "r" * (len(header) - 1)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\begin{{tabular}}{{{cols}}}", r"\toprule",
             " & ".join(latex_escape(h) for h in header) + r" \\", r"\midrule"]
    n_groups = len(c.groups)
    for i, r in enumerate(rows):
        if i == n_groups and i < len(rows):
            lines.append(r"\midrule")
        lines.append(" & ".join(latex_escape(x) for x in r) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{latex_escape(caption(c))}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_rich(c: Comparison):
    """The wide table as a ``rich.table.Table`` (for the terminal)."""

    header, rows = wide_rows(c)
    t = Table(title=Text(f"{c.by}: paired on (prompt, seed), baseline {c.baseline}"), caption=Text(caption(c)),
              show_lines=False, header_style="bold")
    for i, h in enumerate(header):
        t.add_column(Text(h), justify="left" if i == 0 else "right", overflow="fold")
    for i, r in enumerate(rows):  # Text: "[bound]" is data, not rich markup
        t.add_row(*(Text(x) for x in r), end_section=(i == len(c.groups) - 1))
    return t


FORMATS = ("table", "csv", "markdown", "latex")
SUFFIXES = {".csv": "csv", ".md": "markdown", ".markdown": "markdown", ".tex": "latex", ".txt": "table"}


def render(c: Comparison, fmt_name: str) -> str:
    """``csv``, ``markdown`` or ``latex`` text; ``table`` gives the plain-text terminal rendering."""
    if fmt_name == "csv":
        return to_csv(c)
    if fmt_name == "markdown":
        return to_markdown(c)
    if fmt_name == "latex":
        return to_latex(c)
    if fmt_name == "table":

        console = Console(width=200, force_terminal=False, highlight=False)
        with console.capture() as cap:
            console.print(to_rich(c))
        return cap.get()
    raise BadOption(f"unknown format '{fmt_name}'", hint=f"choose one of: {', '.join(FORMATS)}")


__all__ = ["Comparison", "FORMATS", "bootstrap_means", "caption", "compare", "fmt", "latex_escape", "render",
           "select_rows", "to_csv", "to_frame", "to_latex", "to_markdown", "to_rich", "unit_values", "wide_rows"]
