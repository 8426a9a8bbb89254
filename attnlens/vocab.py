"""The words attnlens uses, in one place: the analysis table's columns, metric families, roles, layer aggregates
and the headline metrics (see ``docs/glossary.md``)."""

from __future__ import annotations

from . import metrics as M

#: what a recorded forward was: the ordinary CFG forward (conditional half), a guidance forward, the unconditional half,
#: a forward of an initial-noise search (InitNO)
PHASES = ("sample", "guidance", "sample_uncond", "noise_search")
#: the named axes of every stored map array
MAP_DIMS = ("step", "phase", "iteration", "sample", "head", "token", "y", "x")

COLUMNS = ["run", "method", "variant", "prompt", "seed", "sample", "step", "timestep", "phase", "iteration",
           "layer", "resolution", "token", "role", "metric", "value"]


COLUMNS_DOC = {
    "run": "the run folder",
    "method": "the guidance method's name (manifest method.name)",
    "variant": "manifest 'label' if set, else the method name plus the hyperparameters that differ from its defaults",
    "prompt": "the sample's prompt",
    "seed": "the sample's seed (-1 if unknown)",
    "sample": "index of the sample within the run (0 for attnlens.sample runs)",
    "step": "denoising loop index",
    "timestep": "the scheduler timestep of that step (NaN if unknown)",
    "phase": "sample | guidance | sample_uncond",
    "iteration": "refinement iteration within the step (0 for sampling)",
    "layer": "a layer's module path, an aggregate (res<h>, all), 'latent' (trajectory) or '-' (scalars)",
    "resolution": "h of the maps (latent h for 'latent', 0 for scalars)",
    "token": "a word, a pair 'a|b', '*' (all prompt tokens) or '-'",
    "role": "modifier | noun | bound | unbound | entities | prompt | latent | scalar",
    "metric": "a name of METRICS, or scalar/<name>",
    "value": "float64; NaN where undefined (e.g. a zero map)",
}


TOKEN_METRICS = ("entropy", "normalized_entropy", "tv_paper", "tv_released", "neglect_peak", "neglect_mass",
                 "neglect_mean")


MODIFIER_METRICS = ("leak_in", "leak_out")


PAIR_METRICS = tuple(M.OVERLAP_METRICS)


PROMPT_METRICS = ("token_entropy",)


TRAJECTORY_METRICS = ("latent_drift", "latent_drift_rel")


MAP_METRICS = TOKEN_METRICS + MODIFIER_METRICS + PAIR_METRICS + PROMPT_METRICS


METRICS = MAP_METRICS + TRAJECTORY_METRICS


SCALAR_PREFIX = "scalar/"
#: metric prefix of the image scores ``attnlens score`` wrote into a run (``score/clip_score``; role ``image``)
SCORE_PREFIX = "score/"


ROLES = ("modifier", "noun", "bound", "unbound", "entities", "prompt", "latent", "scalar", "image")


#: :data:`attnlens.metrics.METRIC_INFO` plus ``neglect_mean`` (the one neglect statistic comparable across layers).
METRIC_INFO: dict[str, dict[str, str]] = {
    **M.METRIC_INFO,
    "neglect_mean": {"normalization": "raw", "range": "[0, 1]", "higher_is": "n/a",
                     "description": "Mean raw attention of a token over pixels, mass / (h·w) (low = neglected)"},
}


AGGREGATE_ALL = "all"


#: (metric, role) pairs shown by the per-method summary, on layer ``all`` (``latent`` for drift), phase ``sample``.
HEADLINE = (("jsd", "bound"), ("jsd", "unbound"), ("otsu_iou", "entities"), ("leak_in", "modifier"),
            ("leak_out", "modifier"), ("neglect_peak", "noun"), ("token_entropy", "prompt"),
            ("latent_drift_rel", "latent"))
