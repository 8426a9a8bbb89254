"""Paper figures from recorded runs and metric tables: pure functions that return a matplotlib ``Figure``.

* :func:`maps_figure` — rows = runs (methods) × chosen words, columns = steps: each word's attention over the
  run's final image.
* :func:`curves_figure` — a metric against the step, one line per method with a bootstrap interval band.
* :func:`layers_figure` — a layer × step heat map of a metric, one panel per method.
* :func:`losses_figure` — the guidance loss terms per step, one panel per term, one line per method.
* :func:`save_figure` — PDF (vector, TrueType fonts embedded), SVG or 300-dpi PNG, byte-for-byte deterministic.

Everything uses the ``Agg`` backend (headless), the Okabe–Ito palette for lines (colour-blind safe) and perceptually
uniform colour maps (``viridis`` for heat maps, ``inferno`` for attention over images), and is sized for a paper
column (``width="column"``, 3.25 in) or page (``"page"``, 6.75 in). The dashboard calls the same functions.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg", force=False)  # headless; figures are built on Figure objects, never through pyplot
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .errors import AttnlensError  # noqa: E402

WIDTHS = {"column": 3.25, "page": 6.75}
#: Okabe & Ito (2008), reordered so that the weak yellow comes last; black first (the baseline).
OKABE_ITO = ["#000000", "#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#F0E442"]
LINESTYLES = ["-", "--", ":", "-."]
HEATMAP_CMAP = "viridis"
OVERLAY_CMAP = "inferno"
KINDS = ("maps", "curves", "layers", "losses")
FORMATS = ("pdf", "svg", "png")
DPI = 300
#: scalars that are bookkeeping rather than loss terms (left out of the losses figure unless asked for)
BOOKKEEPING = ("step_size", "update_applied", "refinement_iterations", "nonfinite", "grad_norm")

STYLE: dict[str, Any] = {
    "font.family": "DejaVu Sans",  # ships with matplotlib: the same glyphs on every machine
    "font.size": 7,
    "axes.titlesize": 7,
    "axes.labelsize": 7,
    "xtick.labelsize": 6,
    "ytick.labelsize": 6,
    "legend.fontsize": 6,
    "legend.frameon": False,
    "axes.linewidth": 0.6,
    "lines.linewidth": 1.1,
    "xtick.major.width": 0.5,
    "ytick.major.width": 0.5,
    "xtick.major.size": 2.5,
    "ytick.major.size": 2.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": matplotlib.cycler(color=OKABE_ITO),
    "image.cmap": HEATMAP_CMAP,
    "pdf.fonttype": 42,  # TrueType, embedded (editable text, no Type 3)
    "ps.fonttype": 42,
    "svg.fonttype": "path",
    "svg.hashsalt": "attnlens",  # deterministic ids in SVG
    "savefig.dpi": DPI,
    "figure.dpi": 100,
    "figure.constrained_layout.use": True,
}


def _styled(fn):
    """Build the whole figure inside ``rc_context(STYLE)``: fonts, line widths and legend settings are read when
    each artist is created, so the style must be active for the whole function, not just for saving."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return fn(*args, **kwargs)

    return wrapper


def figure_width(width: str | float) -> float:
    """``"column"`` (3.25 in), ``"page"`` (6.75 in) or a number of inches."""
    if isinstance(width, str):
        if width in WIDTHS:
            return WIDTHS[width]
        try:
            return float(width)
        except ValueError:
            raise AttnlensError(f"unknown width '{width}'", hint="use column, page or inches (e.g. 5)") from None
    return float(width)


def _new_figure(width: str | float, height: float) -> Figure:
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(figure_width(width), height), dpi=100, layout="constrained")
    fig.attnlens_panels = []  # type: ignore[attr-defined]
    return fig


def _panel(fig: Figure, ax) -> Any:
    fig.attnlens_panels.append(ax)  # type: ignore[attr-defined]
    return ax


def panel_count(fig: Figure) -> int:
    """Number of data panels of a figure made here (colour bars and legends are not panels)."""
    return len(getattr(fig, "attnlens_panels", fig.axes))


def group_style(i: int) -> dict[str, Any]:
    """Colour (Okabe–Ito) and, past 8 groups, line style of the i-th group."""
    return {"color": OKABE_ITO[i % len(OKABE_ITO)], "linestyle": LINESTYLES[(i // len(OKABE_ITO)) % len(LINESTYLES)]}


# ------------------------------------------------------------------------------------------------------ tables
def _filter(df, metric: str, role: str | None, layer: str | None, phase: str | None, tokens: Sequence[str] | None,
            any_layer: bool = False):
    """Rows of one metric; ``role`` is required when the metric has several; ``layer`` defaults to ``all``
    (the drift has its own layer, scalars theirs); ``any_layer`` skips the layer filter."""
    from .analysis import AGGREGATE_ALL, SCALAR_PREFIX

    if df is None or not len(df):
        raise AttnlensError("the metrics table is empty", hint="analyse runs first: attnlens analyze runs/")
    rows = df[df["metric"] == metric]
    if not len(rows):
        import difflib

        known = sorted(df["metric"].unique())
        close = difflib.get_close_matches(metric, known, n=3)
        raise AttnlensError(f"metric '{metric}' is not in the table",
                            hint=(f"did you mean {', '.join(close)}? " if close else "") + f"known: {', '.join(known)}")
    roles = sorted(rows["role"].unique())
    if role is None and len(roles) > 1:
        raise AttnlensError(f"metric '{metric}' has several roles ({', '.join(roles)})", hint="choose one with --role")
    if role is not None:
        if role not in roles:
            raise AttnlensError(f"metric '{metric}' has no role '{role}'", hint=f"roles: {', '.join(roles)}")
        rows = rows[rows["role"] == role]
    if metric.startswith(SCALAR_PREFIX):
        layer, phase = None, None
    elif metric.startswith("latent_drift"):
        layer = None
    elif layer is None:
        layer = AGGREGATE_ALL
    if layer is not None and not any_layer:
        if layer not in set(rows["layer"].unique()):
            raise AttnlensError(f"layer '{layer}' has no '{metric}' rows",
                                hint=f"layers: {', '.join(sorted(rows['layer'].unique()))}")
        rows = rows[rows["layer"] == layer]
    if phase is not None:
        if phase not in set(rows["phase"].unique()):
            raise AttnlensError(f"phase '{phase}' has no '{metric}' rows",
                                hint=f"phases: {', '.join(sorted(rows['phase'].unique()))}")
        rows = rows[rows["phase"] == phase]
    if tokens:
        rows = rows[rows["token"].isin(list(tokens))]
        if not len(rows):
            raise AttnlensError(f"no '{metric}' rows for tokens {', '.join(tokens)}")
    return rows


def _groups(rows, by: str) -> list[str]:
    """The groups in display order: ``none`` (the baseline, black) first, then in natural order (``i5`` before
    ``i15``). Colours follow this
    order over the whole table, so a method keeps its colour in every figure drawn from the same table."""
    if by not in rows.columns:
        raise AttnlensError(f"cannot group by '{by}'", hint="use method or variant")
    from .compare import natural_key

    vals = [str(v) for v in rows[by].unique()]
    return sorted(vals, key=lambda g: (not g.startswith("none"), natural_key(g)))


def _legend(fig: Figure, axes, n_groups: int) -> None:
    """One legend for the figure, below the panels (never over the data)."""
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        per_row = 2 if fig.get_figwidth() < 4 else 4
        fig.legend(handles, labels, loc="outside lower center", ncol=max(1, min(len(labels), per_row)),
                   handlelength=1.8, columnspacing=1.2)


def _integer_steps(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))


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
            raise AttnlensError(f"baseline '{baseline}' has no rows", hint=f"{by} values: {', '.join(groups)}")
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


def _metric_label(metric: str, role: str | None) -> str:
    return f"{metric} [{role}]" if role else metric


# ------------------------------------------------------------------------------------------------------ curves
@_styled
def curves_figure(df, metrics: str | Sequence[str], *, role: str | Sequence[str | None] | None = None,
                  by: str = "method", layer: str | None = None, phase: str | None = "sample",
                  tokens: Sequence[str] | None = None,
                  width: str | float = "column", height: float | None = None, n_boot: int = 1000, ci: float = 0.95,
                  seed: int = 0, baseline: str | None = None) -> Figure:
    """Metric vs step, one line per group (``by``) with its ``ci`` bootstrap band over (prompt, seed) units.

    ``baseline`` (e.g. ``"none"``) plots every other group as its paired difference to the baseline (same prompt,
    seed and step) instead, with a zero line: the view to use when the methods' curves lie on top of each other.

    One panel per metric (side by side). ``layer`` defaults to the ``all`` aggregate (``latent`` for the drift),
    ``phase`` to ``sample``; ``role`` is required when a metric has several (e.g. ``jsd``: bound/unbound/entities),
    one for all metrics or a list with one role (or None) per metric.
    """
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    if not metrics:
        raise AttnlensError("no metric given", hint="--metric jsd")
    roles = [role] * len(metrics) if role is None or isinstance(role, str) else list(role)
    if len(roles) != len(metrics):
        raise AttnlensError(f"{len(roles)} roles for {len(metrics)} metrics", hint="give one role per metric")
    w = figure_width(width)
    fig = _new_figure(w, height or 2.4)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
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


# ------------------------------------------------------------------------------------------------------ layers
def short_layer(name: str) -> str:
    """``down_blocks.1.attentions.0.transformer_blocks.0.attn2`` → ``down1.0`` (``mid.0``, ``up3.2``)."""
    parts = name.split(".")
    if parts[0] == "mid_block":
        return f"mid.{parts[2]}" if len(parts) > 2 else "mid"
    if parts[0] in ("down_blocks", "up_blocks") and len(parts) > 3:
        return f"{parts[0][:-7]}{parts[1]}.{parts[3]}"
    return name


def layer_order(name: str) -> tuple:
    """UNet order of a layer path: down blocks, mid block, up blocks, then by the numbers in the path."""
    parts = name.split(".")
    return ({"down_blocks": 0, "mid_block": 1, "up_blocks": 2}.get(parts[0], 3),
            [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts[1:]])


@_styled
def layers_figure(df, metric: str, *, role: str | None = None, by: str = "method", groups: Sequence[str] | None = None,
                  phase: str | None = "sample", tokens: Sequence[str] | None = None, width: str | float = "page",
                  height: float | None = None) -> Figure:
    """Layer × step heat map of ``metric`` (mean over units and tokens), one panel per group, one colour scale.

    Rows are the recorded layers in UNet order (down, mid, up) labelled ``down1.0 (32)`` (block.index and
    resolution); aggregates (``res*``, ``all``) are left out."""
    from .analysis import AGGREGATE_ALL, _RES_RE

    rows = _filter(df, metric, role, None, phase, tokens, any_layer=True)
    role = rows["role"].iloc[0]
    rows = rows[~rows["layer"].isin([AGGREGATE_ALL, "latent", "-"]) & ~rows["layer"].str.match(_RES_RE.pattern)]
    if not len(rows):
        raise AttnlensError(f"no per-layer '{metric}' rows", hint="analyse without --layers (or with layer names)")
    gs = _groups(rows, by) if groups is None else list(groups)
    layers = sorted(rows["layer"].unique(), key=layer_order)
    res = rows.groupby("layer", observed=True)["resolution"].first().to_dict()
    steps = np.sort(rows["step"].unique())
    mats = {}
    for g in gs:
        part = rows[rows[by].astype(str) == g]
        if not len(part):
            raise AttnlensError(f"no rows for {by} '{g}'", hint=f"{by} values: {', '.join(_groups(rows, by))}")
        m = part.groupby(["layer", "step"], observed=True)["value"].mean().unstack("step")
        mats[g] = m.reindex(index=layers, columns=steps).to_numpy(dtype=np.float64)
    finite = np.concatenate([m[np.isfinite(m)] for m in mats.values()])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    n = len(gs)
    ncols = min(n, 3 if figure_width(width) > 4 else 1)
    nrows = math.ceil(n / ncols)
    fig = _new_figure(width, height or (0.5 + nrows * (0.55 + 0.13 * len(layers))))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    im = None
    for i, g in enumerate(gs):
        ax = axes[i // ncols][i % ncols]
        im = ax.imshow(mats[g], aspect="auto", interpolation="nearest", cmap=HEATMAP_CMAP, vmin=vmin, vmax=vmax,
                       extent=(steps[0] - 0.5, steps[-1] + 0.5, len(layers) - 0.5, -0.5))
        ax.set_title(g)
        ax.set_xlabel("step")
        _integer_steps(ax)
        ax.set_yticks(range(len(layers)))
        ax.set_yticklabels([f"{short_layer(x)} ({res[x]})" for x in layers] if i % ncols == 0 else [])
        ax.spines[["top", "right"]].set_visible(True)
        _panel(fig, ax)
    for j in range(n, nrows * ncols):
        axes[j // ncols][j % ncols].set_axis_off()
    if im is not None:
        cb = fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.9, aspect=30)
        cb.set_label(_metric_label(metric, role))
        cb.outline.set_linewidth(0.4)
    return fig


# ------------------------------------------------------------------------------------------------------ losses
@_styled
def losses_figure(df, terms: Sequence[str] | None = None, *, by: str = "method", iteration: str = "first",
                  width: str | float = "page", height: float | None = None, n_boot: int = 1000, ci: float = 0.95,
                  seed: int = 0) -> Figure:
    """Guidance loss terms (``scalar/<term>`` rows) per step: one panel per term, one line per group with a
    bootstrap band over (prompt, seed) units. ``iteration``: ``first`` (the loss of the step's first guidance
    forward, before refinement), ``last`` (after the last refinement pass) or ``mean``. Default terms: every
    recorded scalar except the bookkeeping ones (:data:`BOOKKEEPING`)."""
    from .analysis import SCALAR_PREFIX

    if df is None or not len(df):
        raise AttnlensError("the metrics table is empty", hint="analyse runs first: attnlens analyze runs/")
    sc = df[df["metric"].str.startswith(SCALAR_PREFIX)]
    available = sorted(m[len(SCALAR_PREFIX):] for m in sc["metric"].unique())
    if not available:
        raise AttnlensError("no loss terms in the table (only guided runs log them)",
                            hint="record with a guidance method, e.g. attnlens record ... --method syngen")
    if terms is None:
        terms = [t for t in available if t not in BOOKKEEPING]
        terms = sorted(terms, key=lambda t: (t != "loss", t)) or available
    else:
        terms = [t[len(SCALAR_PREFIX):] if t.startswith(SCALAR_PREFIX) else t for t in terms]
        bad = [t for t in terms if t not in available]
        if bad:
            raise AttnlensError(f"no loss term '{bad[0]}' in the table", hint=f"terms: {', '.join(available)}")
    if iteration not in ("first", "last", "mean"):
        raise AttnlensError(f"unknown iteration '{iteration}'", hint="first, last or mean")
    n = len(terms)
    ncols = min(n, 3 if figure_width(width) > 4 else 2)
    nrows = math.ceil(n / ncols)
    fig = _new_figure(width, height or (0.5 + 1.5 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    groups_all = _groups(df, by)
    for i, term in enumerate(terms):
        ax = axes[i // ncols][i % ncols]
        rows = sc[sc["metric"] == SCALAR_PREFIX + term]
        if iteration == "first":
            rows = rows[rows["iteration"] == 0]
        elif iteration == "last":
            last = rows.groupby(["run", "step"], observed=True)["iteration"].transform("max")
            rows = rows[rows["iteration"] == last]
        _draw_curves(ax, step_curves(rows, by=by, n_boot=n_boot, ci=ci, seed=seed), groups_all, label_n=False)
        ax.set_title(term)
        ax.set_xlabel("step")
        _integer_steps(ax)
        _panel(fig, ax)
    for j in range(n, nrows * ncols):
        axes[j // ncols][j % ncols].set_axis_off()
    _legend(fig, axes.ravel(), len(groups_all))
    return fig


# ------------------------------------------------------------------------------------------------------ maps
def _grey_image(run, sample: int, size: int) -> np.ndarray:
    img = run.image(sample)
    if img is None:
        return np.full((size, size), 0.5)
    from PIL import Image

    try:
        g = img.convert("L").resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(g, dtype=np.float64) / 255.0
    finally:
        img.close()


def _upsample(m: np.ndarray, size: int) -> np.ndarray:
    import torch

    from .maps import resample

    return resample(torch.from_numpy(m), size, mode="bilinear").numpy()


@_styled
def maps_figure(runs: Sequence[Any], tokens: Sequence[str] | None = None, steps: Sequence[int] | None = None, *,
                layer: str = "all", phase: str | Sequence[str] = "sample", sample: int = 0,
                width: str | float = "page", labels: Sequence[str] | None = None, cell_pixels: int = 128,
                alpha: float = 0.85) -> Figure:
    """Attention maps over the final image: rows = runs × ``tokens``, columns = ``steps``.

    Each cell shows the run's final image in grey with the word's spatial distribution p over it (``layer``:
    a layer name or an aggregate, default ``all``; bilinearly upsampled to the image; colour = ``inferno`` of
    p·h·w, i.e. 1 = uniform attention, on one [min, max] scale shared by the whole figure, opacity growing
    with the value).
    ``tokens`` default to the first two analysed words of each run's parse; ``steps`` to five recorded steps
    spread over the run. ``phase`` may be a list with one phase per run: the same run twice with
    ``["guidance", "sample"]`` shows its maps before and after each step's guidance update. ``labels``: one row
    label per run (default: variant and seed).
    """
    import torch

    from .analysis import layer_maps, run_parse, select_tokens, unit_maps, variant_label
    from .store import Run, open_run

    runs = [r if isinstance(r, Run) else open_run(r) for r in runs]
    if not runs:
        raise AttnlensError("no run given", hint="attnlens figure maps RUN [RUN ...]")
    phases = [phase] * len(runs) if isinstance(phase, str) else list(phase)
    if len(phases) != len(runs):
        raise AttnlensError(f"{len(phases)} phases for {len(runs)} runs", hint="give one phase per run")
    recorded = runs[0].recorded_steps(phase=phases[0])
    if not recorded:
        raise AttnlensError(f"{runs[0].path} has no '{phases[0]}' maps")
    if steps is None:
        idx = np.unique(np.linspace(0, len(recorded) - 1, min(5, len(recorded))).round().astype(int))
        steps = [recorded[i] for i in idx]
    steps = list(steps)
    rows_spec = []  # (run, row label, unit map stack (S, h, w))
    for i, (run, phase) in enumerate(zip(runs, phases)):
        have = set(run.recorded_steps(phase=phase))
        missing = [s for s in steps if s not in have]
        if missing:
            raise AttnlensError(f"step {missing[0]} has no '{phase}' maps in {run.path}",
                                hint=f"recorded steps: {min(have)}..{max(have)}" if have else None)
        sel = select_tokens(run_parse(run, sample))
        words = list(tokens) if tokens else [u.label for u in sel.units[:2]]
        if not words:
            raise AttnlensError(f"no word to show for {run.path}", hint="pass --token WORD")
        x = layer_maps(run, layer, steps, phase=phase, sample=sample)  # (S, K, h, w)
        u = unit_maps(x, sel)
        name = labels[i] if labels else f"{variant_label(run.manifest)} · seed {run.manifest.get('seed')}"
        for w in words:
            j = sel.unit(w)
            m = u[:, j]
            p = (m / m.sum(dim=(-2, -1), keepdim=True)) * (m.shape[-2] * m.shape[-1])
            rows_spec.append((run, f"{name}\n{sel.units[j].label}", p.numpy()))
    finite = np.concatenate([r[2][np.isfinite(r[2])] for r in rows_spec])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if vmax <= vmin:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    cmap = matplotlib.colormaps[OVERLAY_CMAP]
    n_rows, n_cols = len(rows_spec), len(steps)
    w = figure_width(width)
    cell = (w - 1.9) / n_cols
    fig = _new_figure(w, 0.45 + cell * n_rows)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    timesteps = runs[0].timesteps() if runs[0].layers else None
    for r, (run, label, stack) in enumerate(rows_spec):
        base = _grey_image(run, sample, cell_pixels)
        for c, s in enumerate(steps):
            ax = axes[r][c]
            m = (_upsample(stack[c], cell_pixels) - vmin) / (vmax - vmin)
            m = np.clip(np.nan_to_num(m, nan=0.0), 0.0, 1.0)
            heat = cmap(m)[..., :3]
            a = (alpha * m)[..., None]
            rgb = (1 - a) * (0.25 + 0.5 * base[..., None]) + a * heat
            ax.imshow(rgb, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ("top", "right", "bottom", "left"):
                ax.spines[side].set_visible(False)
            if r == 0:
                t = f"step {s}"
                if timesteps is not None and s < len(timesteps) and np.isfinite(timesteps[s]):
                    t += f"\nt={int(timesteps[s])}"
                ax.set_title(t)
            if c == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", labelpad=4)
            _panel(fig, ax)
    sm = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(vmin, vmax), cmap=cmap)
    cb = fig.colorbar(sm, ax=axes.ravel().tolist(), shrink=0.8, aspect=25, pad=0.01)
    cb.set_label("attention × h·w (1 = uniform)")
    cb.outline.set_linewidth(0.4)
    return fig


# ------------------------------------------------------------------------------------------------------ saving
def save_figure(fig: Figure, path: str | Path, dpi: int = DPI) -> Path:
    """Save deterministically: PDF (vector, TrueType fonts embedded, no creation date), SVG (fixed hash salt, no
    date) or PNG (``dpi``, default 300). The format comes from the suffix. The figure keeps its size exactly."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise AttnlensError(f"cannot write '{path.name}': unknown figure format '{path.suffix}'",
                            hint=f"use one of: {', '.join('.' + f for f in FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"pdf": {"CreationDate": None, "ModDate": None, "Creator": "attnlens", "Producer": None},
                "svg": {"Date": None, "Creator": "attnlens"},
                "png": {"Software": "attnlens"}}[fmt]
    with matplotlib.rc_context(STYLE):
        fig.savefig(path, format=fmt, dpi=dpi, metadata=metadata)
    return path


__all__ = ["BOOKKEEPING", "DPI", "FORMATS", "HEATMAP_CMAP", "KINDS", "OKABE_ITO", "OVERLAY_CMAP", "STYLE", "WIDTHS",
           "curves_figure", "figure_width", "group_style", "layers_figure", "losses_figure", "maps_figure",
           "panel_count", "save_figure", "short_layer", "step_curves"]
