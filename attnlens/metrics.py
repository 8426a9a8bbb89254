"""Metrics on cross-attention maps: normalisations, overlap, entropy, total variation, leakage, drift.

Conventions (see ``docs/metrics.md`` for every formula, range and edge case):

* **Arrays in, same kind out.** Every function computes with torch. ``torch.Tensor`` inputs give tensors back (same
  device; float16/bfloat16/integer inputs are computed in float32, gradients flow where the operation allows);
  numpy arrays (or lists) give numpy back (computed in float64; a 0-d result is a numpy scalar). If any input
  is a tensor, the result is a tensor.
* **Shapes.** Spatial dimensions are always the last two, ``(..., h, w)``; leading dimensions broadcast like
  numpy. Functions that need the token axis take ``(..., token, h, w)`` (a recorded layer ``(head, token, y, x)``
  or a head-averaged ``(token, y, x)``), token axis at ``-3``.
* **Normalisations.** ``raw``: the probabilities over the 77 text positions as recorded; ``prompt``: renormalised
  over the prompt tokens at every pixel; ``spatial``: each token's map divided by its sum over pixels. Every
  metric's docstring says which one it uses and applies it itself, so metrics can be fed raw maps.
* **Zero mass.** A map whose sum is 0 has no spatial distribution: its spatial normalisation is NaN and NaN
  propagates into every metric built on it (deliberately, instead of a made-up value).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch

from attnlens.maps import resample, spatial_normalize

ArrayLike = Any  # np.ndarray | torch.Tensor (or anything np.asarray accepts)

NORMALIZATIONS = ["raw", "prompt", "spatial"]
OVERLAP_METRICS = ["sym_kl", "jsd", "cosine", "intersection", "soft_iou", "otsu_iou"]
REGION_RULES = ["otsu", "mean", "quantile"]

_SPATIAL = (-2, -1)


# ----------------------------------------------------------------------------------------------- conversion helpers
def _prepare(*xs: ArrayLike) -> tuple[list[torch.Tensor], bool]:
    """Convert inputs to floating tensors of one dtype and device; the flag says "give numpy back"."""
    as_numpy = not any(isinstance(x, torch.Tensor) for x in xs)
    ts = [x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x)) for x in xs]
    device = next((x.device for x in xs if isinstance(x, torch.Tensor)), torch.device("cpu"))
    dtype = torch.float64 if as_numpy else torch.float32
    floats = [t.dtype for t in ts if t.dtype in (torch.float32, torch.float64)]
    if floats and not as_numpy:
        dtype = torch.float64 if torch.float64 in floats else torch.float32
    return [t.to(device=device, dtype=dtype) for t in ts], as_numpy


def _mask(x: ArrayLike, device: torch.device) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t.to(device=device, dtype=torch.bool)


def _out(t: torch.Tensor, as_numpy: bool) -> ArrayLike:
    if not as_numpy:
        return t
    a = t.detach().cpu().numpy()
    return a[()] if a.ndim == 0 else a


def _check_spatial(*ts: torch.Tensor) -> None:
    for t in ts:
        if t.ndim < 2:
            raise ValueError(f"expected maps of shape (..., h, w), got shape {tuple(t.shape)}")
    sizes = {tuple(t.shape[-2:]) for t in ts}
    if len(sizes) > 1:
        raise ValueError(
            f"maps differ in resolution {sorted(sizes)}; bring them to one size first "
            "(attnlens.metrics.match_resolution or resample_maps)"
        )


def _spatial(x: torch.Tensor) -> torch.Tensor:
    """Spatial distribution; a zero map gives NaN (0/0)."""
    return spatial_normalize(x)


def _prompt_mask(prompt_slice: slice | int | Sequence[int] | None, n_tokens: int, device: torch.device) -> torch.Tensor:
    if prompt_slice is None:
        sel: Any = slice(1, -1)
    elif isinstance(prompt_slice, (int, np.integer)):
        sel = slice(1, int(prompt_slice) + 1)
    else:
        sel = prompt_slice if isinstance(prompt_slice, slice) else list(prompt_slice)
    keep = torch.zeros(n_tokens, dtype=torch.bool, device=device)
    keep[sel] = True
    if not bool(keep.any()):
        raise ValueError(f"prompt_slice {prompt_slice!r} selects no token out of {n_tokens}")
    return keep


def _normalize(x: torch.Tensor, mode: str, prompt_slice: slice | int | Sequence[int] | None = None) -> torch.Tensor:
    if mode == "raw":
        return x
    if mode == "spatial":
        _check_spatial(x)
        return _spatial(x)
    if mode == "prompt":
        if x.ndim < 3:
            raise ValueError(f"'prompt' normalisation needs maps (..., token, h, w), got shape {tuple(x.shape)}")
        keep = _prompt_mask(prompt_slice, x.shape[-3], x.device)[:, None, None]
        kept = torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))
        return kept / kept.sum(dim=-3, keepdim=True)
    raise ValueError(f"unknown normalisation {mode!r}; choose one of {NORMALIZATIONS}")


# ----------------------------------------------------------------------------------------------- normalisations
def normalize(maps: ArrayLike, mode: str, prompt_slice: slice | int | Sequence[int] | None = None) -> ArrayLike:
    """Normalise recorded maps: ``raw``, ``prompt`` or ``spatial``.

    * ``raw``: unchanged, A[k, i, j] (softmax over the 77 text positions as recorded).
    * ``prompt``: A'[k, i, j] = A[k, i, j] / Σ_{k'∈prompt} A[k', i, j] for k in the prompt, 0 elsewhere. The token
      axis keeps its length so position indices stay valid. ``prompt_slice``: ``None`` = ``slice(1, -1)`` (recorded
      tokens 0..T+1, i.e. ``<sot>``, the T word pieces, ``<eot>``); an int T = ``slice(1, T+1)`` (use it for maps
      with all 77 positions); or an explicit slice / list of positions. A pixel with no prompt mass gives NaN.
    * ``spatial``: A'[..., i, j] = A[..., i, j] / Σ_ij A (each map a distribution over pixels; a zero map gives NaN).

    Shapes: ``(..., token, h, w)`` → same (``raw``/``spatial`` accept any ``(..., h, w)``).
    """
    (x,), as_numpy = _prepare(maps)
    return _out(_normalize(x, mode, prompt_slice), as_numpy)


# ----------------------------------------------------------------------------------------------- overlap
def _kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Σ p ln(p/q) over pixels with 0·ln 0 = 0 (inf where q = 0 < p)."""
    return (torch.xlogy(p, p) - torch.xlogy(p, q)).sum(dim=_SPATIAL)


def _smooth(p: torch.Tensor, eps: float) -> torch.Tensor:
    if eps <= 0:
        return p
    n = p.shape[-2] * p.shape[-1]
    return (p + eps) / (1.0 + n * eps)


def symmetric_kl(P: ArrayLike, Q: ArrayLike, eps: float = 1e-8) -> ArrayLike:
    """Symmetric KL divergence (SynGen's distance) of the spatial distributions.

    d(P, Q) = ½ [KL(p‖q) + KL(q‖p)],  KL(p‖q) = Σ_ij p_ij ln(p_ij / q_ij),
    with p = (P/ΣP + eps) / (1 + h·w·eps) (and likewise q): the ``eps`` smoothing keeps the value finite on
    disjoint supports; ``eps=0`` is exactly SynGen's distance (inf when the supports differ).

    Loss counterpart: ``attnlens.methods._shared.released_symmetric_kl`` (SynGen's guidance distance, the released
    numerics: no renormalisation, no eps, logs of probabilities clamped to [ε, 1 − ε] as
    ``torch.distributions.Categorical``).

    Normalisation: spatial. Range: [0, ∞); 0 iff p = q. Zero map: NaN.
    Shapes: ``(..., h, w)`` × ``(..., h, w)`` → ``(...)`` (broadcast).
    """
    (p, q), as_numpy = _prepare(P, Q)
    _check_spatial(p, q)
    p, q = _smooth(_spatial(p), eps), _smooth(_spatial(q), eps)
    return _out(0.5 * (_kl(p, q) + _kl(q, p)), as_numpy)


def jensen_shannon(P: ArrayLike, Q: ArrayLike, eps: float = 0.0) -> ArrayLike:
    """Jensen–Shannon divergence (natural log) of the spatial distributions.

    JSD(p, q) = ½ KL(p‖m) + ½ KL(q‖m),  m = ½(p + q),  with 0·ln 0 = 0, so no eps is needed (default 0);
    ``eps > 0`` smooths p and q as in :func:`symmetric_kl`.

    Loss counterpart: ``attnlens.methods._shared.released_jensen_shannon`` (Divide & Bind's binding term, SynGen's
    ``distance="jensen_shannon"``): the same formula on the inputs as given, not renormalised, logs clamped at the
    smallest normal float.

    Normalisation: spatial. Range: [0, ln 2]; 0 for identical maps, ln 2 for disjoint supports. Zero map: NaN.
    Shapes: ``(..., h, w)`` × ``(..., h, w)`` → ``(...)`` (broadcast).
    """
    (p, q), as_numpy = _prepare(P, Q)
    _check_spatial(p, q)
    p, q = _smooth(_spatial(p), eps), _smooth(_spatial(q), eps)
    m = 0.5 * (p + q)
    return _out(0.5 * (_kl(p, m) + _kl(q, m)), as_numpy)


def cosine_similarity(P: ArrayLike, Q: ArrayLike) -> ArrayLike:
    """Cosine similarity of the flattened maps: Σ P·Q / (‖P‖₂ ‖Q‖₂).

    Normalisation: spatial (the value is scale-invariant, so raw maps give the same number).
    Range: [0, 1] for non-negative maps; 1 for proportional maps, 0 for disjoint supports. Zero map: NaN.
    Shapes: ``(..., h, w)`` × ``(..., h, w)`` → ``(...)`` (broadcast).
    """
    (p, q), as_numpy = _prepare(P, Q)
    _check_spatial(p, q)
    num = (p * q).sum(dim=_SPATIAL)
    den = torch.linalg.vector_norm(p, dim=_SPATIAL) * torch.linalg.vector_norm(q, dim=_SPATIAL)
    return _out(num / den, as_numpy)


def histogram_intersection(P: ArrayLike, Q: ArrayLike) -> ArrayLike:
    """Histogram intersection of the spatial distributions: Σ_ij min(p_ij, q_ij).

    Normalisation: spatial. Range: [0, 1]; 1 for identical distributions, 0 for disjoint supports. Zero map: NaN.
    Shapes: ``(..., h, w)`` × ``(..., h, w)`` → ``(...)`` (broadcast).
    """
    (p, q), as_numpy = _prepare(P, Q)
    _check_spatial(p, q)
    return _out(torch.minimum(_spatial(p), _spatial(q)).sum(dim=_SPATIAL), as_numpy)


def soft_iou(P: ArrayLike, Q: ArrayLike) -> ArrayLike:
    """Soft IoU of the spatial distributions: Σ_ij min(p_ij, q_ij) / Σ_ij max(p_ij, q_ij).

    Normalisation: spatial. Range: [0, 1]; 1 for identical distributions, 0 for disjoint supports. Zero map: NaN.
    Shapes: ``(..., h, w)`` × ``(..., h, w)`` → ``(...)`` (broadcast).
    """
    (p, q), as_numpy = _prepare(P, Q)
    _check_spatial(p, q)
    p, q = _spatial(p), _spatial(q)
    return _out(torch.minimum(p, q).sum(dim=_SPATIAL) / torch.maximum(p, q).sum(dim=_SPATIAL), as_numpy)


def otsu_iou(P: ArrayLike, Q: ArrayLike) -> ArrayLike:
    """IoU of the Otsu masks: |M_P ∩ M_Q| / |M_P ∪ M_Q|, M = {ij : p_ij > threshold_otsu(p)} per map.

    Each map gets its own threshold (:func:`otsu_thresholds`, = ``skimage.filters.threshold_otsu``, 256 bins). A
    constant map (zero maps included) has no Otsu split and an empty mask; the IoU is NaN when both masks are
    empty, 0 when one is.

    Normalisation: spatial (Otsu is scale-equivariant, so raw maps give the same masks).
    Range: [0, 1]. Shapes: ``(..., h, w)`` × ``(..., h, w)`` → ``(...)`` (broadcast).
    """
    (p, q), as_numpy = _prepare(P, Q)
    _check_spatial(p, q)
    mp, mq = _regions(p, "otsu", 0.0), _regions(q, "otsu", 0.0)
    inter = (mp & mq).sum(dim=_SPATIAL).to(p.dtype)
    union = (mp | mq).sum(dim=_SPATIAL).to(p.dtype)
    return _out(inter / union, as_numpy)


_OVERLAP: dict[str, Callable[..., ArrayLike]] = {
    "sym_kl": symmetric_kl,
    "jsd": jensen_shannon,
    "cosine": cosine_similarity,
    "intersection": histogram_intersection,
    "soft_iou": soft_iou,
    "otsu_iou": otsu_iou,
}


def overlap(P: ArrayLike, Q: ArrayLike, metric: str, **kwargs: Any) -> ArrayLike:
    """Dispatch to the overlap metric named ``metric`` (one of :data:`OVERLAP_METRICS`); ``kwargs`` go to it.

    Shapes: ``(..., h, w)`` × ``(..., h, w)`` → ``(...)`` (broadcast).
    """
    try:
        fn = _OVERLAP[metric]
    except KeyError:
        raise ValueError(f"unknown overlap metric {metric!r}; choose one of {OVERLAP_METRICS}") from None
    return fn(P, Q, **kwargs)


# ----------------------------------------------------------------------------------------------- entropy
def spatial_entropy(maps: ArrayLike, normalized: bool = False) -> ArrayLike:
    """Shannon entropy (natural log) of each map's spatial distribution.

    H = −Σ_ij p_ij ln p_ij (0·ln 0 = 0); ``normalized=True`` gives H / ln(h·w).

    Loss counterpart: ``attnlens.methods._shared.clamped_entropy`` (SynGen + entropy): the same formula on maps
    already normalised by the caller, with the log clamped at the smallest normal float (finite gradients at 0).

    Normalisation: spatial. Range: [0, ln(h·w)] (normalised: [0, 1]); 0 for a one-hot map, the maximum for a
    uniform map. Zero map: NaN; a 1×1 map normalised: NaN.
    Shapes: ``(..., h, w)`` → ``(...)``.
    """
    (x,), as_numpy = _prepare(maps)
    _check_spatial(x)
    p = _spatial(x)
    h = -torch.xlogy(p, p).sum(dim=_SPATIAL)
    if normalized:
        h = h / math.log(x.shape[-2] * x.shape[-1]) if x.shape[-2] * x.shape[-1] > 1 else h * float("nan")
    return _out(h, as_numpy)


class TokenEntropy(NamedTuple):
    """Per-pixel token-allocation entropy ``map`` ``(..., h, w)`` and its mean over pixels ``mean`` ``(...)``."""

    map: ArrayLike
    mean: ArrayLike


def token_allocation_entropy(
    maps: ArrayLike, prompt_slice: slice | int | Sequence[int] | None = None, normalized: bool = False
) -> TokenEntropy:
    """Entropy of how each pixel splits its attention among the prompt tokens.

    H[i, j] = −Σ_{k∈prompt} a_k[i, j] ln a_k[i, j] with a = ``prompt`` normalisation (see :func:`normalize` for
    ``prompt_slice``); ``normalized=True`` divides by ln T (T = number of prompt tokens). ``mean`` is the mean over
    pixels, ignoring NaN pixels (pixels with no prompt mass).

    Normalisation: prompt. Range: [0, ln T] (normalised [0, 1]); 0 where one token takes the whole pixel.
    Shapes: ``(..., token, h, w)`` → ``TokenEntropy(map=(..., h, w), mean=(...))``.
    """
    (x,), as_numpy = _prepare(maps)
    a = _normalize(x, "prompt", prompt_slice)
    h = -torch.xlogy(a, a).sum(dim=-3)
    if normalized:
        t = int(_prompt_mask(prompt_slice, x.shape[-3], x.device).sum())
        h = h / math.log(t) if t > 1 else h * float("nan")
    return TokenEntropy(_out(h, as_numpy), _out(torch.nanmean(h, dim=_SPATIAL), as_numpy))


# ----------------------------------------------------------------------------------------------- total variation
def tv_paper(maps: ArrayLike, spatial: bool = True) -> ArrayLike:
    """Total variation as in the Divide & Bind paper (anisotropic, finite differences, summed).

    TV(A) = Σ_{i<h−1, j} |A[i+1, j] − A[i, j]| + Σ_{i, j<w−1} |A[i, j+1] − A[i, j]|.

    Divide & Bind's loss with ``tv="paper"`` calls this with ``spatial=False``
    (``attnlens.methods.divide_bind.total_variation``): one implementation for the loss and the analysis.

    Normalisation: spatial by default (A = the map's spatial distribution); ``spatial=False`` uses the map as given.
    Range: [0, 4] on spatial distributions (each pixel's mass enters at most 4 differences); 0 for a constant map.
    Zero map: NaN (spatial) or 0 (``spatial=False``).
    Shapes: ``(..., h, w)`` → ``(...)``.
    """
    (x,), as_numpy = _prepare(maps)
    _check_spatial(x)
    a = _spatial(x) if spatial else x
    # horizontal first: the operation order (and so the gradient) of the Divide & Bind loss, which calls this
    dh = (a[..., :, 1:] - a[..., :, :-1]).abs().sum(dim=_SPATIAL)
    dv = (a[..., 1:, :] - a[..., :-1, :]).abs().sum(dim=_SPATIAL)
    return _out(dh + dv, as_numpy)


def tv_released(maps: ArrayLike, spatial: bool = True) -> ArrayLike:
    """Total variation as Divide & Bind's released code computes it (the vertical term compares with the last row).

    TV_rel(A) = mean_{i, j<w−1} |A[i, j+1] − A[i, j]|  +  mean_{1≤i≤h−1, j} |A[h−1, j] − A[i, j]|
    (the second mean runs over (h−1)·w entries and includes the zero row i = h−1, as ``L1Loss(A[-1:], A[1:])``).
    The released loss applies it to the ×100 token-softmaxed, Gaussian-smoothed map: Divide & Bind's loss calls
    this with ``spatial=False`` (``attnlens.methods.divide_bind.total_variation``), one implementation for the loss
    and the analysis.

    Normalisation: spatial by default; ``spatial=False`` uses the map as given. Range: [0, ∞) (≤ 2·max A);
    0 for a constant map. Needs h, w ≥ 2 (NaN otherwise).
    Shapes: ``(..., h, w)`` → ``(...)``.
    """
    (x,), as_numpy = _prepare(maps)
    _check_spatial(x)
    a = _spatial(x) if spatial else x
    # the operation order (and so the gradient) of the Divide & Bind loss, which calls this
    dh = (a[..., :, 1:] - a[..., :, :-1]).abs().mean(dim=_SPATIAL)
    dv = (a[..., -1:, :] - a[..., 1:, :]).abs().mean(dim=_SPATIAL)
    return _out(dh + dv, as_numpy)


# ----------------------------------------------------------------------------------------------- Otsu
def otsu_thresholds(maps: ArrayLike, nbins: int = 256) -> torch.Tensor:
    """Otsu threshold of every ``(h, w)`` map, all maps at once: ``(..., h, w)`` → ``(...)`` float64 tensor (CPU).

    The value of ``skimage.filters.threshold_otsu(map)`` on the map's float64 values, bit for bit (the unit tests
    compare them): ``nbins`` equal bins over [min, max] binned as ``np.histogram`` bins them (its ±1 index
    corrections at bin edges included), bin centres as candidate thresholds, the first one that maximises the
    between-class variance w₁(t) w₂(t) (μ₁(t) − μ₂(t))². A map that is constant or holds a non-finite value has no
    split and gets ``+inf`` (so ``map > threshold`` is empty). The region rule ``"otsu"`` (:func:`entity_regions`,
    :func:`otsu_iou`, the leakage metrics) uses it, one batched computation instead of a per-map skimage loop.
    """
    x = maps if isinstance(maps, torch.Tensor) else torch.as_tensor(np.asarray(maps))
    lead = x.shape[:-2]
    a = x.detach().cpu().reshape(-1, x.shape[-2] * x.shape[-1]).to(torch.float64)
    n = a.shape[0]
    if n == 0:
        return torch.empty(lead, dtype=torch.float64)
    lo, hi = a.aminmax(dim=1)  # a NaN anywhere makes both NaN
    valid = torch.isfinite(lo) & torch.isfinite(hi) & (hi > lo)
    lo = torch.where(valid, lo, 0.0)
    hi = torch.where(valid, hi, 1.0)
    span = (hi - lo)[:, None]
    f = (a - lo[:, None]).div_(span).mul_(nbins)  # np.histogram's ((a − first edge) / span) · nbins
    if not bool(valid.all()):
        f = torch.where(valid[:, None], f, 0.0)
    idx = f.to(torch.int64)
    # np.histogram then moves an index by one where the value lies on the wrong side of its linspace edge; that can
    # only happen within rounding of an edge, so only pixels whose fractional bin position is that close are checked
    frac = f.sub_(idx)
    near = (frac < 1e-6) | (frac > 1 - 1e-6)
    idx.clamp_(max=nbins - 1)
    r, c = near.nonzero(as_tuple=True)
    if r.numel():
        width = span[:, 0] / nbins
        v, k = a[r, c], idx[r, c]
        k = k - (v < k.to(torch.float64) * width[r] + lo[r]).to(torch.int64)
        upper = torch.where(k + 1 == nbins, hi[r], (k + 1).to(torch.float64) * width[r] + lo[r])
        k = k + ((v >= upper) & (k != nbins - 1)).to(torch.int64)
        idx[r, c] = k
    idx += (torch.arange(n) * nbins)[:, None]
    counts = torch.bincount(idx.reshape(-1), minlength=n * nbins).reshape(n, nbins).to(torch.float64)
    edges = torch.arange(nbins + 1, dtype=torch.float64)[None, :] * (span / nbins) + lo[:, None]  # np.linspace
    edges[:, -1] = hi
    centers = (edges[:, :-1] + edges[:, 1:]) / 2.0
    w1 = counts.cumsum(dim=1)
    w2 = counts.flip(1).cumsum(dim=1).flip(1)
    weighted = counts * centers
    m1 = weighted.cumsum(dim=1) / w1
    m2 = weighted.flip(1).cumsum(dim=1).flip(1) / w2
    between = w1[:, :-1] * w2[:, 1:] * (m1[:, :-1] - m2[:, 1:]) ** 2
    thr = torch.gather(centers, 1, between.argmax(dim=1)[:, None])[:, 0]
    return torch.where(valid, thr, math.inf).reshape(lead)


# ----------------------------------------------------------------------------------------------- leakage
def _regions(x: torch.Tensor, rule: str, q: float) -> torch.Tensor:
    """Boolean masks ``p > threshold(p)`` of the spatial distributions p of ``x`` (``(..., h, w)``)."""
    p = _spatial(x)
    flat = p.reshape(-1, p.shape[-2] * p.shape[-1])
    if rule == "otsu":
        thr_t = otsu_thresholds(p).reshape(-1).to(device=p.device, dtype=p.dtype)
    elif rule == "mean":
        thr_t = flat.mean(dim=-1)
    elif rule == "quantile":
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile q must be in [0, 1], got {q}")
        thr_t = torch.quantile(flat, q, dim=-1) if flat.shape[0] else flat.new_zeros(0)
    else:
        raise ValueError(f"unknown region rule {rule!r}; choose one of {REGION_RULES}")
    return (flat > thr_t[:, None]).reshape(p.shape)


def entity_regions(noun_maps: ArrayLike, rule: str = "otsu", q: float = 0.8) -> ArrayLike:
    """Boolean entity regions: pixels where a noun's spatial distribution p exceeds a per-map threshold.

    mask_ij = p_ij > t(p), with t = :func:`otsu_thresholds` (= ``skimage.filters.threshold_otsu``; ``rule="otsu"``,
    default), mean(p) = 1/(h·w) (``"mean"``) or the q-quantile of p's pixel values (``"quantile"``, default
    q = 0.8: roughly the top 20 %). The strict ``>`` makes a constant map (zero maps included) an empty region; a
    NaN map too.

    Normalisation: spatial (all three rules are scale-equivariant, so raw maps give the same masks).
    Shapes: ``(..., h, w)`` → bool ``(..., h, w)``.
    """
    (x,), as_numpy = _prepare(noun_maps)
    _check_spatial(x)
    return _out(_regions(x, rule, q), as_numpy)


def _union(regions: ArrayLike | Sequence[ArrayLike], device: torch.device) -> torch.Tensor:
    """Union over the entity axis (-3) of ``(..., k, h, w)``; a 2-D mask is one region; a list is stacked."""
    if isinstance(regions, (list, tuple)):
        if not regions:
            raise ValueError("no regions given")
        return torch.stack([_mask(r, device) for r in regions], dim=-3).any(dim=-3)
    m = _mask(regions, device)
    return m if m.ndim == 2 else m.any(dim=-3)


def leak_in_prompt(
    mod_map: ArrayLike, own_region: ArrayLike | None, other_regions: ArrayLike | Sequence[ArrayLike]
) -> ArrayLike:
    """Share of a modifier's attention on other entities (SynGen's "attribute leaks into another entity").

    leak_in = Σ_{ij ∈ R} p_ij,  R = (∪_k other_k) \\ own,  p = the modifier's spatial distribution.
    Pixels of its own noun's region are excluded from R (where entities overlap, attention there counts as
    correct binding); ``own_region=None`` excludes nothing.

    Normalisation: spatial. Range: [0, 1]; 1 when the modifier's mass lies entirely on another entity's region
    (outside its own). Zero modifier map: NaN.
    Shapes: ``mod_map (..., h, w)``, ``own_region`` bool ``(..., h, w)``, ``other_regions`` bool ``(..., k, h, w)``
    (entity axis at -3; a single 2-D mask is one region; a list of masks is stacked) → ``(...)``.
    """
    (m,), as_numpy = _prepare(mod_map)
    _check_spatial(m)
    p = _spatial(m)
    r = _union(other_regions, p.device)
    if own_region is not None:
        r = r & ~_mask(own_region, p.device)
    _check_spatial(p, r)
    return _out((p * r.to(p.dtype)).sum(dim=_SPATIAL), as_numpy)


def leak_out_of_prompt(mod_map: ArrayLike, all_regions: ArrayLike | Sequence[ArrayLike]) -> ArrayLike:
    """Share of a modifier's attention outside every entity region (SynGen's "leaks out of the prompt").

    leak_out = Σ_{ij ∉ ∪_k R_k} p_ij over the regions of all the prompt's entities (its own noun included).

    Normalisation: spatial. Range: [0, 1]; 1 when no mass falls on any entity region. Zero modifier map: NaN.
    Shapes: ``mod_map (..., h, w)``, ``all_regions`` bool ``(..., k, h, w)`` (as in :func:`leak_in_prompt`)
    → ``(...)``.
    """
    (m,), as_numpy = _prepare(mod_map)
    _check_spatial(m)
    p = _spatial(m)
    outside = ~_union(all_regions, p.device)
    _check_spatial(p, outside)
    return _out((p * outside.to(p.dtype)).sum(dim=_SPATIAL), as_numpy)


class Neglect(NamedTuple):
    """Peak, total mass and mean (mass / h·w) of a token's raw attention, each ``(...)``."""

    peak: ArrayLike
    mass: ArrayLike
    mean: ArrayLike


def neglect(maps: ArrayLike) -> Neglect:
    """How much attention a token gets at all (neglect: SynGen's/Attend-and-Excite's missing entity).

    peak = max_ij A[i, j];  mass = Σ_ij A[i, j];  mean = mass / (h·w) (comparable across resolutions).

    Normalisation: raw (spatial normalisation would erase exactly what this measures).
    Range: peak, mean ∈ [0, 1]; mass ∈ [0, h·w]. Low values mean a neglected token.
    Shapes: ``(..., h, w)`` → ``Neglect(peak, mass, mean)``, each ``(...)``.
    """
    (x,), as_numpy = _prepare(maps)
    _check_spatial(x)
    mass = x.sum(dim=_SPATIAL)
    peak = x.flatten(-2).amax(dim=-1)
    return Neglect(_out(peak, as_numpy), _out(mass, as_numpy), _out(mass / (x.shape[-2] * x.shape[-1]), as_numpy))


# ----------------------------------------------------------------------------------------------- resampling
def _resample_keep_mass(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    out = resample(x, size, mode=mode)
    if tuple(x.shape[-2:]) == size:
        return out
    before = x.sum(dim=_SPATIAL, keepdim=True)
    after = out.sum(dim=_SPATIAL, keepdim=True)
    scale = torch.where(after != 0, before / after, torch.zeros_like(after))
    return out * scale


def resample_maps(
    maps: ArrayLike, size: int | tuple[int, int], mode: str = "bilinear", renormalize: bool = True
) -> ArrayLike:
    """Resample maps to ``size`` with :func:`attnlens.maps.resample` (bilinear, ``align_corners=False``, by default).

    With ``renormalize`` (default) each map is rescaled so that Σ_ij out = Σ_ij in (a spatial distribution stays a
    distribution; a zero map stays zero). ``mode``: ``"bilinear"``, ``"area"`` or ``"nearest"``.

    Normalisation: none (mass-preserving; feed spatial distributions to get distributions).
    Shapes: ``(..., h, w)`` → ``(..., *size)``.
    """
    (x,), as_numpy = _prepare(maps)
    _check_spatial(x)
    hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    out = _resample_keep_mass(x, hw, mode) if renormalize else resample(x, hw, mode=mode)
    return _out(out, as_numpy)


def match_resolution(
    P: ArrayLike, Q: ArrayLike, size: int | tuple[int, int] | None = None, mode: str = "bilinear"
) -> tuple[ArrayLike, ArrayLike]:
    """Bring two map stacks to one resolution (default: the larger h and the larger w) with :func:`resample_maps`.

    Normalisation: none (mass-preserving, as :func:`resample_maps`).
    Shapes: ``(..., h1, w1)``, ``(..., h2, w2)`` → both ``(..., H, W)``.
    """
    (p, q), as_numpy = _prepare(P, Q)
    _check_spatial(p)
    _check_spatial(q)
    if size is None:
        hw = (max(p.shape[-2], q.shape[-2]), max(p.shape[-1], q.shape[-1]))
    else:
        hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    return _out(_resample_keep_mass(p, hw, mode), as_numpy), _out(_resample_keep_mass(q, hw, mode), as_numpy)


# ----------------------------------------------------------------------------------------------- trajectory
class Drift(NamedTuple):
    """Per-step L2 distance ``l2`` and ``relative`` = l2 / ‖b‖, each ``(step,)``."""

    l2: ArrayLike
    relative: ArrayLike


def latent_drift(latents_a: ArrayLike, latents_b: ArrayLike) -> Drift:
    """How far trajectory a drifts from trajectory b (e.g. guided vs plain run from the same seed).

    l2[s] = ‖a[s] − b[s]‖₂ over all non-step dimensions;  relative[s] = l2[s] / ‖b[s]‖₂
    (inf/NaN where ‖b[s]‖ = 0).

    Normalisation: n/a (latents). Range: [0, ∞).
    Shapes: ``(step, ...)`` × ``(step, ...)`` (same shape) → ``Drift(l2=(step,), relative=(step,))``.
    """
    (a, b), as_numpy = _prepare(latents_a, latents_b)
    if a.shape != b.shape or a.ndim < 1:
        raise ValueError(f"latent trajectories must have the same shape (step, ...), got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    n = a.shape[0]
    l2 = torch.linalg.vector_norm((a - b).reshape(n, -1), dim=-1)
    nb = torch.linalg.vector_norm(b.reshape(n, -1), dim=-1)
    return Drift(_out(l2, as_numpy), _out(l2 / nb, as_numpy))


# ----------------------------------------------------------------------------------------------- registry
def _info(normalization: str, range_: str, higher_is: str, description: str) -> dict[str, str]:
    return {"normalization": normalization, "range": range_, "higher_is": higher_is, "description": description}


#: name → {"normalization", "range", "higher_is", "description"}. ``higher_is`` refers to the usual use: a modifier
#: compared with its own noun (for overlap metrics), a modifier's map (for leakage); "n/a" when not a binding score.
METRIC_INFO: dict[str, dict[str, str]] = {
    "sym_kl": _info("spatial", "[0, inf)", "worse",
                    "Symmetric KL ½[KL(p‖q)+KL(q‖p)] of spatial distributions (SynGen's distance), eps-smoothed"),
    "jsd": _info("spatial", "[0, ln 2]", "worse", "Jensen–Shannon divergence of spatial distributions"),
    "cosine": _info("spatial", "[0, 1]", "better binding", "Cosine similarity of the flattened maps"),
    "intersection": _info("spatial", "[0, 1]", "better binding",
                          "Histogram intersection Σ min(p, q) of spatial distributions"),
    "soft_iou": _info("spatial", "[0, 1]", "better binding", "Soft IoU Σ min(p, q) / Σ max(p, q)"),
    "otsu_iou": _info("spatial", "[0, 1]", "better binding", "IoU of per-map Otsu-thresholded masks"),
    "entropy": _info("spatial", "[0, ln(h·w)]", "n/a",
                     "Shannon entropy −Σ p ln p of a token's spatial distribution"),
    "normalized_entropy": _info("spatial", "[0, 1]", "n/a", "Spatial entropy divided by ln(h·w)"),
    "token_entropy": _info("prompt", "[0, ln T]", "n/a",
                           "Per-pixel entropy of the attention split over prompt tokens, averaged over pixels"),
    "tv_paper": _info("spatial", "[0, 4]", "n/a",
                      "Total variation Σ|A[i+1,j]−A[i,j]| + |A[i,j+1]−A[i,j]| (Divide & Bind paper)"),
    "tv_released": _info("spatial", "[0, inf)", "n/a",
                         "Divide & Bind released TV: mean horizontal diff + mean |A[last row] − A[i]|, i ≥ 1"),
    "leak_in": _info("spatial", "[0, 1]", "worse",
                     "Share of a modifier's spatial mass on other entities' regions, outside its own noun's"),
    "leak_out": _info("spatial", "[0, 1]", "worse", "Share of a modifier's spatial mass outside every entity region"),
    "neglect_peak": _info("raw", "[0, 1]", "n/a", "Peak raw attention probability of a token (low = neglected)"),
    "neglect_mass": _info("raw", "[0, h·w]", "n/a", "Total raw attention of a token over pixels (low = neglected)"),
    "latent_drift": _info("n/a", "[0, inf)", "n/a", "Per-step L2 distance between two latent trajectories"),
    "latent_drift_rel": _info("n/a", "[0, inf)", "n/a", "Per-step L2 distance relative to ‖b‖"),
}

__all__ = [
    "METRIC_INFO", "NORMALIZATIONS", "OVERLAP_METRICS", "REGION_RULES", "Drift", "Neglect", "TokenEntropy",
    "cosine_similarity", "entity_regions", "histogram_intersection", "jensen_shannon", "latent_drift",
    "leak_in_prompt", "leak_out_of_prompt", "match_resolution", "neglect", "normalize", "otsu_iou", "otsu_thresholds",
    "overlap", "resample_maps", "soft_iou", "spatial_entropy", "symmetric_kl", "token_allocation_entropy",
    "tv_paper", "tv_released",
]
