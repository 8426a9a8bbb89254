"""Vectorised map metrics: every metric of a batch of records at once (float64 torch), each the formula of its
:mod:`attnlens.metrics` reference, which the tests compare it with."""

from __future__ import annotations

import inspect
import math
from typing import Iterable

import numpy as np
import torch

from .. import metrics as M
from ..vocab import MAP_METRICS, MODIFIER_METRICS, PAIR_METRICS
from .tokens import Selection, unit_maps


otsu_thresholds = M.otsu_thresholds  # one batched Otsu (skimage-exact), defined beside the metrics it serves


def otsu_masks(maps: torch.Tensor) -> torch.Tensor:
    """Otsu regions ``p > otsu(p)`` of the spatial distributions p of ``maps`` (``(..., h, w)`` → bool): the same as
    ``attnlens.metrics.entity_regions(maps, "otsu")``."""
    return M.entity_regions(maps, "otsu")


MetricBlock = tuple[np.ndarray, list[str], list[str]]  # values (S, n), token labels (n,), roles (n,)


SYM_KL_EPS = inspect.signature(M.symmetric_kl).parameters["eps"].default  # metrics.symmetric_kl's smoothing


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
