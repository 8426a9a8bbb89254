"""``a-star``: A-STAR (Agarwal et al., ICCV 2023) — attention segregation and attention retention.

No official code was released. The losses are the paper's formulas (as summarised in the project's reference
notes); every choice the paper leaves open is listed in the ``AStar`` docstring and in docs/methods.md, and the
overlap is the one gsn-factory's ``iou`` / ``retention`` criteria compute (grimalPaul/gsn-factory, read, not copied).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..maps import aggregate, to_token_first
from ..metrics import otsu_thresholds
from ._config import check_bool, check_float, check_kernel_size, check_refinement_schedule, check_subjects
from ._shared import (
    PreviousStep,
    RefinementScheduleMethod,
    full_precision,
    layers_of,
    resolve_subjects,
    smooth,
    token_softmax,
)
from .base import LossOutput
from .registry import register_method


def sum_overlap(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    r"""A-STAR's overlap of two maps: Σ_ij min(P_ij, Q_ij) / Σ_ij (P_ij + Q_ij).

    The paper's "soft IoU" (also gsn-factory's ``iou``): the denominator is the *sum* of both maps, not their union,
    so the range is [0, ½] — ½ for identical maps, 0 for disjoint supports. Both zero: NaN.
    Analysis counterpart: :func:`attnlens.metrics.soft_iou` (Σ min / Σ max of the spatially normalised maps, range
    [0, 1]).

    Shapes:
        p, q: ``(..., h, w)`` → ``(...)``.

    Examples:
        >>> p, q = torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([[0.5, 0.5], [0.0, 0.0]])
        >>> float(sum_overlap(p, q)), float(sum_overlap(q, q))
        (0.25, 0.5)
    """
    return torch.minimum(p, q).sum(dim=(-2, -1)) / (p + q).sum(dim=(-2, -1))


def binarize(maps: torch.Tensor, threshold: float | None = None) -> torch.Tensor:
    r"""The binary masks B that retention compares the current maps with (no gradient flows through them).

    ``threshold`` None: B_ij = 1[A_ij > otsu(A)] with each map's Otsu threshold
    (:func:`attnlens.metrics.otsu_thresholds`, = ``skimage.filters.threshold_otsu``; a constant map gives an empty
    mask). A number q ∈ (0, 1]: B_ij = 1[A_ij ≥ q · max A].

    Shapes:
        maps: ``(..., h, w)`` → ``(..., h, w)``, the dtype of ``maps``.
    """
    a = maps.detach()
    if threshold is None:
        thr = otsu_thresholds(a).to(device=a.device, dtype=a.dtype)
        return (a > thr[..., None, None]).to(a.dtype)
    return (a >= threshold * a.amax(dim=(-2, -1), keepdim=True)).to(a.dtype)


def subject_maps(agg: torch.Tensor, positions: Sequence[int], *, smooth_attentions: bool = True,
                 kernel_size: int = 3, sigma: float = 0.5) -> torch.Tensor:
    """Attend-and-Excite's subject maps: the token re-softmax (``token_softmax``: ×100 over [1:76)) at the given
    positions, smoothed with the released Gaussian when ``smooth_attentions``.

    Shapes:
        agg: ``(h, w, 77)`` → ``(len(positions), h, w)``.
    """
    maps = to_token_first(token_softmax(agg))[[p - 1 for p in positions]]
    return smooth(maps, kernel_size, sigma) if smooth_attentions else maps


def a_star_loss(
    agg: torch.Tensor,
    subject_positions: Sequence[int],
    *,
    previous: torch.Tensor | None = None,
    lambda_segregation: float = 1.0,
    lambda_retention: float = 1.0,
    threshold: float | None = None,
    smooth_attentions: bool = True,
    kernel_size: int = 3,
    sigma: float = 0.5,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""A-STAR's loss on the subject maps A^m (``subject_maps``: A&E's re-softmax and smoothing) of ``agg``.

        L_seg = Σ_{m<n} Σ_ij min(A^m, A^n)_ij / Σ_ij (A^m + A^n)_ij                     (segregation)
        L_ret = Σ_m [1 − Σ_ij min(A^m, B^m)_ij / Σ_ij (A^m + B^m)_ij]                   (retention)
        L     = λ_seg · L_seg + λ_ret · L_ret

    with B^m = ``binarize``(A^m of ``previous``, ``threshold``): the previous step's maps, processed alike and
    binarised (Otsu by default), without gradient. No ``previous`` (the first guided step): L_ret = 0. Fewer than
    two subjects: L_seg = 0.

    Returns:
        `(loss, terms)`: ``segregation`` (L_seg) and ``retention`` (L_ret), unweighted, detached.

    Shapes:
        agg, previous: ``(h, w, 77)`` → 0-d.
    """
    zero = agg.sum() * 0.0
    if not subject_positions:
        return zero, {"segregation": zero.detach(), "retention": zero.detach()}
    kw = dict(smooth_attentions=smooth_attentions, kernel_size=kernel_size, sigma=sigma)
    cur = subject_maps(agg, subject_positions, **kw)
    s = len(subject_positions)
    pairs = [(m, n) for m in range(s) for n in range(m + 1, s)]
    seg = sum_overlap(cur[[m for m, _ in pairs]], cur[[n for _, n in pairs]]).sum() if pairs else zero
    if previous is not None:
        masks = binarize(subject_maps(previous.detach().to(agg.dtype), subject_positions, **kw), threshold)
        ret = (1.0 - sum_overlap(cur, masks)).sum()
    else:
        ret = zero
    loss = lambda_segregation * seg + lambda_retention * ret
    return loss, {"segregation": seg.detach(), "retention": ret.detach()}


@register_method("a-star")
class AStar(RefinementScheduleMethod):
    r"""A-STAR (Agarwal, Karanam, Joseph, Saxena, Goswami, Srinivasan, *A-STAR: Test-time Attention Segregation and
    Retention for Text-to-image Synthesis*, ICCV 2023, https://arxiv.org/abs/2306.14544; no official code).

    ``a_star_loss`` on the ``resolution``² aggregate, subjects = the parse's nouns (first word piece each; override
    with ``subjects``), B^m from the previous guided step's last guidance forward. z ← z − α_i ∂L/∂z with
    Attend-and-Excite's α_i = scale_factor·sqrt(linspace(scale_range)[i]) for i < ``max_iter_to_alter``.

    Choices the paper leaves open (attnlens's, documented in docs/methods.md): the maps are processed as
    Attend-and-Excite's (A-STAR builds on it); the binarisation is Otsu's threshold (``threshold``: a fraction of the
    map's maximum instead); the schedule is A&E's without its threshold refinement (``refinement_at`` /
    ``refinement_steps`` add fixed passes); λ_seg = λ_ret = 1.

    Args:
        scale_factor (`float`, defaults to 20.0), scale_range (`tuple`, defaults to (1.0, 0.5)),
        max_iter_to_alter (`int`, defaults to 25): A&E's step schedule.
        refinement_steps (`int`, defaults to 0), refinement_at (`tuple[int]`, defaults to ()): fixed extra passes.
        resolution (`int`, defaults to 16): side of the maps used.
        lambda_segregation, lambda_retention (`float` ≥ 0, defaults to 1.0): the weights.
        threshold (`float` in (0, 1], *optional*): binarise at this fraction of the max; None: Otsu.
        smooth_attentions (`bool`, defaults to True), sigma (`float`, defaults to 0.5), kernel_size (`int`,
        defaults to 3): A&E's smoothing.
        subjects (`list[str | int]`, *optional*): subject words or token positions; default: the nouns.
    """

    @dataclass(frozen=True)
    class Config:
        scale_factor: float = 20.0
        scale_range: tuple[float, float] = (1.0, 0.5)
        max_iter_to_alter: int = 25
        refinement_steps: int = 0
        refinement_at: tuple[int, ...] = ()
        resolution: int = 16
        lambda_segregation: float = 1.0
        lambda_retention: float = 1.0
        threshold: float | None = None
        smooth_attentions: bool = True
        sigma: float = 0.5
        kernel_size: int = 3
        subjects: tuple[str | int, ...] | None = None

        def __post_init__(self):
            check_refinement_schedule(self)
            check_float(self, "lambda_segregation", low=0.0)
            check_float(self, "lambda_retention", low=0.0)
            if self.lambda_segregation == 0.0 and self.lambda_retention == 0.0:
                raise ValueError("lambda_segregation and lambda_retention are both 0: at least one term must count")
            if self.threshold is not None:
                check_float(self, "threshold", low=0.0, strict=True, high=1.0)
            check_bool(self, "smooth_attentions")
            check_float(self, "sigma", low=0.0, strict=True)
            check_kernel_size(self)
            check_subjects(self)

    def __init__(self, config: Any = None, **overrides: Any):
        super().__init__(config, **overrides)
        self._previous_step = PreviousStep()  # the previous step's last aggregate (detached)

    def idle_reason(self, parse: Any) -> str | None:
        if not resolve_subjects(parse, self.config.subjects):
            return "the prompt has no subject (noun) to segregate or retain"
        return None

    def loss(self, maps: Any, parse: Any, i: int) -> LossOutput:
        c = self.config
        prev = self._previous_step.advance(i)
        agg = full_precision(aggregate(maps, layers_of(maps, c.resolution)))
        positions = [p for _, p in resolve_subjects(parse, c.subjects)]
        loss, terms = a_star_loss(agg, positions, previous=prev, lambda_segregation=c.lambda_segregation,
                                  lambda_retention=c.lambda_retention, threshold=c.threshold,
                                  smooth_attentions=c.smooth_attentions, kernel_size=c.kernel_size, sigma=c.sigma)
        self._previous_step.store(i, agg.detach())
        return LossOutput(loss=loss, terms={"loss": loss.detach(), **terms}, indicator=float(loss.detach()))
