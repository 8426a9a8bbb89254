"""Paper figures from recorded runs and metric tables: one :class:`FigureSpec`, one :func:`draw`.

``attnlens figure KIND SOURCES ...`` and the dashboard's "Export figure" both build a :class:`FigureSpec` and call
:func:`draw` (or :func:`render`, which also saves), so the same selection gives the same file byte for byte.
One module per figure kind, each a pure function that returns a matplotlib ``Figure``:

* :mod:`.maps` — :func:`maps_figure`: rows = runs (methods) × chosen words, columns = the final image in colour,
  then steps: each word's attention over the run's final image; :func:`word_heatmap_figure`: one word's map over the
  colour image (DAAM's heat map); :func:`word_maps`: the map selection both use.
* :mod:`.curves` — :func:`curves_figure`: a metric against the step, one line per method with a bootstrap band
  (default in the CLI: the headline metrics).
* :mod:`.layers` — :func:`layers_figure`: a layer × step heat map of a metric, one panel per method.
* :mod:`.losses` — :func:`losses_figure`: the guidance loss terms per step, one panel per term.
* :mod:`.differences` — :func:`differences_figure`: paired differences to the baseline with intervals (a forest
  plot) from one or more comparison tables, one panel per metric.
* :mod:`.style` — sizes, palette, fonts and :func:`save_figure` (PDF with TrueType fonts embedded, SVG or 300-dpi
  PNG, byte-for-byte deterministic); :mod:`.tables` — row selection and per-step bootstrap curves.

Figures are built on ``Figure`` objects with their own Agg canvas, never through pyplot: importing or drawing never
changes matplotlib's backend. The Okabe–Ito palette for lines (colour-blind safe), perceptually uniform colour maps
(``viridis`` for heat maps, ``inferno`` for attention over images), sized for a paper column
(``width="column"``, 3.25 in) or page (``"page"``, 6.75 in).
"""

from __future__ import annotations

from .curves import curves_figure
from .differences import differences_figure
from .layers import layer_order, layers_figure, short_layer
from .losses import losses_figure
from .maps import maps_figure, word_heatmap_figure, word_maps
from .spec import FigureSpec, draw, figure_bytes, headline_metrics, render, select_steps
from .style import (  # noqa: F401  (private helpers re-exported for attnlens.testbed.predictive)
    BOOKKEEPING,
    DPI,
    FORMATS,
    HEATMAP_CMAP,
    KINDS,
    LINESTYLES,
    OKABE_ITO,
    OVERLAY_CMAP,
    STYLE,
    WIDTHS,
    _integer_steps,
    _legend,
    _metric_label,
    _new_figure,
    _panel,
    _styled,
    figure_width,
    group_style,
    panel_count,
    save_figure,
)
from .tables import _draw_curves, _filter, _groups, step_curves  # noqa: F401

__all__ = ["BOOKKEEPING", "DPI", "FORMATS", "FigureSpec", "HEATMAP_CMAP", "KINDS", "LINESTYLES", "OKABE_ITO",
           "OVERLAY_CMAP", "STYLE", "WIDTHS", "curves_figure", "differences_figure", "draw", "figure_bytes", "figure_width", "group_style",
           "headline_metrics", "layer_order", "layers_figure", "losses_figure", "maps_figure", "panel_count", "render",
           "save_figure", "select_steps", "short_layer", "step_curves", "word_heatmap_figure", "word_maps"]
