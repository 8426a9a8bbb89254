"""Pure plotting functions of the dashboard: numpy / tables in, images, HTML or plotly figures out (no Streamlit).

The attention overlays follow ``attnlens.figures.maps_figure`` (the exported figure): the token's spatial
distribution p scaled by h·w (1 = uniform attention), ``inferno`` colours on a [min, max] scale with an opacity
growing with the value, over the final image in grey (0.25 + 0.5·grey). On the page the map is sent at its own
resolution as an RGBA PNG and the browser upsamples it smoothly over the grey image (the figure upsamples the values
bilinearly, then colours them: the same picture up to interpolation order): a few hundred pixels per map instead of
full-size images composited on the server. :func:`step_frames` encodes the maps of every step once per selection for
the Compare view's step player, which swaps them in the browser. The curves use the
figures' Okabe–Ito colours in the figures' group order (``none`` first), so a method has the same colour on the
page and in the exported PDF.
"""

from __future__ import annotations

import base64
import io
import math
import re
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from attnlens.figures import group_style

PLOTLY_CONFIG = {"displaylogo": False, "displayModeBar": False}  # exports go through "Export figure"
CELL = 320  # pixels of the final image on the page (the browser fits it to the column width)
RENDER = 160  # pixels of the grey image the maps are drawn over (the browser scales both to the column width)
DASHES = {"-": "solid", "--": "dash", ":": "dot", "-.": "dashdot"}


# ------------------------------------------------------------------------------------------------------ overlays
def scaled_map(m: np.ndarray) -> np.ndarray:
    """p·h·w: the map's spatial distribution times its pixel count (1 = uniform), as in the exported maps figure.
    A map with no mass (or not recorded: NaN) stays NaN."""
    m = np.asarray(m, dtype=np.float64)
    with np.errstate(all="ignore"):
        total = m.sum()
        if not np.isfinite(total) or total <= 0:
            return np.full(m.shape, np.nan)
        return m / total * m.size


def value_range(maps: Sequence[np.ndarray]) -> tuple[float, float]:
    """[min, max] over the finite values of several maps (a constant or empty set gets a unit-wide range)."""
    finite = [m[np.isfinite(m)] for m in maps if m is not None]
    finite = [f for f in finite if f.size]
    if not finite:
        return 0.0, 1.0
    vals = np.concatenate(finite)
    lo, hi = float(vals.min()), float(vals.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return lo, hi


_LUTS: dict[tuple[str, float], np.ndarray] = {}
LEVELS = 1024


def _lut(cmap: str, alpha: float) -> np.ndarray:
    """``(LEVELS, 4)`` uint8: colour (RGB) and opacity of ``LEVELS`` evenly spaced values in [0, 1]."""
    import matplotlib

    key = (cmap, alpha)
    if key not in _LUTS:
        x = np.linspace(0.0, 1.0, LEVELS)
        rgba = np.concatenate([matplotlib.colormaps[cmap](x)[:, :3], (alpha * x)[:, None]], axis=1)
        _LUTS[key] = (rgba * 255 + 0.5).astype(np.uint8)
    return _LUTS[key]


def heat_rgba(m: np.ndarray, vmin: float, vmax: float, *, cmap: str = "inferno", alpha: float = 0.85) -> np.ndarray:
    """``(h, w, 4)`` uint8 at the map's own resolution: colour ``cmap(x)`` and opacity ``alpha·x`` with
    x = (m − vmin)/(vmax − vmin) clipped to [0, 1] — the exported maps figure's overlay rule; NaN is transparent.
    The browser upsamples it (smoothly) over the grey image, so a redraw encodes a few hundred pixels per map."""
    m = np.asarray(m, dtype=np.float64)
    x = (m - vmin) / (vmax - vmin) if vmax > vmin else np.zeros_like(m)
    k = np.clip(np.nan_to_num(x, nan=0.0) * (LEVELS - 1) + 0.5, 0, LEVELS - 1).astype(np.intp)
    out = _lut(cmap, alpha)[k]
    out[~np.isfinite(m), 3] = 0
    return out


def png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 image (grey, RGB or RGBA)."""

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def under_image(image: np.ndarray | None, size: int = RENDER) -> np.ndarray:
    """The layer the maps are drawn over: 0.25 + 0.5·grey of the final image (the exported figure's), uint8
    ``size``×``size`` (mid grey when there is no image)."""

    if image is None:
        grey = np.full((size, size), 0.5)
    else:
        img = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("L")
        grey = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float64) / 255.0
    return ((0.25 + 0.5 * grey) * 255 + 0.5).astype(np.uint8)


def data_uri(data: bytes, mime: str) -> str:

    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def step_frames(maps: Mapping[str, Mapping[int, Sequence[np.ndarray]]], steps: Sequence[int], scale: str = "shared"
                ) -> tuple[dict[str, list[list[str | None] | None]], tuple[float, float]]:
    """What the Compare view's step player shows: the map images of every step, built once per selection.

    ``maps``: per run, its token maps at each step it recorded (``{step: [scaled map per token]}``, as
    :func:`scaled_map` returns them). Returns ``(frames, (lo, hi))``: per run, one entry per step of ``steps`` —
    ``None`` where the run did not record that step (the page dims the cells), else one RGBA PNG data URI per token
    (:func:`heat_rgba` + :func:`png`), ``None`` for a map with no mass — and the shared range, the [min, max] over
    every map of every run *and every step* (so a colour means the same value at every step). With
    ``scale="each"`` each map is coloured on its own [min, max]."""
    shared = value_range([m for by_step in maps.values() for ms in by_step.values() for m in ms])
    out: dict[str, list[list[str | None] | None]] = {}
    for rel, by_step in maps.items():
        frames: list[list[str | None] | None] = []
        for s in steps:
            ms = by_step.get(int(s))
            if ms is None:
                frames.append(None)
                continue
            row: list[str | None] = []
            for m in ms:
                if not np.isfinite(m).any():
                    row.append(None)
                    continue
                lo, hi = shared if scale == "shared" else value_range([m])
                row.append(data_uri(png(heat_rgba(m, lo, hi)), "image/png"))
            frames.append(row)
        out[rel] = frames
    return out, shared


def to_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of an RGB uint8 image (what the page sends; encoded once, not on every redraw)."""

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def upscale_image(image: np.ndarray | None, size: int = CELL) -> np.ndarray:
    """The final image at the overlays' size (nearest neighbour: the pixels of a tiny image stay visible)."""

    if image is None:
        return np.full((size, size, 3), 200, dtype=np.uint8)
    img = Image.fromarray(np.asarray(image, dtype=np.uint8))
    resample = Image.Resampling.NEAREST if img.width < size else Image.Resampling.BILINEAR
    return np.asarray(img.convert("RGB").resize((size, size), resample))


def colorbar(vmin: float, vmax: float, *, width: int = 256, height: int = 12, cmap: str = "inferno",
             ticks: bool = True) -> np.ndarray:
    """A horizontal colour bar (RGB uint8) of the overlay colours from vmin (left) to vmax (right); with ``ticks``
    (default) tick marks and their values are drawn below it (3–6 "nice" values from matplotlib's locator)."""
    import matplotlib

    x = np.linspace(0.0, 1.0, width)[None, :].repeat(height, axis=0)
    bar = (matplotlib.colormaps[cmap](x)[..., :3] * 255).round().astype(np.uint8)
    if not ticks or not (np.isfinite(vmin) and np.isfinite(vmax)) or vmax <= vmin:
        return bar
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    dpi, pad = 100, 12  # pixels of margin each side, so the end labels are not cut
    fig = Figure(figsize=((width + 2 * pad) / dpi, (height + 22) / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((pad / (width + 2 * pad), 20 / (height + 22), width / (width + 2 * pad), height / (height + 22)))
    ax.imshow(bar, extent=(vmin, vmax, 0, 1), aspect="auto")
    ax.set_yticks([])
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
    ax.tick_params(axis="x", labelsize=7, length=3, pad=1)
    ax.set_xlim(vmin, vmax)
    for spine in ax.spines.values():
        spine.set_linewidth(0.5)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


# ------------------------------------------------------------------------------------------------------ plotly
def group_colors(groups: Sequence[str]) -> dict[str, dict[str, str]]:
    """``{group: {"color", "dash"}}`` in the figures' order (``none`` first, then alphabetical) and palette."""

    order = sorted({str(g) for g in groups}, key=lambda g: (not g.startswith("none"), g))
    out = {}
    for i, g in enumerate(order):
        st = group_style(i)
        out[g] = {"color": st["color"], "dash": DASHES.get(st["linestyle"], "solid")}
    return out


def _layout(fig, *, height: int, title: str | None = None, legend: bool = True) -> Any:
    fig.update_layout(height=height, margin=dict(l=50, r=20, t=60 if (title or legend) else 30, b=40), title=title,
                      showlegend=legend, legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0),
                      template="plotly_white", font=dict(size=12))
    fig.update_annotations(font_size=12)  # subplot titles
    return fig


def curves_plot(curves: Mapping[str, Mapping[str, np.ndarray]], *, ylabel: str, step: int | None = None,
                colors: Mapping[str, Mapping[str, str]] | None = None, height: int = 320):
    """Metric vs step, one line per group with its interval band (``attnlens.figures.step_curves`` output);
    a dotted vertical line marks ``step``."""
    import plotly.graph_objects as go

    colors = colors or group_colors(list(curves))
    fig = go.Figure()
    for g, c in curves.items():
        st = colors.get(g, {"color": "#444444", "dash": "solid"})
        x = np.asarray(c["step"]).tolist()
        low, high = np.asarray(c["low"], dtype=float), np.asarray(c["high"], dtype=float)
        if int(c.get("n", 1)) > 1 and np.isfinite(low).any():
            fig.add_trace(go.Scatter(x=x + x[::-1], y=high.tolist() + low[::-1].tolist(), fill="toself",
                                     fillcolor=_rgba(st["color"], 0.18), line=dict(width=0), hoverinfo="skip",
                                     showlegend=False, name=f"{g} interval"))
        fig.add_trace(go.Scatter(x=x, y=np.asarray(c["mean"], dtype=float).tolist(), mode="lines+markers", name=g,
                                 line=dict(color=st["color"], dash=st["dash"], width=2), marker=dict(size=5)))
    if step is not None:
        fig.add_vline(x=step, line=dict(color="#888888", dash="dot", width=1))
    fig.update_xaxes(title_text="step", dtick=1 if _n_steps(curves) <= 12 else None)
    fig.update_yaxes(title_text=ylabel)
    return _layout(fig, height=height)


def subplot_axes(fig: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``[(xref, yref)]`` of every subplot of a figure dict (``fig.to_dict()``): ``("x", "y")``, ``("x2", "y2")``..."""

    layout = fig.get("layout", {})
    out = []
    for k in sorted(layout, key=lambda k: int(k[5:] or 1) if re.fullmatch(r"xaxis\d*", k) else 0):
        m = re.fullmatch(r"xaxis(\d*)", k)
        if m:
            out.append(("x" + m.group(1), layout[k].get("anchor") or ("y" + m.group(1))))
    return out or [("x", "y")]


def mark_step(fig: Mapping[str, Any], step: int | None, *, color: str = "#888888"):
    """A plotly Figure of ``fig`` (a figure dict, e.g. a cached ``to_dict()``) with a dotted vertical line at
    ``step`` in every subplot. ``fig`` is not modified; the new figure is built without re-validating the dict
    (it came from a validated figure), which is what keeps a slider move cheap."""
    import plotly.graph_objects as go

    layout = dict(fig.get("layout", {}))
    shapes = list(layout.get("shapes", ()))
    if step is not None:
        for xref, yref in subplot_axes(fig):
            shapes.append({"type": "line", "xref": xref, "yref": f"{yref} domain", "x0": step, "x1": step,
                           "y0": 0, "y1": 1, "line": {"color": color, "dash": "dot", "width": 1}})
    layout["shapes"] = shapes
    d = {"data": fig.get("data", []), "layout": layout}
    try:
        return go.Figure(d, _validate=False)  # plotly's own switch; the dict is already valid
    except TypeError:  # a plotly without it: validate (slower, same figure)
        return go.Figure(d)


def _n_steps(curves) -> int:
    return max((len(c["step"]) for c in curves.values()), default=0)


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def heatmap_panels(panels: Mapping[str, tuple[Sequence[str], Sequence[int], np.ndarray]], *, label: str,
                   row_labels: Mapping[str, str] | None = None, step: int | None = None, height: int | None = None):
    """Layer × step heat maps, one panel per group, one shared colour scale (viridis, as the exported figure).
    ``panels``: ``{group: (layers, steps, matrix)}``."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(panels)
    n = max(1, len(names))
    finite = [m[np.isfinite(m)] for _, _, m in panels.values() if m.size]
    finite = [f for f in finite if f.size]
    vals = np.concatenate(finite) if finite else np.array([0.0, 1.0])
    zmin, zmax = float(vals.min()), float(vals.max())
    fig = make_subplots(rows=1, cols=n, subplot_titles=names or [""], shared_yaxes=True, horizontal_spacing=0.015)
    n_layers = 1
    for i, g in enumerate(names):
        layers, steps, m = panels[g]
        n_layers = max(n_layers, len(layers))
        y = [(row_labels or {}).get(x, x) for x in layers]
        fig.add_trace(go.Heatmap(z=np.where(np.isfinite(m), m, None).tolist(), x=list(map(int, steps)), y=y,
                                 zmin=zmin, zmax=zmax, colorscale="Viridis", showscale=(i == n - 1),
                                 colorbar=dict(title=dict(text=label, side="right"), thickness=12),
                                 hovertemplate="%{y}<br>step %{x}<br>%{z:.4g}<extra>" + g + "</extra>"),
                      row=1, col=i + 1)
        if step is not None:
            fig.add_vline(x=step, line=dict(color="white", dash="dot", width=1), row=1, col=i + 1)
    fig.update_yaxes(autorange="reversed")
    n_steps = max((len(s) for _, s, _ in panels.values()), default=0)
    fig.update_xaxes(title_text="step", dtick=1 if n_steps <= 12 else None)
    return _layout(fig, height=height or (120 + 22 * n_layers), legend=False)


def losses_plot(terms: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]], *, step: int | None = None,
                colors: Mapping[str, Mapping[str, str]] | None = None, height_per_row: int = 240,
                per_group: bool = True):
    """Guidance loss terms per step (``{term: step_curves output}``). ``per_group`` (default): one panel per
    (method, term), each with its own y axis — the methods' losses differ by orders of magnitude, and on a shared
    axis the smaller ones lie flat on zero; else one panel per term, one line per group."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if per_group:
        terms = {f"{g}: {t}": {g: cur} for t, by_group in terms.items() for g, cur in by_group.items()}
        terms = dict(sorted(terms.items(), key=lambda kv: kv[0].split(": ")[0]))
    names = list(terms)
    ncols = min(3, max(1, len(names)))
    nrows = max(1, math.ceil(len(names) / ncols))
    fig = make_subplots(rows=nrows, cols=ncols, subplot_titles=names or [""],
                        vertical_spacing=0.22 if nrows > 1 else 0.1, horizontal_spacing=0.08)
    groups = sorted({g for t in terms.values() for g in t})
    colors = colors or group_colors(groups)
    shown = set()
    for i, term in enumerate(names):
        r, c = i // ncols + 1, i % ncols + 1
        for g, cur in terms[term].items():
            st = colors.get(g, {"color": "#444444", "dash": "solid"})
            fig.add_trace(go.Scatter(x=np.asarray(cur["step"]).tolist(), y=np.asarray(cur["mean"], float).tolist(),
                                     mode="lines+markers", name=g, legendgroup=g, showlegend=g not in shown,
                                     line=dict(color=st["color"], dash=st["dash"], width=2), marker=dict(size=5)),
                          row=r, col=c)
            shown.add(g)
        if step is not None:
            fig.add_vline(x=step, line=dict(color="#888888", dash="dot", width=1), row=r, col=c)
    n_steps = max((len(c["step"]) for t in terms.values() for c in t.values()), default=0)
    fig.update_xaxes(title_text="step", dtick=1 if n_steps <= 12 else None)
    _layout(fig, height=80 + height_per_row * nrows)
    fig.update_layout(legend=dict(orientation="v", yanchor="top", y=1.0, x=1.02), margin=dict(t=40, r=10))
    return fig


__all__ = ["CELL", "PLOTLY_CONFIG", "RENDER", "colorbar", "curves_plot", "data_uri", "group_colors",
           "heat_rgba", "heatmap_panels", "losses_plot", "mark_step", "png", "scaled_map",
           "subplot_axes", "to_jpeg", "under_image", "upscale_image", "value_range"]
