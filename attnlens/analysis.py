"""Metric tables: stream recorded runs into one tidy long table (the library side of ``attnlens analyze``).

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

from __future__ import annotations

import difflib
import fnmatch
import functools
import hashlib
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from . import metrics as M
from .errors import AttnlensError
from .store import PHASES, Run, find_runs, is_run, open_run

# ------------------------------------------------------------------------------------------------------ vocabulary
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
ROLES = ("modifier", "noun", "bound", "unbound", "entities", "prompt", "latent", "scalar")

#: :data:`attnlens.metrics.METRIC_INFO` plus ``neglect_mean`` (the one neglect statistic comparable across layers).
METRIC_INFO: dict[str, dict[str, str]] = {
    **M.METRIC_INFO,
    "neglect_mean": {"normalization": "raw", "range": "[0, 1]", "higher_is": "n/a",
                     "description": "Mean raw attention of a token over pixels, mass / (h·w) (low = neglected)"},
}

AGGREGATE_ALL = "all"
_RES_RE = re.compile(r"^res(\d+)(?:x(\d+))?$")

#: (metric, role) pairs shown by the per-method summary, on layer ``all`` (``latent`` for drift), phase ``sample``.
HEADLINE = (("jsd", "bound"), ("jsd", "unbound"), ("otsu_iou", "entities"), ("leak_in", "modifier"),
            ("leak_out", "modifier"), ("neglect_peak", "noun"), ("token_entropy", "prompt"),
            ("latent_drift_rel", "latent"))


# ------------------------------------------------------------------------------------------------------ fast Otsu
def otsu_thresholds(maps: torch.Tensor | np.ndarray, nbins: int = 256) -> torch.Tensor:
    """Otsu threshold of every ``(h, w)`` map, vectorised: ``(..., h, w)`` → ``(...)`` float64.

    Reproduces ``skimage.filters.threshold_otsu(map)`` bit for bit on float64 maps (``np.histogram`` with ``nbins``
    equal bins over [min, max] including its ±1 bin corrections at the edges, bin centres, the between-class
    variance, first argmax) in one batched torch computation, so that ``map > threshold`` equals the per-map
    skimage loop of :func:`attnlens.metrics.entity_regions`. A constant map or one with a non-finite value gets
    ``+inf`` (an empty mask), as in ``attnlens.metrics``.
    """
    x = maps if isinstance(maps, torch.Tensor) else torch.as_tensor(np.asarray(maps))
    lead = x.shape[:-2]
    a = x.detach().reshape(-1, x.shape[-2] * x.shape[-1]).to(torch.float64)
    n = a.shape[0]
    if n == 0:
        return torch.empty(lead, dtype=torch.float64)
    lo, hi = a.aminmax(dim=1)  # a NaN anywhere makes both NaN
    valid = torch.isfinite(lo) & torch.isfinite(hi) & (hi > lo)
    lo = torch.where(valid, lo, 0.0)
    hi = torch.where(valid, hi, 1.0)
    denom = (hi - lo)[:, None]
    lo_ = lo[:, None]
    f = (a - lo_).div_(denom).mul_(nbins)  # np.histogram: ((a - first_edge) / norm_denom) * n_bins
    if not bool(valid.all()):
        f = torch.where(valid[:, None], f, 0.0)
    idx = f.to(torch.int64)
    # np.histogram then corrects indices within ~1 ULP of an edge against the linspace edges; only such pixels
    # (fractional part within 1e-6 of a bin edge, a generous margin) can move, so only they are re-checked.
    frac = f.sub_(idx)
    near = (frac < 1e-6) | (frac > 1 - 1e-6)
    idx.clamp_(max=nbins - 1)
    r, c = near.nonzero(as_tuple=True)
    if r.numel():
        step = denom[:, 0] / nbins
        v, k = a[r, c], idx[r, c]
        k = k - (v < k.to(torch.float64) * step[r] + lo[r]).to(torch.int64)
        k1 = k + 1
        e_hi = torch.where(k1 == nbins, hi[r], k1.to(torch.float64) * step[r] + lo[r])
        k = k + ((v >= e_hi) & (k != nbins - 1)).to(torch.int64)
        idx[r, c] = k
    idx += (torch.arange(n) * nbins)[:, None]
    counts = torch.bincount(idx.reshape(-1), minlength=n * nbins).reshape(n, nbins).to(torch.float64)
    edges = torch.arange(nbins + 1, dtype=torch.float64)[None, :] * (denom / nbins) + lo_  # np.linspace
    edges[:, -1] = hi
    centers = (edges[:, :-1] + edges[:, 1:]) / 2.0
    w1 = counts.cumsum(dim=1)
    w2 = counts.flip(1).cumsum(dim=1).flip(1)
    cb = counts * centers
    m1 = cb.cumsum(dim=1) / w1
    m2 = cb.flip(1).cumsum(dim=1).flip(1) / w2
    var = w1[:, :-1] * w2[:, 1:] * (m1[:, :-1] - m2[:, 1:]) ** 2
    thr = torch.gather(centers, 1, var.argmax(dim=1)[:, None])[:, 0]
    return torch.where(valid, thr, math.inf).reshape(lead)


def otsu_masks(maps: torch.Tensor) -> torch.Tensor:
    """Otsu regions ``p > otsu(p)`` of the spatial distributions p of ``maps`` (``(..., h, w)`` → bool), exactly
    ``attnlens.metrics.entity_regions(maps, "otsu")`` for float64 input, vectorised."""
    p = maps / maps.sum(dim=(-2, -1), keepdim=True)
    thr = otsu_thresholds(p).to(p.dtype)
    return p > thr[..., None, None]


# ------------------------------------------------------------------------------------------------------ tokens
@dataclass(frozen=True)
class TokenUnit:
    """A parse word whose maps are analysed: ``label``, ``role`` (modifier | noun), token ``positions``."""

    label: str
    role: str
    positions: tuple[int, ...]


@dataclass(frozen=True)
class TokenPair:
    """Two units compared by the overlap metrics: ``label`` "a|b", ``role`` (bound | unbound | entities)."""

    label: str
    role: str
    a: int
    b: int


@dataclass(frozen=True)
class Selection:
    """Which maps of a prompt are analysed (built by :func:`select_tokens`).

    ``entities``: unit indices of the nouns (their Otsu regions are the entity regions of the leakage metrics);
    ``modifiers``: ``(unit index, index into entities of its own noun)``; ``prompt_length``: T word pieces.
    """

    units: tuple[TokenUnit, ...]
    pairs: tuple[TokenPair, ...]
    entities: tuple[int, ...]
    modifiers: tuple[tuple[int, int], ...]
    prompt_length: int

    def unit(self, label: str) -> int:
        for i, u in enumerate(self.units):
            if u.label == label or u.label.split("@")[0] == label:
                return i
        raise AttnlensError(f"'{label}' is not an analysed word of the prompt",
                            hint=f"words: {', '.join(u.label for u in self.units) or '(none)'}")


def select_tokens(parse: Any) -> Selection:
    """Units and pairs of a prompt from its parse (a ``Parse`` or ``Parse.to_dict()``).

    Units: every modifier of every SynGen set (role ``modifier``) and every noun (the sets' nouns, then the
    parse's NOUN/PROPN words; role ``noun``), each once (identified by its positions), in prompt order. A word
    that is a modifier in some set is a modifier. Labels are the words; a word that occurs twice gets ``@<first
    position>`` ("red@2", "red@6"). Pairs: ``bound`` (modifier, its noun), ``unbound`` (modifier, every other
    noun), ``entities`` (every two nouns, in prompt order).
    """
    from .parse import Parse

    p = Parse.from_dict(parse) if isinstance(parse, dict) else parse
    words: dict[tuple[int, ...], str] = {}
    modifier_of: dict[tuple[int, ...], tuple[int, ...]] = {}
    nouns: list[tuple[int, ...]] = []
    for s in p.sets:
        n = tuple(s.noun.positions)
        words.setdefault(n, s.noun.word)
        if n not in nouns:
            nouns.append(n)
        for m in s.modifiers:
            mp = tuple(m.positions)
            words.setdefault(mp, m.word)
            modifier_of.setdefault(mp, n)
    for u in p.nouns:
        up = tuple(u.positions)
        words.setdefault(up, u.word)
        if up not in nouns:
            nouns.append(up)
    nouns = [n for n in nouns if n not in modifier_of and n]
    keys = sorted((k for k in words if k and (k in modifier_of or k in nouns)), key=lambda k: k[0])
    count: dict[str, int] = {}
    for k in keys:
        count[words[k].lower()] = count.get(words[k].lower(), 0) + 1
    label = {k: words[k] if count[words[k].lower()] == 1 else f"{words[k]}@{k[0]}" for k in keys}
    units = tuple(TokenUnit(label[k], "modifier" if k in modifier_of else "noun", k) for k in keys)
    index = {u.positions: i for i, u in enumerate(units)}
    entities = tuple(index[n] for n in sorted(nouns, key=lambda k: k[0]))
    ent_pos = {units[e].positions: j for j, e in enumerate(entities)}
    pairs: list[TokenPair] = []
    modifiers: list[tuple[int, int]] = []
    for k in keys:
        if k not in modifier_of:
            continue
        i, own = index[k], modifier_of[k]
        modifiers.append((i, ent_pos[own]))
        pairs.append(TokenPair(f"{units[i].label}|{units[index[own]].label}", "bound", i, index[own]))
        for e in entities:
            if units[e].positions != own:
                pairs.append(TokenPair(f"{units[i].label}|{units[e].label}", "unbound", i, e))
    for x in range(len(entities)):
        for y in range(x + 1, len(entities)):
            a, b = entities[x], entities[y]
            pairs.append(TokenPair(f"{units[a].label}|{units[b].label}", "entities", a, b))
    return Selection(units, tuple(pairs), entities, tuple(modifiers), p.prompt_length)


_PARSE_CACHE: dict[str, Any] = {}


def run_parse(run: Run, sample: int = 0, known: dict[str, Any] | None = None) -> Any:
    """The parse of a run's sample: the manifest's (for the run's own prompt), else a parse of the same prompt
    from ``known`` (``{prompt: parse dict}``, e.g. another analysed run's manifest — so a ``none`` run gets the
    very parse its guided counterpart used), else ``parse_prompt(prompt)`` (spaCy; cached per process)."""
    from .parse import Parse, parse_prompt

    m = run.manifest
    prompt = _sample_info(run, sample)[0]
    if m.get("parse") and (sample == 0 or prompt == m.get("prompt")):
        return Parse.from_dict(m["parse"])
    if known and prompt in known:
        return Parse.from_dict(known[prompt])
    if prompt not in _PARSE_CACHE:
        _PARSE_CACHE[prompt] = parse_prompt(prompt)
    return _PARSE_CACHE[prompt]


# ------------------------------------------------------------------------------------------------------ metrics on maps
@functools.lru_cache(maxsize=64)
def _unit_weights(sel: Selection, k: int) -> torch.Tensor:
    w = torch.zeros(len(sel.units), k, dtype=torch.float64)
    for i, u in enumerate(sel.units):
        pos = [p for p in u.positions if p < k]
        if pos:
            w[i, pos] = 1.0 / len(pos)
    return w


def unit_maps(maps: torch.Tensor, sel: Selection) -> torch.Tensor:
    """``(S, token, h, w)`` recorded maps → ``(S, unit, h, w)``: the mean over each unit's word pieces."""
    k = maps.shape[-3]
    if all(len(u.positions) == 1 and u.positions[0] < k for u in sel.units):
        return maps[:, [u.positions[0] for u in sel.units]]
    w = _unit_weights(sel, k).to(maps.dtype)
    s, _, h, ww = maps.shape
    return (w @ maps.reshape(s, k, h * ww)).reshape(s, len(sel.units), h, ww)


MetricBlock = tuple[np.ndarray, list[str], list[str]]  # values (S, n), token labels (n,), roles (n,)

SYM_KL_EPS = 1e-8  # the default smoothing of attnlens.metrics.symmetric_kl


_TINY = torch.finfo(torch.float64).tiny


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _xlogx(x: torch.Tensor) -> torch.Tensor:
    """x ln x with 0 ln 0 = 0 (as ``torch.xlogy(x, x)`` for x ≥ 0, NaN propagating), about twice as fast."""
    return torch.log(x.clamp_min(_TINY)).mul_(x)


def map_metrics(maps: torch.Tensor, sel: Selection, metrics: Iterable[str] | None = None) -> dict[str, MetricBlock]:
    """Every map metric of one layer (or aggregate) for a batch of records, vectorised over records and tokens.

    The values are those of :mod:`attnlens.metrics` (``tests/integration/test_analysis.py`` checks them against
    the metric functions), computed in float64 with shared intermediate results so that big runs stay fast:
    each unit's spatial distribution, entropy and Otsu mask are computed once; the pair terms Σ p̃_a ln p̃_b
    (symmetric KL), Σ P_a P_b (cosine) and |M_a ∩ M_b| (Otsu IoU) for all pairs come from one batched matrix
    product each; JSD = H(m) − ½H(p) − ½H(q) (the same quantity as ½KL(p‖m) + ½KL(q‖m)); Σ max(p, q) =
    Σp + Σq − Σ min(p, q); the token-allocation entropy is ln Z − Σ_k a_k ln a_k / Z with Z = Σ_k a_k.

    Args:
        maps: ``(S, token, h, w)`` raw probabilities (token axis = recorded positions, 0 = ``<sot>``).
        sel: the tokens and pairs (:func:`select_tokens`).
        metrics: names of :data:`MAP_METRICS` to compute (default all).

    Returns:
        ``{metric: (values (S, n), labels (n,), roles (n,))}``.
    """
    want = set(MAP_METRICS if metrics is None else metrics)
    x = maps if maps.dtype == torch.float64 else maps.to(torch.float64)
    s, k, h, w = x.shape
    npx = h * w
    xf = x.reshape(s, k, npx)
    out: dict[str, MetricBlock] = {}
    if "token_entropy" in want:
        a = xf[:, 1: sel.prompt_length + 1]
        z = a.sum(dim=1)
        hmap = torch.log(z) - _xlogx(a).sum(dim=1) / z
        out["token_entropy"] = (_np(torch.nanmean(hmap, dim=-1)).reshape(s, 1), ["*"], ["prompt"])
    if not sel.units:
        return out
    u = unit_maps(x, sel).reshape(s, len(sel.units), npx)
    labels = [t.label for t in sel.units]
    roles = [t.role for t in sel.units]
    mass = u.sum(dim=-1)
    p = u / mass[..., None]
    pair_m = set(PAIR_METRICS) & want if sel.pairs else set()
    mod_m = set(MODIFIER_METRICS) & want if sel.modifiers else set()
    ent = None
    if want & {"entropy", "normalized_entropy"} or "jsd" in pair_m:
        ent = -_xlogx(p).sum(dim=-1)
        if "entropy" in want:
            out["entropy"] = (_np(ent), labels, roles)
        if "normalized_entropy" in want:
            norm = ent / math.log(npx) if npx > 1 else ent * float("nan")
            out["normalized_entropy"] = (_np(norm), labels, roles)
    p2 = p.reshape(s, -1, h, w)
    if "tv_paper" in want:
        out["tv_paper"] = (_np(M.tv_paper(p2, spatial=False)), labels, roles)
    if "tv_released" in want:
        out["tv_released"] = (_np(M.tv_released(p2, spatial=False)), labels, roles)
    if "neglect_peak" in want:
        out["neglect_peak"] = (_np(u.amax(dim=-1)), labels, roles)
    if "neglect_mass" in want:
        out["neglect_mass"] = (_np(mass), labels, roles)
    if "neglect_mean" in want:
        out["neglect_mean"] = (_np(mass / npx), labels, roles)
    masks = None
    if "otsu_iou" in pair_m or mod_m:
        masks = p > otsu_thresholds(p.reshape(s, -1, h, w))[..., None]
    if pair_m:
        ia = torch.tensor([q.a for q in sel.pairs])
        ib = torch.tensor([q.b for q in sel.pairs])
        plabels = [q.label for q in sel.pairs]
        proles = [q.role for q in sel.pairs]

        def pairs_of(gram: torch.Tensor) -> torch.Tensor:
            return gram[:, ia, ib]

        if "sym_kl" in pair_m:
            pt = (p + SYM_KL_EPS) / (1.0 + npx * SYM_KL_EPS)
            c = torch.bmm(pt, torch.log(pt).transpose(1, 2))  # c[a, b] = Σ p̃_a ln p̃_b
            d = torch.diagonal(c, dim1=1, dim2=2)
            v = 0.5 * (d[:, ia] - c[:, ia, ib] + d[:, ib] - c[:, ib, ia])
            out["sym_kl"] = (_np(v), plabels, proles)
        if "jsd" in pair_m:
            half = torch.zeros(len(sel.pairs), len(sel.units), dtype=torch.float64)
            half[torch.arange(len(sel.pairs)), ia] += 0.5
            half[torch.arange(len(sel.pairs)), ib] += 0.5
            m = torch.matmul(half, p)  # (S, pairs, n): m = ½(p_a + p_b)
            hm = -_xlogx(m).sum(dim=-1)
            out["jsd"] = (_np(hm - 0.5 * (ent[:, ia] + ent[:, ib])), plabels, proles)
        if "cosine" in pair_m:
            g = torch.bmm(u, u.transpose(1, 2))
            d = torch.diagonal(g, dim1=1, dim2=2).sqrt()
            out["cosine"] = (_np(pairs_of(g) / (d[:, ia] * d[:, ib])), plabels, proles)
        if pair_m & {"intersection", "soft_iou"}:
            diff = torch.zeros(len(sel.pairs), len(sel.units), dtype=torch.float64)
            diff[torch.arange(len(sel.pairs)), ia] += 1.0
            diff[torch.arange(len(sel.pairs)), ib] -= 1.0
            sp = p.sum(dim=-1)
            # Σ min(p, q) = ½ (Σp + Σq − Σ|p − q|), with p − q for all pairs from one matrix product
            mn = 0.5 * (sp[:, ia] + sp[:, ib] - torch.matmul(diff, p).abs_().sum(dim=-1))
            if "intersection" in pair_m:
                out["intersection"] = (_np(mn), plabels, proles)
            if "soft_iou" in pair_m:
                out["soft_iou"] = (_np(mn / (sp[:, ia] + sp[:, ib] - mn)), plabels, proles)
        if "otsu_iou" in pair_m:
            mf = masks.to(torch.float64)
            g = torch.bmm(mf, mf.transpose(1, 2))
            d = torch.diagonal(g, dim1=1, dim2=2)
            inter = pairs_of(g)
            out["otsu_iou"] = (_np(inter / (d[:, ia] + d[:, ib] - inter)), plabels, proles)
    if mod_m:
        mi = [q[0] for q in sel.modifiers]
        pm = p[:, mi]
        ents = masks[:, list(sel.entities)].to(torch.float64)  # (S, E, n)
        mlabels = [sel.units[i].label for i in mi]
        mroles = ["modifier"] * len(mi)
        if "leak_in" in mod_m:
            own = torch.zeros(len(mi), len(sel.entities), dtype=torch.float64)
            for j, (_, e) in enumerate(sel.modifiers):
                own[j, e] = 1.0
            other_r = torch.matmul(1.0 - own, ents) > 0  # (S, m, n): union of the other entities' regions
            own_r = torch.matmul(own, ents) > 0
            out["leak_in"] = (_np((pm * (other_r & ~own_r)).sum(dim=-1)), mlabels, mroles)
        if "leak_out" in mod_m:
            outside = (ents.sum(dim=1, keepdim=True) == 0)
            out["leak_out"] = (_np((pm * outside).sum(dim=-1)), mlabels, mroles)
    return out


# ------------------------------------------------------------------------------------------------------ layers
@dataclass(frozen=True)
class LayerPlan:
    """Which layers are read, which are emitted individually, and which aggregates are formed."""

    read: tuple[str, ...]
    emit: tuple[str, ...]
    aggregates: tuple[tuple[str, tuple[str, ...], tuple[int, int]], ...]  # (name, members, size)


def _res_name(hw: tuple[int, int]) -> str:
    return f"res{hw[0]}" if hw[0] == hw[1] else f"res{hw[0]}x{hw[1]}"


def plan_layers(resolutions: dict[str, tuple[int, int]], specs: Sequence[str | int] | None = None) -> LayerPlan:
    """Resolve layer specs: layer names, globs (``up_blocks.*``), resolutions (``16``: the layers at 16×16),
    and aggregates ``all`` / ``res<h>``. ``None`` = every layer plus every aggregate."""
    from .recorder import select_layers

    names = list(resolutions)
    if not names:
        return LayerPlan((), (), ())
    by_res: dict[tuple[int, int], list[str]] = {}
    for n in names:
        by_res.setdefault(tuple(resolutions[n]), []).append(n)
    all_size = (max(r[0] for r in by_res), max(r[1] for r in by_res))
    aggs: dict[str, tuple[tuple[str, ...], tuple[int, int]]] = {}
    if specs is None:
        emit = list(names)
        for hw in sorted(by_res, reverse=True):
            aggs[_res_name(hw)] = (tuple(by_res[hw]), hw)
        aggs[AGGREGATE_ALL] = (tuple(names), all_size)
    else:
        emit_specs: list[str | int] = []
        for spec in specs:
            text = str(spec).strip()
            m = _RES_RE.match(text)
            if text == AGGREGATE_ALL:
                aggs[AGGREGATE_ALL] = (tuple(names), all_size)
            elif m:
                hw = (int(m.group(1)), int(m.group(2) or m.group(1)))
                if hw not in by_res:
                    raise AttnlensError(f"no layers at {hw[0]}×{hw[1]} for aggregate '{text}'",
                                        hint=f"resolutions: {', '.join(_res_name(r) for r in sorted(by_res))}")
                aggs[text] = (tuple(by_res[hw]), hw)
            else:
                emit_specs.append(int(text) if text.isdigit() else text)
        emit = select_layers(names, emit_specs, resolutions) if emit_specs else []
    read = [n for n in names if n in emit or any(n in members for members, _ in aggs.values())]
    return LayerPlan(tuple(read), tuple(emit), tuple((k, v[0], v[1]) for k, v in aggs.items()))


def layer_maps(run: Run, layer: str, steps: Sequence[int], phase: str = "sample", iteration: int = 0,
               sample: int = 0) -> torch.Tensor:
    """Head-averaged float64 maps ``(S, token, h, w)`` of a layer or an aggregate (``all``, ``res<h>``) at
    ``steps``; reads only those chunks. Used by the figures (and the dashboard)."""
    plan = plan_layers(run.resolutions(), [layer])
    steps = list(steps)
    if plan.aggregates:
        name, members, size = plan.aggregates[0]
        total = None
        for n in members:
            x = _resize(_read(run.array(n), steps, PHASES.index(phase), iteration, sample), size)
            total = x if total is None else total + x
        return total / len(members)
    return _read(run.array(plan.emit[0]), steps, PHASES.index(phase), iteration, sample)


def _read(arr: Any, steps: Sequence[int], ph: int, it: int, sample: int | None = None) -> torch.Tensor:
    """Read (S, sample, head, token, y, x) (or one sample's (S, token, y, x), head-averaged) as float64."""
    steps = list(steps)
    if steps == list(range(steps[0], steps[-1] + 1)):
        data = arr[steps[0]: steps[-1] + 1, ph, it]
    else:
        data = arr.get_orthogonal_selection((np.asarray(steps), ph, it))
    x = torch.from_numpy(np.asarray(data, dtype=np.float64))
    if sample is None:
        return x
    return x[:, sample].mean(dim=1)


class ChunkReader:
    """Reads whole chunks of a map array straight from their files when the array has the layout ``RunWriter``
    writes — one chunk per (step, phase, iteration), codecs ``bytes`` (little-endian) then ``blosc`` or ``zstd``
    (without checksum), float16/float32 — which skips zarr's per-chunk asynchronous machinery (about 4× faster per
    chunk; numcodecs releases the GIL while decompressing). A missing chunk file is the fill value (NaN), as zarr
    reads it.

    :meth:`for_array` returns None for any other layout; callers then read through zarr.
    """

    def __init__(self, folder: Path, arr: Any, dtype: np.dtype, codec: str):
        from numcodecs import Blosc, Zstd

        self.folder, self.arr, self.dtype = folder, arr, dtype
        self.shape = tuple(arr.shape[3:])
        self.codec = Blosc() if codec == "blosc" else Zstd()  # blosc buffers describe their own settings

    @classmethod
    def for_array(cls, run: Run, layer: str, arr: Any) -> "ChunkReader | None":
        try:
            md = arr.metadata
            codecs = [c.to_dict() for c in md.codecs]
            chunk = tuple(md.chunk_grid.chunk_shape)
            compressor = codecs[1] if len(codecs) == 2 else {}
            name = compressor.get("name")
            ok = (len(codecs) == 2 and codecs[0].get("name") == "bytes"
                  and (codecs[0].get("configuration") or {}).get("endian", "little") == "little"
                  and (name == "blosc" or (name == "zstd"
                                           and not (compressor.get("configuration") or {}).get("checksum", False)))
                  and chunk == (1, 1, 1, *arr.shape[3:]) and arr.dtype in (np.float16, np.float32))
            folder = run.path / "attention" / layer / "maps"
            if not ok or not folder.is_dir():
                return None
            return cls(folder, arr, np.dtype(arr.dtype).newbyteorder("<"), name)
        except Exception:  # noqa: BLE001  (any unexpected metadata: use zarr)
            return None

    def read(self, step: int, ph: int, it: int) -> np.ndarray:
        key = self.arr.metadata.encode_chunk_key((step, ph, it) + (0,) * len(self.shape))
        try:
            raw = (self.folder / key).read_bytes()
        except FileNotFoundError:
            return np.full(self.shape, np.nan, dtype=self.dtype)
        return np.frombuffer(self.codec.decode(raw), dtype=self.dtype).reshape(self.shape)


def _read_records(arr: Any, recs: Sequence[tuple[int, int]], ph: int,
                  reader: ChunkReader | None = None) -> torch.Tensor:
    """Read (step, iteration) records of one phase as float64 ``(R, sample, head, token, h, w)``: chunk by chunk
    with a :class:`ChunkReader`, else one zarr call per distinct iteration."""
    if reader is not None:
        out = np.empty((len(recs), *reader.shape), dtype=np.float64)
        for i, (step, it) in enumerate(recs):
            out[i] = reader.read(step, ph, it)
        return torch.from_numpy(out)
    by_it: dict[int, list[int]] = {}
    for i, (_, it) in enumerate(recs):
        by_it.setdefault(it, []).append(i)
    if len(by_it) == 1:
        (it,) = by_it
        return _read(arr, [s for s, _ in recs], ph, it)
    out = torch.empty((len(recs), *arr.shape[3:]), dtype=torch.float64)
    for it, idx in by_it.items():
        out[idx] = _read(arr, [recs[i][0] for i in idx], ph, it)
    return out


def _aggregate_metrics(parts: Sequence[torch.Tensor], size: tuple[int, int], n_layers: int, sel: Selection,
                       metrics: Iterable[str]) -> dict[str, MetricBlock]:
    """Metrics of an aggregate: the per-resolution layer sums ``parts`` resampled to ``size``, summed, divided by
    the number of layers (resampling is linear, so this is the mean of the resampled layers)."""
    total = None
    for part in parts:
        r = _resize(part, size)
        total = r if total is None else total + r
    return map_metrics(total / n_layers, sel, metrics)


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return M.resample_maps(x, size, mode="bilinear", renormalize=False)


# ------------------------------------------------------------------------------------------------------ runs
def _sample_info(run: Run, k: int) -> tuple[str, int]:
    m = run.manifest
    samples = m.get("samples") or []
    prompt = (samples[k].get("prompt") if k < len(samples) else None) or m.get("prompt") or ""
    seed = samples[k].get("seed") if k < len(samples) else None
    seed = m.get("seed") if seed is None else seed
    return str(prompt), int(seed) if seed is not None else -1


def _fmt_value(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"), sort_keys=True)
    return str(v)


def variant_label(manifest: dict[str, Any]) -> str:
    """A run's variant: manifest ``label`` if present, else the method name plus the hyperparameters that differ
    from the registered method's defaults, e.g. ``syngen(negative=False)``."""
    if manifest.get("label"):
        return str(manifest["label"])
    method = manifest.get("method") or {}
    name = str(method.get("name") or "unknown")
    hp = method.get("hyperparameters") or {}
    if not hp:
        return name
    from .methods import available_methods, get_method

    defaults = None
    if name in available_methods():
        try:
            defaults = get_method(name).hyperparameters()
        except Exception:  # noqa: BLE001  (a method that cannot be built with defaults: fall back to a hash)
            defaults = None
    if defaults is None:
        digest = hashlib.sha1(json.dumps(hp, sort_keys=True, default=str).encode()).hexdigest()[:6]
        return f"{name}[{digest}]"
    diff = {k: v for k, v in hp.items() if k not in defaults or defaults[k] != v}
    if not diff:
        return name
    return name + "(" + ", ".join(f"{k}={_fmt_value(v)}" for k, v in sorted(diff.items())) + ")"


def discover_runs(paths: Sequence[str | Path] | str | Path, partial: bool = False) -> tuple[list[Run], list[str]]:
    """Open every run under ``paths`` (run folders or roots). Returns (runs, notes): incomplete runs are
    skipped with a note unless ``partial``; unreadable manifests are skipped with a note.

    Raises AttnlensError for a path that does not exist or when no run is found at all."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise AttnlensError("no run or root given", hint="attnlens analyze runs/")
    found: list[Path] = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise AttnlensError(f"'{p}' does not exist", hint="pass a run folder or a folder holding runs")
        hits = list(find_runs(p))
        if not hits:
            raise AttnlensError(f"no runs under '{p}'", hint=f"record one: attnlens record \"a red apple\" --out {p}")
        found += hits
    runs, notes, seen = [], [], set()
    for path in found:
        key = path.resolve()
        if key in seen:
            continue
        seen.add(key)
        try:
            run = open_run(path)
        except AttnlensError as exc:
            notes.append(f"skipped {path}: {exc.message}")
            continue
        if not run.complete and not partial:
            notes.append(f"skipped {path}: incomplete run (status {run.status}); pass --partial to analyse its "
                         "complete steps")
            continue
        if not run.layers:
            notes.append(f"skipped {path}: no attention maps recorded")
            continue
        runs.append(run)
    if not runs:
        raise AttnlensError("no complete run to analyse" + (f" ({len(notes)} skipped)" if notes else ""),
                            hint="pass --partial to analyse incomplete runs" if notes else None)
    return runs, notes


def _chunk_exists(run: Run, layer: str, arr: Any, step: int, ph: int, it: int) -> bool:
    if step >= arr.shape[0] or it >= arr.shape[2]:
        return False
    key = arr.metadata.encode_chunk_key((step, ph, it) + (0,) * (len(arr.shape) - 3))
    return (run.path / "attention" / layer / "maps" / key).is_file()


def available_records(run: Run, layers: Sequence[str] | None = None,
                      arrays: dict[str, Any] | None = None) -> tuple[dict[tuple[str, int], list[int]], int | None]:
    """``{(phase, iteration): [steps]}`` with data in every layer of ``layers``, and the last complete step
    (every layer has its ``sample`` map for every step up to it; None if no step).

    A complete run trusts its manifest's record index; an incomplete one (``partial``) is checked chunk by chunk
    and cut at its last complete step, so a step the writer was still writing is never analysed."""
    records = run.manifest.get("records")
    layers = list(run.layers if layers is None else layers)
    arrays = {n: (arrays or {}).get(n) or run.array(n) for n in layers}
    out: dict[tuple[str, int], list[int]] = {}
    if run.complete and records:
        for ph, by_step in records.items():
            for s, its in by_step.items():
                for it in its:
                    out.setdefault((ph, int(it)), []).append(int(s))
        for k in out:
            out[k].sort()
        sample_steps = out.get(("sample", 0), [])
        return out, (sample_steps[-1] if sample_steps else None)
    first = arrays[layers[0]] if layers else None
    if first is None:
        return {}, None
    ph_s = PHASES.index("sample")
    last = None
    for s in range(first.shape[0]):
        if all(_chunk_exists(run, n, a, s, ph_s, 0) for n, a in arrays.items()):
            last = s
        else:
            break
    if last is None:
        return {}, None
    candidates: dict[tuple[str, int], list[int]] = {}
    if records:
        for ph, by_step in records.items():
            for s, its in by_step.items():
                for it in its:
                    if int(s) <= last:
                        candidates.setdefault((ph, int(it)), []).append(int(s))
    else:
        n_it = first.shape[2]
        for ph in PHASES:
            for it in range(n_it if ph == "guidance" else 1):
                candidates[(ph, it)] = list(range(last + 1))
    for (ph, it), steps in candidates.items():
        ok = [s for s in sorted(steps)
              if all(_chunk_exists(run, n, a, s, PHASES.index(ph), it) for n, a in arrays.items())]
        if ok:
            out[(ph, it)] = ok
    return out, last


# ------------------------------------------------------------------------------------------------------ selection args
def _step_filter(steps: Any) -> Callable[[int], bool]:
    from .recorder import parse_steps, step_predicate

    if isinstance(steps, str):
        steps = parse_steps(steps)
    elif isinstance(steps, (list, tuple)) and steps and all(isinstance(s, str) for s in steps):
        preds = [_step_filter(s) for s in steps]
        return lambda i: any(p(i) for p in preds)
    return step_predicate(steps)


def resolve_metrics(metrics: Sequence[str] | None) -> tuple[set[str], list[str] | None]:
    """Validate metric names/globs. Returns (map/trajectory metric names, scalar patterns or None for all).

    ``scalar/<name>`` (or a glob such as ``scalar/*``) selects recorded scalars; an unknown name raises
    :class:`AttnlensError` with the closest names."""
    if metrics is None:
        return set(METRICS), None
    chosen: set[str] = set()
    scalars: list[str] = []
    for raw in metrics:
        for name in str(raw).split(","):
            name = name.strip()
            if not name:
                continue
            if name.startswith(SCALAR_PREFIX):
                scalars.append(name[len(SCALAR_PREFIX):] or "*")
                continue
            if any(c in name for c in "*?["):
                hits = fnmatch.filter(METRICS, name)
            else:
                hits = [name] if name in METRICS else []
            if not hits:
                close = difflib.get_close_matches(name, list(METRICS) + ["scalar/loss"], n=3)
                raise AttnlensError(f"unknown metric '{name}'",
                                    hint=(f"did you mean {', '.join(close)}? " if close else "")
                                    + f"known: {', '.join(METRICS)}, scalar/<name>")
            chosen.update(hits)
    return chosen, scalars


# ------------------------------------------------------------------------------------------------------ row building
def _schema():
    import pyarrow as pa

    return pa.schema([
        ("run", pa.string()), ("method", pa.string()), ("variant", pa.string()), ("prompt", pa.string()),
        ("seed", pa.int64()), ("sample", pa.int32()), ("step", pa.int32()), ("timestep", pa.float64()),
        ("phase", pa.string()), ("iteration", pa.int32()), ("layer", pa.string()), ("resolution", pa.int32()),
        ("token", pa.string()), ("role", pa.string()), ("metric", pa.string()), ("value", pa.float64()),
    ])


class _Rows:
    """Collects metric blocks of one run-sample and turns them into Arrow tables (columnar, vectorised; the
    string columns are built as dictionary codes and cast to plain strings once per table)."""

    _CODED = ("phase", "layer", "token", "role", "metric")

    def __init__(self, const: dict[str, Any], summary: "_Summary"):
        self.const = const
        self.summary = summary
        self._reset()

    def _reset(self) -> None:
        self.dicts: dict[str, dict[str, int]] = {c: {} for c in self._CODED}
        self.parts: list[dict[str, Any]] = []
        self.n = 0

    def _code(self, col: str, value: str) -> int:
        d = self.dicts[col]
        return d.setdefault(value, len(d))

    def add(self, steps: np.ndarray, timesteps: np.ndarray, phase: str, iteration: int | np.ndarray, layer: str,
            resolution: int, metric: str, values: np.ndarray, labels: Sequence[str], roles: Sequence[str]) -> None:
        s, k = values.shape
        if s == 0 or k == 0:
            return
        it = np.broadcast_to(np.asarray(iteration, dtype=np.int32), (s,))
        tok = np.array([self._code("token", x) for x in labels], dtype=np.int32)
        rol = np.array([self._code("role", x) for x in roles], dtype=np.int32)
        self.parts.append({
            "n": s * k, "step": np.repeat(steps.astype(np.int32), k), "timestep": np.repeat(timesteps, k),
            "iteration": np.repeat(it, k), "token": np.tile(tok, s), "role": np.tile(rol, s),
            "value": values.reshape(-1).astype(np.float64, copy=False),
            "phase": self._code("phase", phase), "layer": self._code("layer", layer),
            "metric": self._code("metric", metric), "resolution": resolution,
        })
        self.n += s * k
        if phase == "sample" and layer in (AGGREGATE_ALL, "latent"):
            self.summary.add(self.const["variant"], metric, roles, values)

    def table(self):
        import pyarrow as pa

        schema = _schema()
        n = self.n
        sizes = np.array([p["n"] for p in self.parts])
        cols: dict[str, Any] = {}
        for name in ("run", "method", "variant", "prompt"):
            cols[name] = pa.DictionaryArray.from_arrays(np.zeros(n, dtype=np.int32),
                                                        pa.array([self.const[name]], pa.string())).cast(pa.string())
        cols["seed"] = pa.array(np.full(n, self.const["seed"], dtype=np.int64))
        cols["sample"] = pa.array(np.full(n, self.const["sample"], dtype=np.int32))
        for name in ("step", "timestep", "iteration", "value"):
            cols[name] = pa.array(np.concatenate([p[name] for p in self.parts]), type=schema.field(name).type)
        cols["resolution"] = pa.array(np.repeat(np.array([p["resolution"] for p in self.parts], dtype=np.int32), sizes))
        for name in self._CODED:
            if name in ("token", "role"):
                codes = np.concatenate([p[name] for p in self.parts])
            else:
                codes = np.repeat(np.array([p[name] for p in self.parts], dtype=np.int32), sizes)
            words = pa.array(list(self.dicts[name]), pa.string())
            cols[name] = pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), words).cast(pa.string())
        table = pa.table([cols[c] for c in COLUMNS], schema=schema)
        self._reset()
        return table


class _Summary:
    """Streaming means of the headline metrics per variant (layer ``all``/``latent``, phase ``sample``)."""

    def __init__(self):
        self.acc: dict[tuple[str, str, str], list[float]] = {}
        self.runs: dict[str, set[str]] = {}
        self.methods: dict[str, str] = {}
        self._headline = set(HEADLINE)

    def add(self, variant: str, metric: str, roles: Sequence[str], values: np.ndarray) -> None:
        for j, role in enumerate(roles):
            if (metric, role) in self._headline:
                v = values[:, j]
                v = v[np.isfinite(v)]
                a = self.acc.setdefault((variant, metric, role), [0.0, 0])
                a[0] += float(v.sum())
                a[1] += int(v.size)

    def frame(self):
        import pandas as pd

        rows = []
        for variant in sorted(self.runs):
            row: dict[str, Any] = {"variant": variant, "method": self.methods.get(variant, variant),
                                   "runs": len(self.runs[variant])}
            for metric, role in HEADLINE:
                s, n = self.acc.get((variant, metric, role), (0.0, 0))
                row[f"{metric}[{role}]"] = s / n if n else float("nan")
            rows.append(row)
        return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------------ the analysis
@dataclass
class Analysis:
    """A streaming analysis of runs. Iterate :meth:`tables` (Arrow) or :meth:`frames` (pandas) once.

    Args:
        paths: run folders and/or roots holding runs.
        partial: analyse incomplete runs up to their last complete step (default: skip them with a note).
        metrics: metric names or globs of :data:`METRICS`, or ``scalar/<name>`` (default: everything).
        layers: layer names, globs, resolutions (``"16"``) or aggregates (``all``, ``res16``); default every
            layer and every aggregate.
        steps: step selection: an int, a list, a slice or text (``"0:25"``, ``"::5"``, ``"0,10,20"``).
        phases: phases of the map metrics (default every recorded phase); the trajectory (``sample``) and the
            scalars (``guidance``) are governed by ``metrics`` alone.
        batch_elements: map elements (records × tokens × pixels) read per layer at once; bounds memory.
        workers: layers computed concurrently (threads: torch and zarr release the GIL), default 2.
        threads: torch intra-op threads per worker while computing (restored afterwards; None leaves torch's
            setting). Default 1: parallelism comes from the workers, which keeps every core busy with independent
            work; intra-op threads on maps of this size mostly wait on each other, worst on a busy machine.
    """

    paths: Sequence[str | Path] | str | Path
    partial: bool = False
    metrics: Sequence[str] | None = None
    layers: Sequence[str | int] | None = None
    steps: Any = None
    phases: Sequence[str] | None = None
    batch_elements: int = 1_000_000
    workers: int = 2
    threads: int | None = 1
    runs: list[Run] = field(init=False)
    notes: list[str] = field(init=False)

    def __post_init__(self):
        self.map_metrics, self.scalar_patterns = resolve_metrics(self.metrics)
        if self.phases is not None:
            bad = [p for p in self.phases if p not in PHASES]
            if bad:
                raise AttnlensError(f"unknown phase '{bad[0]}'", hint=f"phases: {', '.join(PHASES)}")
        self._step_ok = _step_filter(self.steps)
        self.runs, self.notes = discover_runs(self.paths, self.partial)
        self._summary = _Summary()
        self.rows = 0
        self._references = self._index_references()
        self._known_parses: dict[str, Any] = {}
        for run in self.runs:  # manifest parses without a manual --bind, by prompt
            m = run.manifest
            if m.get("parse") and not m.get("bind") and m.get("prompt"):
                self._known_parses.setdefault(m["prompt"], m["parse"])
        if self.layers is not None:  # validate the layer specs on the first run before any work
            plan_layers(self.runs[0].resolutions(), [str(x) for x in self.layers])

    # -- references for the latent drift ---------------------------------------------------------------------
    def _ref_key(self, run: Run, k: int) -> tuple:
        prompt, seed = _sample_info(run, k)
        m = run.manifest
        return (prompt, seed, m.get("steps"), (m.get("model") or {}).get("id"), m.get("guidance_scale"))

    def _index_references(self) -> dict[tuple, tuple[Run, int]]:
        refs: dict[tuple, tuple[Run, int]] = {}
        for run in self.runs:
            if (run.manifest.get("method") or {}).get("name") == "none":
                for k in range(max(len(run.manifest.get("samples") or []), 1)):
                    refs.setdefault(self._ref_key(run, k), (run, k))
        return refs

    # -- iteration ---------------------------------------------------------------------------------------------
    def tables(self) -> Iterator[Any]:
        """Arrow tables (schema :data:`COLUMNS`), one per run-sample batch of steps."""
        from concurrent.futures import ThreadPoolExecutor

        previous = torch.get_num_threads()
        self._pool = ThreadPoolExecutor(max_workers=max(1, self.workers), thread_name_prefix="attnlens")
        try:
            if self.threads:
                torch.set_num_threads(self.threads)
            for run in self.runs:
                try:
                    yield from self._run_tables(run)
                except AttnlensError as exc:
                    self.notes.append(f"skipped {run.path}: {exc.message}")
        finally:
            torch.set_num_threads(previous)
            self._pool.shutdown(wait=True)

    def frames(self) -> Iterator[Any]:
        """pandas DataFrames, one per run-sample batch of steps."""
        for t in self.tables():
            yield t.to_pandas()

    def summary(self):
        """Per-variant means of :data:`HEADLINE` (layer ``all``, phase ``sample``) over what has been iterated."""
        return self._summary.frame()

    def _run_tables(self, run: Run) -> Iterator[Any]:
        m = run.manifest
        method = str((m.get("method") or {}).get("name") or "unknown")
        variant = variant_label(m)
        arrays = {n: run.array(n) for n in run.layers}  # opening an array costs ~10 ms: once per run
        plan = plan_layers({n: tuple(int(v) for v in a.shape[-2:]) for n, a in arrays.items()},
                           None if self.layers is None else [str(x) for x in self.layers])
        self._arrays = arrays
        self._readers = {n: ChunkReader.for_array(run, n, a) for n, a in arrays.items()}
        records, last = available_records(run, plan.read or run.layers[:1], arrays)
        if not run.complete:
            if last is None:
                self.notes.append(f"skipped {run.path}: incomplete run with no complete step")
                return
            self.notes.append(f"{run.path}: incomplete run (status {run.status}), analysed steps 0..{last}")
        n_samples = max(len(m.get("samples") or []), 1)
        timesteps = _timesteps(run)
        first_arr = arrays[run.layers[0]]
        n_samples = min(n_samples, first_arr.shape[3])
        self._summary.methods[variant] = method
        self._summary.runs.setdefault(variant, set()).add(str(run.path))
        sels, rows = [], []
        for k in range(n_samples):
            prompt, seed = _sample_info(run, k)
            sel = None
            if self.map_metrics & set(MAP_METRICS):
                try:
                    sel = select_tokens(run_parse(run, k, self._known_parses))
                except AttnlensError as exc:
                    self.notes.append(f"{run.path}: no parse for {prompt!r} ({exc.message}); token metrics skipped")
                    sel = Selection((), (), (), (), len(run.tokens[k]) - 2 if run.tokens else 0)
            sels.append(sel)
            rows.append(_Rows({"run": str(run.path), "method": method, "variant": variant, "prompt": prompt,
                               "seed": seed, "sample": k}, self._summary))
        want_maps = self.map_metrics & set(MAP_METRICS)
        if want_maps and (plan.emit or plan.aggregates):
            by_phase: dict[str, list[tuple[int, int]]] = {}
            for (phase, it), steps in records.items():
                if self.phases is not None and phase not in self.phases:
                    continue
                by_phase.setdefault(phase, []).extend(
                    (s, it) for s in steps if self._step_ok(s) and (last is None or s <= last))
            for phase in sorted(by_phase, key=PHASES.index):
                for batch in self._batches(plan, sorted(by_phase[phase])):
                    self._map_batch(plan, phase, batch, timesteps, sels, rows)
                    for r in rows:
                        if r.n:
                            self.rows += r.n
                            yield r.table()
        for k in range(n_samples):
            self._trajectory(run, k, last, timesteps, rows[k])
            self._scalars(run, k, last, timesteps, rows[k])
            if rows[k].n:
                self.rows += rows[k].n
                yield rows[k].table()

    def _batches(self, plan: LayerPlan, recs: list[tuple[int, int]]) -> Iterator[list[tuple[int, int]]]:
        """Split (step, iteration) records so that one layer's batch holds about ``batch_elements`` values."""
        if not recs:
            return
        per_rec = 0
        for n in plan.read:
            per_rec = max(per_rec, int(np.prod(self._arrays[n].shape[3:])))
        for _, _, size in plan.aggregates:
            per_rec = max(per_rec, int(np.prod(self._arrays[plan.read[0]].shape[3:-2])) * size[0] * size[1])
        b = max(1, self.batch_elements // max(per_rec, 1))
        for i in range(0, len(recs), b):
            yield recs[i:i + b]

    def _layer_job(self, layer: str, recs: list[tuple[int, int]], ph: int, sels: list[Selection | None],
                   emit: bool, keep: bool) -> tuple[list[torch.Tensor] | None, list[dict[str, MetricBlock] | None]]:
        """Worker: read one layer's batch, average heads, compute its metrics (if emitted)."""
        data = _read_records(self._arrays[layer], recs, ph, self._readers.get(layer))  # (R, sample, head, token, h, w)
        xs = [data[:, k, 0] if data.shape[2] == 1 else data[:, k].mean(dim=1) for k in range(len(sels))]
        wanted = self.map_metrics & set(MAP_METRICS)
        results = [map_metrics(x, sel, wanted) if emit and sel is not None else None for x, sel in zip(xs, sels)]
        return (xs if keep else None), results

    def _map_batch(self, plan: LayerPlan, phase: str, recs: list[tuple[int, int]], timesteps: np.ndarray,
                   sels: list[Selection | None], rows: list[_Rows]) -> None:
        from collections import deque

        ph = PHASES.index(phase)
        st = np.asarray([r[0] for r in recs], dtype=np.int64)
        its = np.asarray([r[1] for r in recs], dtype=np.int32)
        ts = np.array([timesteps[s] if s < len(timesteps) else np.nan for s in st], dtype=np.float64)
        n_samples = len(rows)
        # Aggregates are linear: sum the layers of each resolution once, then resample each resolution's sum
        # (not every layer) for an aggregate over several resolutions.
        groups: dict[tuple[int, int], list[str]] = {}
        for layer in plan.read:
            groups.setdefault(tuple(self._arrays[layer].shape[-2:]), []).append(layer)
        needed = {n for _, mem, _ in plan.aggregates for n in mem}
        sums: dict[tuple[tuple[int, int], int], torch.Tensor] = {}
        order = [(hw, layer) for hw, layers in groups.items() for layer in layers]
        # Layers are computed by the worker pool, a few in flight (bounded memory); results are consumed in order,
        # so the table is the same whatever the number of workers.
        window = max(1, self.workers)
        todo = iter(order)
        pending: deque = deque()

        def submit() -> None:
            item = next(todo, None)
            if item is not None:
                hw, layer = item
                pending.append((hw, layer, self._pool.submit(self._layer_job, layer, recs, ph, sels,
                                                             layer in plan.emit, layer in needed)))

        for _ in range(window):
            submit()
        while pending:
            hw, layer, fut = pending.popleft()
            xs, results = fut.result()
            submit()
            for k in range(n_samples):
                if results[k] is not None:
                    self._add_rows(rows[k], results[k], st, ts, phase, its, layer, int(hw[0]))
                if xs is not None:
                    key = (hw, k)
                    sums[key] = xs[k].clone() if key not in sums else sums[key].add_(xs[k])
            del xs, results
        wanted = self.map_metrics & set(MAP_METRICS)
        jobs = []
        for name, mem, size in plan.aggregates:
            mem_set = set(mem)
            for k in range(n_samples):
                parts = []
                for hw, layers in groups.items():
                    inside = [n for n in layers if n in mem_set]
                    if not inside:
                        continue
                    if len(inside) == len([n for n in layers if n in needed]):
                        parts.append(sums[(hw, k)])
                    else:  # an aggregate over a subset of this resolution's summed layers: sum them again
                        parts.append(sum(_read_records(self._arrays[n], recs, ph)[:, k].mean(dim=1) for n in inside))
                if parts and sels[k] is not None:  # resampling and metrics run in the worker pool
                    jobs.append((k, name, int(size[0]),
                                 self._pool.submit(_aggregate_metrics, parts, size, len(mem), sels[k], wanted)))
        for k, name, res, fut in jobs:
            self._add_rows(rows[k], fut.result(), st, ts, phase, its, name, res)

    def _add_rows(self, rows: _Rows, results: dict[str, MetricBlock], st, ts, phase, its, layer, res) -> None:
        for metric, (values, labels, roles) in results.items():
            rows.add(st, ts, phase, its, layer, res, metric, values, labels, roles)

    def _trajectory(self, run: Run, k: int, last: int | None, timesteps: np.ndarray, rows: _Rows) -> None:
        if not self.map_metrics & set(TRAJECTORY_METRICS):
            return
        ref = self._references.get(self._ref_key(run, k))
        if ref is None:
            return
        ref_run, rk = ref
        a, b = run.latents(), ref_run.latents()
        if a is None or b is None or a.shape[2:] != b.shape[2:]:
            return
        n = min(a.shape[0], b.shape[0], (last + 1) if last is not None else a.shape[0])
        steps = np.asarray([s for s in range(n) if self._step_ok(s)], dtype=np.int64)
        if steps.size == 0:
            return
        d = M.latent_drift(a[steps, k].astype(np.float64), b[steps, rk].astype(np.float64))
        ts = timesteps[steps] if len(timesteps) >= n else np.full(len(steps), np.nan)
        res = int(a.shape[-2])
        for metric, v in (("latent_drift", d.l2), ("latent_drift_rel", d.relative)):
            if metric in self.map_metrics:
                rows.add(steps, ts, "sample", 0, "latent", res, metric, np.asarray(v)[:, None], ["-"], ["latent"])

    def _scalars(self, run: Run, k: int, last: int | None, timesteps: np.ndarray, rows: _Rows) -> None:
        if self.scalar_patterns is not None and not self.scalar_patterns:
            return
        for name, arr in sorted(run.scalars().items()):
            if self.scalar_patterns is not None and not any(fnmatch.fnmatch(name, p) for p in self.scalar_patterns):
                continue
            if k >= arr.shape[2]:
                continue
            v = arr[:, :, k]
            s_idx, i_idx = np.nonzero(np.isfinite(v))
            keep = np.array([self._step_ok(int(s)) and (last is None or s <= last) for s in s_idx], dtype=bool)
            s_idx, i_idx = s_idx[keep], i_idx[keep]
            if s_idx.size == 0:
                continue
            ts = np.array([timesteps[s] if s < len(timesteps) else np.nan for s in s_idx])
            rows.add(s_idx, ts, "guidance", i_idx.astype(np.int32), "-", 0, SCALAR_PREFIX + name,
                     v[s_idx, i_idx].astype(np.float64)[:, None], ["-"], ["scalar"])


def _timesteps(run: Run) -> np.ndarray:
    try:
        return np.asarray(run.timesteps(), dtype=np.float64)
    except Exception:  # noqa: BLE001  (a run without the timestep array: NaN timesteps)
        return np.zeros(0)


# ------------------------------------------------------------------------------------------------------ public API
def analyze_runs(paths: Sequence[str | Path] | str | Path, partial: bool = False, metrics: Sequence[str] | None = None,
                 layers: Sequence[str | int] | None = None, steps: Any = None,
                 phases: Sequence[str] | None = None):
    """The whole table of ``paths`` as one pandas DataFrame (columns :data:`COLUMNS`).

    For big runs prefer :func:`write_parquet` (streams to disk) or ``Analysis(...).frames()``.

    Examples::

        >>> import attnlens
        >>> pipe = attnlens.load_pipeline("attnlens-tiny")
        >>> for method in ("none", "syngen"):
        ...     _ = attnlens.sample(pipe, "a red crown", method=method, out=f"runs/{method}", num_inference_steps=4)
        >>> df = analyze_runs("runs/", metrics=["jsd", "leak_in"], layers=["all"])
        >>> df.query("role == 'bound'").groupby(["variant", "step"]).value.mean()       # doctest: +ELLIPSIS
        variant  step
        none     0       ...
        syngen   0       ...
        Name: value, dtype: float64
    """
    import pandas as pd
    import pyarrow as pa

    a = Analysis(paths, partial=partial, metrics=metrics, layers=layers, steps=steps, phases=phases)
    tables = list(a.tables())
    if not tables:
        return _schema().empty_table().to_pandas()
    return pa.concat_tables(tables).to_pandas()


@dataclass
class AnalysisReport:
    """What :func:`write_parquet` did: ``rows`` written to ``path``, ``runs`` analysed, ``notes`` (skipped or
    partial runs), and the per-variant ``summary`` (DataFrame)."""

    path: Path | None
    rows: int
    runs: int
    notes: list[str]
    summary: Any


def write_parquet(source: Analysis | Sequence[str | Path] | str | Path, path: str | Path, *,
                  row_group_rows: int = 250_000, **kwargs: Any) -> AnalysisReport:
    """Stream an analysis into a Parquet file (one ``ParquetWriter``, row groups of about ``row_group_rows``).

    ``source`` is an :class:`Analysis` or the paths to analyse (then ``kwargs`` go to :class:`Analysis`). The file
    is written to a temporary name and renamed at the end, so an interrupted analysis leaves no partial table.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    analysis = source if isinstance(source, Analysis) else Analysis(source, **kwargs)
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    os.close(fd)
    schema = _schema()
    buf: list[Any] = []
    n_buf = 0
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for t in analysis.tables():
                buf.append(t)
                n_buf += t.num_rows
                if n_buf >= row_group_rows:
                    writer.write_table(pa.concat_tables(buf).combine_chunks())
                    buf, n_buf = [], 0
            if buf:
                writer.write_table(pa.concat_tables(buf).combine_chunks())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return AnalysisReport(path, analysis.rows, len(analysis.runs), analysis.notes, analysis.summary())


def read_table(path: str | Path, *, metrics: Sequence[str] | None = None, layers: Sequence[str] | None = None,
               phases: Sequence[str] | None = None, columns: Sequence[str] | None = None):
    """Read a table written by :func:`write_parquet`. ``metrics`` (exact names) is pushed down to Parquet;
    ``layers`` and ``phases`` select map rows only (trajectory and scalar rows are kept, as in :class:`Analysis`)."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise AttnlensError(f"'{path}' does not exist",
                            hint="write one with: attnlens analyze runs/ --out metrics.parquet")
    filters = [("metric", "in", list(metrics))] if metrics else None
    try:
        table = pq.read_table(path, filters=filters, columns=list(columns) if columns else None)
    except Exception as exc:  # noqa: BLE001  (not a parquet file, wrong schema)
        raise AttnlensError(f"cannot read '{path}' as a metrics table ({type(exc).__name__})",
                            hint="pass a file written by attnlens analyze, or a folder of runs") from exc
    df = table.to_pandas()
    missing = [c for c in ("metric", "layer", "phase", "value") if c not in df.columns]
    if missing and columns is None:
        raise AttnlensError(f"'{path}' is not a metrics table (no column '{missing[0]}')",
                            hint="pass a file written by attnlens analyze")
    special = df["layer"].isin(["latent", "-"]) if "layer" in df.columns else None
    if layers and special is not None:
        df = df[special | df["layer"].isin([str(x) for x in layers])]
        special = df["layer"].isin(["latent", "-"])
    if phases and special is not None:
        df = df[special | df["phase"].isin(list(phases))]
    return df


def load_table(sources: Sequence[str | Path] | str | Path, *, partial: bool = False,
               metrics: Sequence[str] | None = None, layers: Sequence[str | int] | None = None, steps: Any = None,
               phases: Sequence[str] | None = None, notes: list[str] | None = None):
    """A metrics DataFrame from Parquet files (``*.parquet``) and/or run folders/roots (analysed on the fly with
    only the requested metrics, layers, steps and phases). Used by ``compare`` and ``figure``."""
    import pandas as pd

    if isinstance(sources, (str, Path)):
        sources = [sources]
    frames = []
    run_paths = []
    for s in sources:
        p = Path(s)
        if p.suffix == ".parquet" or (p.is_file() and not is_run(p)):
            df = read_table(p, layers=[str(x) for x in layers] if layers else None, phases=phases)
            if metrics is not None and len(df):
                chosen, scal = resolve_metrics(metrics)
                keep = df.metric.isin(chosen)
                if scal:
                    sc = df.metric.str.startswith(SCALAR_PREFIX)
                    names = df.metric.str.slice(len(SCALAR_PREFIX))
                    keep |= sc & names.map(lambda n: any(fnmatch.fnmatch(n, q) for q in scal))
                df = df[keep]
            if steps is not None:
                ok = _step_filter(steps)
                df = df[df.step.map(ok)]
            frames.append(df)
        else:
            run_paths.append(p)
    if run_paths:
        a = Analysis(run_paths, partial=partial, metrics=metrics, layers=layers, steps=steps, phases=phases)
        frames.extend(a.frames())
        if notes is not None:
            notes.extend(a.notes)
    frames = [f for f in frames if len(f)]
    if not frames:
        return _schema().empty_table().to_pandas()
    return pd.concat(frames, ignore_index=True)


def format_summary(summary) -> str:
    """The per-variant summary as plain text: one column per variant, one row per headline metric (what
    ``attnlens analyze`` prints; numbers with 3 significant digits)."""
    from .compare import fmt

    if summary is None or not len(summary):
        return "(no rows)"
    t = summary.set_index("variant").drop(columns=["method"]).T
    lines = []
    width0 = max(len(str(i)) for i in t.index)
    cols = [str(c) for c in t.columns]
    widths = [max(len(c), 9) for c in cols]
    lines.append(" " * width0 + "  " + "  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    for name, row in t.iterrows():
        cells = [str(int(v)) if name == "runs" else fmt(float(v)) for v in row.to_numpy()]
        lines.append(str(name).ljust(width0) + "  " + "  ".join(c.rjust(w) for c, w in zip(cells, widths)))
    return "\n".join(lines)


__all__ = [
    "AGGREGATE_ALL", "Analysis", "AnalysisReport", "COLUMNS", "COLUMNS_DOC", "HEADLINE", "LayerPlan", "MAP_METRICS",
    "METRICS", "METRIC_INFO", "MODIFIER_METRICS", "PAIR_METRICS", "PROMPT_METRICS", "ROLES", "SCALAR_PREFIX",
    "Selection", "TOKEN_METRICS", "TRAJECTORY_METRICS", "TokenPair", "TokenUnit", "analyze_runs",
    "available_records", "discover_runs", "format_summary", "layer_maps", "load_table", "map_metrics",
    "otsu_masks", "otsu_thresholds", "plan_layers", "read_table", "resolve_metrics", "run_parse",
    "select_tokens", "unit_maps", "variant_label", "write_parquet",
]
