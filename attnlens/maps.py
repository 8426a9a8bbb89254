"""Pure helpers on attention maps: layer/head aggregation, spatial normalisation, explicit resampling.

Conventions (used everywhere in attnlens):

* a *layer map* is a tensor ``(heads, h, w, T)``: for every query pixel, the softmax over the text positions
  (``T`` = 77 for live maps, or the recorded token positions);
* an *aggregate* is ``(h, w, T)``: the plain mean over the chosen layers and heads (layers must share ``h × w``);
* a *spatial distribution* of one token is its ``(h, w)`` map divided by its sum over pixels.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch
import torch.nn.functional as F


def layers_at_resolution(resolutions: Mapping[str, tuple[int, int]], size: int | tuple[int, int]) -> list[str]:
    """Names of the layers whose maps are ``size`` (an int means square), in the given order."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    return [name for name, res in resolutions.items() if tuple(res) == hw]


def aggregate(maps: Mapping[str, torch.Tensor], names: Iterable[str] | None = None) -> torch.Tensor:
    """Mean over layers and heads: ``{name: (heads, h, w, T)}`` → ``(h, w, T)``.

    Every layer gets the weight of its heads (a plain mean over all (layer, head) maps, as the released SynGen,
    Attend-and-Excite and Divide & Bind code computes it).

    Raises:
        ValueError: no layer selected, or the selected layers differ in resolution.
    """
    names = list(maps) if names is None else list(names)
    if not names:
        raise ValueError("no attention layers to aggregate (is the requested resolution present in this model?)")
    shapes = {tuple(maps[n].shape[-3:-1]) for n in names}
    if len(shapes) != 1:
        raise ValueError(f"cannot aggregate layers of different resolutions {sorted(shapes)}; resample first")
    stacked = torch.cat([maps[n].reshape(-1, *maps[n].shape[-3:]) for n in names], dim=0)
    return stacked.mean(dim=0)


def renormalize_text(x: torch.Tensor, dim: int = -3) -> torch.Tensor:
    """Renormalise each query's probabilities over the recorded text positions: p̃_k = p_k / Σ_j p_j.

    Joint attention (SD3, Flux) takes its softmax over image *and* text keys, so a stored row sums to the share of
    attention that goes to the recorded text; this makes it a distribution over those positions (as a
    cross-attention row over all its keys is). ``dim`` is the token axis (``-3`` for ``(..., token, h, w)``). A
    query with no mass on the text stays 0.

    Shapes: any; the sum runs over ``dim``.

    Examples::

        >>> import torch
        >>> renormalize_text(torch.tensor([[[0.1]], [[0.3]]]))[:, 0, 0]
        tensor([0.2500, 0.7500])
    """
    total = x.sum(dim=dim, keepdim=True)
    return torch.where(total > 0, x / total.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(x))


def spatial_normalize(x: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Divide each ``(..., h, w)`` map by its sum over the ``h × w`` pixels (a distribution over pixels)."""
    total = x.sum(dim=(-2, -1), keepdim=True)
    return x / (total + eps)


def subsample_nearest(x: torch.Tensor, size: int) -> torch.Tensor:
    """Nearest-neighbour subsampling of ``(..., h, w)`` maps to ``size × size`` (keeps every ``h/size``-th pixel).

    This is how Divide & Bind's released code brings 64×64 and 32×32 maps to 16×16 (``x[..., ::s, ::s]``).
    """
    h, w = x.shape[-2:]
    if h % size or w % size:
        raise ValueError(f"cannot subsample a {h}×{w} map to {size}×{size}: not a divisor")
    return x[..., :: h // size, :: w // size]


def resample(x: torch.Tensor, size: int | tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resample ``(..., h, w)`` maps to ``size`` with ``torch.nn.functional.interpolate``.

    ``mode`` is ``"bilinear"`` (``align_corners=False``, the default for comparing resolutions in analyses),
    ``"area"`` (average pooling when shrinking) or ``"nearest"``. The mass of a map is not preserved by
    bilinear upsampling; renormalise afterwards when a distribution is needed.
    """
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(x.shape[-2:]) == size:
        return x
    lead = x.shape[:-2]
    flat = x.reshape(-1, 1, *x.shape[-2:]).float()
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    out = F.interpolate(flat, size=size, mode=mode, **kwargs)
    return out.reshape(*lead, *size).to(x.dtype)


def to_token_first(x: torch.Tensor) -> torch.Tensor:
    """``(..., h, w, T)`` → ``(..., T, h, w)``."""
    return x.movedim(-1, -3)
