"""Metric tables: stream recorded runs into one tidy long table (the library side of ``attnlens analyze``).

Modules: :mod:`.tokens` (tokens and pairs from the parse), :mod:`.layers` (layer plans, aggregates, layer reads),
:mod:`.kernels` (vectorised metrics, each naming its :mod:`attnlens.metrics` reference), :mod:`.runs` (discovery,
variants), :mod:`.table` (``Analysis``: the streaming table), :mod:`.parquet` (Parquet I/O). The vocabulary (columns,
metric families, roles, headline metrics) is :mod:`attnlens.vocab`; formatting is :mod:`attnlens.report`.

One row per (run, sample, step, phase, iteration, layer or layer aggregate, token or token pair, metric)::

    run  method  variant  prompt  seed  sample  step  timestep  phase  iteration  layer  resolution  token  role
    metric  value

(column meanings in :data:`COLUMNS_DOC` and ``docs/analysis.md``). The formulas are those of
:mod:`attnlens.metrics` (``docs/metrics.md``); this module chooses *what* they are applied to:

* **Maps.** The recorded probabilities (softmax over the text positions), averaged over heads when all heads were
  recorded (every head the same weight). Computed in float64.
* **Tokens** come from the prompt's parse (the manifest's; for ``none`` runs another analysed run's parse of the
  same prompt, else ``parse_prompt(prompt)``): every
  modifier of a SynGen set (role ``modifier``) and every noun (sets' nouns and the parse's nouns, role ``noun``).
  A word split into several word pieces is the **mean** of its pieces' maps (it stays a probability map).
* **Pairs**: ``bound`` = each modifier with its own noun (SynGen's positive term); ``unbound`` = each modifier
  with every other noun (the negative term's pairs); ``entities`` = every two distinct nouns (Attend-and-Excite /
  Divide & Bind's concern). Labels ``"red|apple"``.
* **Layers**: every recorded layer by name, plus aggregates: ``res<h>`` = the mean over the layers at h×h, and
  ``all`` = the mean over all layers after resampling each to the largest resolution with bilinear interpolation
  (``align_corners=False``) **without** mass renormalisation — probabilities are intensive, so every pixel of the
  aggregate is still a mean of per-pixel probabilities (``attnlens.metrics.resample_maps(..., renormalize=False)``).
* **Leakage** regions are the nouns' Otsu regions at the same layer and step (``entity_regions``, Otsu rule).
* **Trajectory**: ``latent_drift``/``latent_drift_rel`` of a run's latents from the ``none`` run with the same
  prompt, seed, step count and model among the analysed runs (layer ``latent``).
* **Scalars** recorded by guidance methods (loss terms, grad norm, step size, ...) as ``scalar/<name>``.

Streaming: a run is read one phase and batch of (step, iteration) records at a time, layer by layer (one zarr
chunk per (step, phase, iteration)); two worker threads compute two layers at once; only per-resolution sums for
the aggregates are kept across layers, and rows leave as Arrow tables per batch. Memory is bounded by a few
batches of one layer, whatever the size of the run.
"""

from ..report import format_summary
from ..vocab import (
    AGGREGATE_ALL,
    COLUMNS,
    COLUMNS_DOC,
    HEADLINE,
    MAP_METRICS,
    METRIC_INFO,
    METRICS,
    MODIFIER_METRICS,
    PAIR_METRICS,
    PROMPT_METRICS,
    ROLES,
    SCALAR_PREFIX,
    TOKEN_METRICS,
    TRAJECTORY_METRICS,
)
from .kernels import map_metrics, otsu_masks, otsu_thresholds
from .layers import LayerPlan, available_records, layer_maps, plan_layers
from .parquet import AnalysisReport, load_table, read_table, write_parquet
from .runs import discover_runs, variant_label
from .table import Analysis, analyze_runs, resolve_metrics
from .tokens import (Selection, TokenPair, TokenUnit, remap_parse, remap_selection, run_display_parse, run_parse,
                     run_selection, select_tokens, unit_maps)

__all__ = [
    "AGGREGATE_ALL", "Analysis", "AnalysisReport", "COLUMNS", "COLUMNS_DOC", "HEADLINE", "LayerPlan", "MAP_METRICS",
    "METRICS", "METRIC_INFO", "MODIFIER_METRICS", "PAIR_METRICS", "PROMPT_METRICS", "ROLES", "SCALAR_PREFIX",
    "Selection", "TOKEN_METRICS", "TRAJECTORY_METRICS", "TokenPair", "TokenUnit", "analyze_runs",
    "available_records", "discover_runs", "format_summary", "layer_maps", "load_table", "map_metrics",
    "otsu_masks", "otsu_thresholds", "plan_layers", "read_table", "resolve_metrics", "run_parse",
    "remap_parse", "remap_selection", "run_display_parse", "run_selection", "select_tokens", "unit_maps", "variant_label", "write_parquet",
]
