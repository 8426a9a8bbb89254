"""``layers``: a layer × step heat map of a metric, one panel per group; the UNet layer order and short names."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from ..analysis.layers import _RES_RE
from ..errors import BadOption, EmptySelection
from ..vocab import AGGREGATE_ALL
from .style import HEATMAP_CMAP, _integer_steps, _metric_label, _new_figure, _panel, _styled, figure_width
from .tables import _filter, _groups


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

    rows = _filter(df, metric, role, None, phase, tokens, any_layer=True)
    role = rows["role"].iloc[0]
    rows = rows[~rows["layer"].isin([AGGREGATE_ALL, "latent", "-"]) & ~rows["layer"].str.match(_RES_RE.pattern)]
    if not len(rows):
        raise EmptySelection(f"no per-layer '{metric}' rows", hint="analyse without --layers (or with layer names)")
    gs = _groups(rows, by) if groups is None else list(groups)
    layers = sorted(rows["layer"].unique(), key=layer_order)
    res = rows.groupby("layer", observed=True)["resolution"].first().to_dict()
    steps = np.sort(rows["step"].unique())
    mats = {}
    for g in gs:
        part = rows[rows[by].astype(str) == g]
        if not len(part):
            raise BadOption(f"no rows for {by} '{g}'", hint=f"{by} values: {', '.join(_groups(rows, by))}")
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
