r"""The attention edits as pure functions on probability tensors.

Every function takes ``p`` with keys (text positions) on the last axis and queries (pixels) on the axis before it,
``(..., Q, K)``, each row being a distribution over keys. It returns a new tensor and leaves ``p`` untouched, and it
uses only out-of-place, differentiable operations, so guidance gradients flow through an edit. ``S`` is a set of
key positions.

* ablate: :math:`p'_{qj} = p_{qj}[j\notin S] / \sum_k p_{qk}[k\notin S]`
* scale:  :math:`p'_{qj} = c_j p_{qj} / \sum_k c_k p_{qk}` with :math:`c_j = k` for :math:`j\in S`, else 1
* swap:   :math:`p'_{q,a_i} = p_{q,b_i}`, :math:`p'_{q,b_i} = p_{q,a_i}` (a permutation, so no renormalisation is
  needed, and applying it twice gives back ``p`` exactly)
* copy:   :math:`p'_{q,d_i} = p_{q,s_i}`, then the rows are renormalised
* mask:   :math:`p'_{qj} = m_q p_{qj}` for :math:`j\in S` (m in [0, 1] per query), then the rows are renormalised

When an edit removes all of a row's mass, that row stays zero: it is not divided by zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def renormalize(p: torch.Tensor) -> torch.Tensor:
    """``p / Σ_k p_k`` over the last axis; a row with zero total mass stays zero."""
    den = p.sum(dim=-1, keepdim=True)
    return p / torch.where(den > 0, den, torch.ones_like(den))


def _weights(p: torch.Tensor, positions: Sequence[int], value: float) -> torch.Tensor:
    w = torch.ones(p.shape[-1], dtype=p.dtype, device=p.device)
    if len(positions):
        w[list(positions)] = value
    return w


def ablate(p: torch.Tensor, positions: Sequence[int]) -> torch.Tensor:
    """Zero the columns ``positions`` and renormalise each row."""
    return renormalize(p * _weights(p, positions, 0.0))


def scale(p: torch.Tensor, positions: Sequence[int], factor: float) -> torch.Tensor:
    """Multiply the columns ``positions`` by ``factor`` (≥ 0) and renormalise; ``factor == 1`` returns ``p``."""
    if factor < 0:
        raise ValueError(f"scale factor must be ≥ 0, got {factor}")
    if factor == 1 or not len(positions):
        return p
    return renormalize(p * _weights(p, positions, float(factor)))


def swap(p: torch.Tensor, a: Sequence[int], b: Sequence[int]) -> torch.Tensor:
    """Exchange the columns ``a[i]`` and ``b[i]`` (the two lists must be the same length and must not overlap)."""
    if len(a) != len(b):
        raise ValueError(f"swap needs as many positions on each side, got {len(a)} and {len(b)}")
    if set(a) & set(b):
        raise ValueError("swap positions overlap")
    perm = list(range(p.shape[-1]))
    for i, j in zip(a, b):
        perm[i], perm[j] = j, i
    return p[..., perm]


def copy(p: torch.Tensor, source: Sequence[int], target: Sequence[int]) -> torch.Tensor:
    """Set column ``target[i]`` to column ``source[i]`` (a single source goes to every target), then renormalise."""
    if len(source) not in (1, len(target)):
        raise ValueError(f"copy needs one source position or one per target, got {len(source)} for {len(target)}")
    idx = list(range(p.shape[-1]))
    for i, t in enumerate(target):
        idx[t] = source[0] if len(source) == 1 else source[i]
    return renormalize(p[..., idx])


def mask(p: torch.Tensor, positions: Sequence[int], region: torch.Tensor) -> torch.Tensor:
    """Restrict the columns ``positions`` to ``region``, a weight in [0, 1] per query ``(Q,)``, then renormalise."""
    if region.shape != (p.shape[-2],):
        raise ValueError(f"region has shape {tuple(region.shape)}, expected ({p.shape[-2]},)")
    sel = torch.zeros(p.shape[-1], dtype=p.dtype, device=p.device)
    if len(positions):
        sel[list(positions)] = 1.0
    m = region.to(p.dtype).unsqueeze(-1)  # (Q, 1)
    w = 1.0 - sel * (1.0 - m)  # (Q, K): m_q on the selected columns, 1 elsewhere
    return renormalize(p * w)
