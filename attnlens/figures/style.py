"""The house style of every attnlens figure: sizes, palette, fonts, panels, legends, and deterministic saving.

Figures are built on :class:`matplotlib.figure.Figure` objects with their own Agg canvas, never through pyplot, so
importing or drawing never changes matplotlib's global backend or pyplot state. They show themselves in Jupyter as
PNG (:class:`InlineFigure`), with or without ``%matplotlib inline``.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.cm  # noqa: F401  (matplotlib.cm.ScalarMappable in the maps figure)
import matplotlib.colors  # noqa: F401
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..errors import BadOption

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
            raise BadOption(f"unknown width '{width}'", hint="use column, page or inches (e.g. 5)") from None
    w = float(width)
    if not 0.5 <= w <= 100:  # matplotlib refuses ≤ 0, nan and inf; a figure wider than 100 in is a typo
        raise BadOption(f"figure width must be between 0.5 and 100 inches, got {width}",
                        hint="use column, page or inches (e.g. 5)")
    return w




#: dots per inch of a figure shown in a notebook (a page-wide figure is about 800 pixels wide)
INLINE_DPI = 120


class InlineFigure(Figure):
    """A matplotlib ``Figure`` that shows itself in Jupyter: IPython displays any object with ``_repr_png_``, so a
    figure made here appears inline when it is a cell's value, without pyplot or an inline backend (with one, the
    backend's own PNG printer is used). Everything else is the plain ``Figure``."""

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        with matplotlib.rc_context(STYLE):
            self.savefig(buf, format="png", dpi=INLINE_DPI)
        return buf.getvalue()


def _new_figure(width: str | float, height: float) -> Figure:
    with matplotlib.rc_context(STYLE):
        fig = InlineFigure(figsize=(figure_width(width), height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # its own canvas: no pyplot, no global backend
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


def _metric_label(metric: str, role: str | None) -> str:
    return f"{metric} [{role}]" if role else metric

def save_figure(fig: Figure, path: str | Path, dpi: int = DPI) -> Path:
    """Save deterministically: PDF (vector, TrueType fonts embedded, no creation date), SVG (fixed hash salt, no
    date) or PNG (``dpi``, default 300). The format comes from the suffix. The figure keeps its size exactly."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise BadOption(f"cannot write '{path.name}': unknown figure format '{path.suffix}'",
                        hint=f"use one of: {', '.join('.' + f for f in FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"pdf": {"CreationDate": None, "ModDate": None, "Creator": "attnlens", "Producer": None},
                "svg": {"Date": None, "Creator": "attnlens"},
                "png": {"Software": "attnlens"}}[fmt]
    with matplotlib.rc_context(STYLE):
        fig.savefig(path, format=fmt, dpi=dpi, metadata=metadata)
    return path


__all__ = ["BOOKKEEPING", "DPI", "FORMATS", "HEATMAP_CMAP", "KINDS", "LINESTYLES", "OKABE_ITO", "OVERLAY_CMAP",
           "STYLE", "WIDTHS", "figure_width", "group_style", "panel_count", "save_figure"]
