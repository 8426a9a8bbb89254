"""``divide-bind``: Divide & Bind (Li et al., BMVC 2023) — total-variation attendance plus JSD attribute binding.

Reproduces boschresearch/Divide-and-Bind (``pipeline_divide_and_bind.py``, ``loss_mode="tv_bind"`` with the
``default_param`` of ``utils/test_utils.py``) by default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import torch

from ..maps import aggregate, layers_at_resolution, subsample_nearest, to_token_first
from ..metrics import tv_paper, tv_released
from ._config import (
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_kernel_size,
    check_pair,
    check_step_map,
    check_subjects,
    set_field,
)
from ._shared import (
    full_precision,
    layers_of,
    released_jensen_shannon,
    resolve_subjects,
    smooth,
    step_size,
    token_softmax,
)
from .base import GuidanceMethod, LossOutput, StepPlan
from .registry import register_method

TV_VARIANTS = ("released", "paper")


def total_variation(maps: torch.Tensor, variant: str = "released") -> torch.Tensor:
    r"""Total variation of each ``(h, w)`` map as given (Divide & Bind's attendance measure).

    ``"paper"``:    TV(A) = Σ_ij |A[i+1, j] − A[i, j]| + Σ_ij |A[i, j+1] − A[i, j]|
    ``"released"``: TV(A) = mean_{i, j<w−1} |A[i, j+1] − A[i, j]| + mean_{1≤i<h, j} |A[h−1, j] − A[i, j]|

    The released code's horizontal term is a correct mean of neighbour differences, but its vertical term compares
    the *last row* with every row i ≥ 1 (an ``L1Loss`` of ``A[-1:, :]`` against ``A[1:, :]``, broadcast): a bug we
    reproduce by default. A constant map has TV 0 in both variants.

    One implementation serves the loss and the analysis: this is :func:`attnlens.metrics.tv_released` /
    :func:`attnlens.metrics.tv_paper` with ``spatial=False`` (the loss applies it to re-softmaxed, smoothed maps,
    not to spatial distributions), the same values and gradients.

    Shapes:
        maps: ``(..., h, w)`` → ``(...)``.
    """
    if variant == "released":
        return tv_released(maps, spatial=False)
    if variant == "paper":
        return tv_paper(maps, spatial=False)
    raise ValueError(f"unknown TV variant {variant!r}; valid choices: {list(TV_VARIANTS)}")


def bind_jsd(
    object_map: torch.Tensor,
    attribute_map: torch.Tensor,
    tv: torch.Tensor | float,
    *,
    quantile: float = 0.2,
    quantile_low_tv: float = 0.3,
    low_tv: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    r"""Divide & Bind's binding divergence between an object map and its attribute's map.

        Â = A_attr / max(A_attr) · max(A_obj)                   (rescale to the object's peak)
        p = softmax(vec A_obj),  q = softmax(vec Â)             (over the h·w pixels, temperature 1)
        τ = q_tv · max(p),  q_tv = ``quantile_low_tv`` if TV < ``low_tv`` else ``quantile``
        p' = ReLU(p − τ) + ε,  q' = ReLU(q − τ) + ε             (same τ for both; no renormalisation)
        JSD = ½ KL(p'‖m) + ½ KL(q'‖m),  m = ½ (p' + q')      (``_shared.released_jensen_shannon``)

    Args:
        object_map, attribute_map (`torch.Tensor`): re-softmaxed, smoothed maps.
        tv (`torch.Tensor` or `float`): the object's total variation (chooses the quantile).
        quantile (`float`, *optional*, defaults to 0.2), quantile_low_tv (`float`, defaults to 0.3),
        low_tv (`float`, defaults to 0.1), eps (`float`, defaults to 1e-5): as in the formula.

    Shapes:
        object_map, attribute_map: ``(h, w)`` → 0-d.
    """
    h, w = object_map.shape[-2:]
    rescaled = attribute_map / attribute_map.max() * object_map.max()
    p = torch.softmax(object_map.reshape(-1), dim=0)
    q = torch.softmax(rescaled.reshape(-1), dim=0)
    tv = torch.as_tensor(tv, dtype=p.dtype, device=p.device)
    qt = torch.where(tv < low_tv, torch.tensor(quantile_low_tv, dtype=p.dtype, device=p.device),
                     torch.tensor(quantile, dtype=p.dtype, device=p.device))
    thresh = qt * p.max()
    p = torch.relu(p - thresh) + eps
    q = torch.relu(q - thresh) + eps
    return released_jensen_shannon(p.reshape(h, w), q.reshape(h, w))


def divide_bind_loss(
    agg: torch.Tensor,
    object_positions: Sequence[int],
    attribute_positions: Sequence[Sequence[int]] | None = None,
    *,
    attribute_agg: torch.Tensor | None = None,
    bind_weight: float = 1.0,
    tv: str = "released",
    smooth_attentions: bool = True,
    kernel_size: int = 3,
    sigma: float = 0.5,
    quantile: float = 0.2,
    quantile_low_tv: float = 0.3,
    low_tv: float = 0.1,
    eps: float = 1e-5,
    names: Sequence[str] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""Divide & Bind's loss: maximise the worst object's total variation minus its binding divergence.

        L = −min_k ( TV(Ã_k) − c_i · Σ_{a∈attr(k)} JSD(Ã_k, Ã'_a) )

    Ã: ``token_softmax`` of ``agg`` (×100, positions [1:76)), smoothed; Ã': the same of ``attribute_agg`` (defaults
    to ``agg``); JSD: ``bind_jsd``; c_i = ``bind_weight``. The released code binds at most one attribute per
    object; several attributes here add their JSDs. No object gives L = 0.

    Args:
        agg (`torch.Tensor`): aggregated object-resolution cross-attention (softmax over 77 positions).
        object_positions (`Sequence[int]`): token position of each object (1..T).
        attribute_positions (`Sequence[Sequence[int]]`, *optional*): for each object, its attributes' positions.
        attribute_agg (`torch.Tensor`, *optional*): aggregated attribute maps at the object resolution.
        bind_weight (`float`, *optional*, defaults to 1.0): c_i.
        tv (`str`, *optional*, defaults to `"released"`): ``total_variation`` variant.
        smooth_attentions, kernel_size, sigma: the A&E smoothing.
        quantile, quantile_low_tv, low_tv, eps: see ``bind_jsd``.
        names (`Sequence[str]`, *optional*): term names of the objects (default: their positions).

    Returns:
        `(loss, terms)`: detached terms ``tv/<name>``, ``jsd/<name>`` (objects with attributes) and ``min_tv``
        (Divide & Bind's refinement indicator).

    Shapes:
        agg, attribute_agg: ``(h, w, 77)`` → 0-d.
    """
    if not object_positions:
        return agg.sum() * 0.0, {}
    names = [str(p) for p in object_positions] if names is None else list(names)
    attribute_positions = attribute_positions or [()] * len(object_positions)

    def token_maps(a: torch.Tensor, positions: Iterable[int]) -> torch.Tensor:
        images = to_token_first(token_softmax(a))[[p - 1 for p in positions]]
        return smooth(images, kernel_size, sigma) if smooth_attentions else images

    objects = token_maps(agg, object_positions)  # (K, h, w)
    tvs = total_variation(objects, tv)  # (K,)
    terms: dict[str, torch.Tensor] = {f"tv/{n}": v for n, v in zip(names, tvs.detach())}
    values = []
    attr_maps = None
    for k, attrs in enumerate(attribute_positions):
        value = tvs[k]
        if attrs:
            if attr_maps is None:
                attr_maps = to_token_first(token_softmax(agg if attribute_agg is None else attribute_agg))
            jsd = torch.stack([
                bind_jsd(objects[k], smooth(attr_maps[a - 1], kernel_size, sigma) if smooth_attentions
                         else attr_maps[a - 1], tvs[k], quantile=quantile, quantile_low_tv=quantile_low_tv,
                         low_tv=low_tv, eps=eps)
                for a in attrs
            ]).sum()
            terms[f"jsd/{names[k]}"] = jsd.detach()
            value = value - bind_weight * jsd
        values.append(value)
    loss = -torch.stack(values).min()
    terms["min_tv"] = tvs.detach().min()
    return loss, terms


def attribute_sizes(sizes: Iterable[tuple[int, int]], resolution: int,
                    requested: Sequence[int] | None = None) -> list[int]:
    """Sides of the attribute maps: ``requested``, or else the (up to) two square sizes directly above
    ``resolution`` that are multiples of it (64 and 32 for SD 1.x at 512×512 with resolution 16), or else — a
    model with no higher resolution, such as attnlens-tiny — ``resolution`` itself."""
    if requested:
        return list(requested)
    above = sorted({h for h, w in sizes if h == w and h > resolution and h % resolution == 0})
    return above[:2] or [resolution]


@register_method("divide-bind")
class DivideBind(GuidanceMethod):
    r"""Divide & Bind (Li et al., *Divide & Bind Your Attention for Improved Generative Semantic Nursing*,
    BMVC 2023, https://arxiv.org/abs/2307.10864; code: https://github.com/boschresearch/Divide-and-Bind).

    Object maps: the ``resolution``² aggregate, A&E's token re-softmax (×100, [1:76)) and Gaussian smoothing.
    Attribute maps: the layers of the two resolutions above (64×64 and 32×32 for SD 1.x; see
    ``attribute_sizes``), each subsampled nearest-neighbour to ``resolution``, averaged over all layers and heads,
    then the same re-softmax and smoothing. Objects default to the parse's nouns (first piece); each object's
    attributes are the first pieces of the modifiers of the parse set whose noun it is.

        L = −min_k ( TV(Ã_k) − c_i · Σ_a JSD(Ã_k, Ã'_a) ),   c_i = bind_weights[largest key ≤ i]

    (TV: ``total_variation``; JSD: ``bind_jsd``.) Updates z ← z − α_i ∂L/∂z with A&E's α_i for
    i < ``max_iter_to_alter``; at i ∈ ``thresholds`` the update repeats while min_k TV_k < thresholds[i], at most
    ``max_refinement_steps_init_step`` times at i = 0 and ``max_refinement_steps`` later (the repo's "latest"
    pipeline uses 100/50).

    Args:
        scale_factor (`float`, *optional*, defaults to 20.0): > 0.
        scale_range (`tuple[float, float]`, *optional*, defaults to (1.0, 0.5)): both ≥ 0.
        max_iter_to_alter (`int`, *optional*, defaults to 25): guide loop indices i < this (≥ 0).
        resolution (`int`, *optional*, defaults to 16): side of the object maps (≥ 1).
        attribute_resolutions (`list[int]`, *optional*): sides of the attribute layers, multiples of
            ``resolution``; default: the two sizes above ``resolution`` present in the model, or ``resolution``
            itself if there is none (e.g. attnlens-tiny, whose maps are 16×16, 8×8 and 4×4).
        thresholds (`dict[int, float]`, *optional*, defaults to {0: 0.05, 10: 0.2, 20: 0.3}): refinement steps
            and target min TV (≥ 0).
        max_refinement_steps (`int`, *optional*, defaults to 20): cap at threshold steps i > 0 (≥ 0).
        max_refinement_steps_init_step (`int`, *optional*, defaults to 50): cap at i = 0 (≥ 0).
        bind (`bool`, *optional*, defaults to `True`): add the JSD binding term (False = the repo's ``"tv"`` mode).
        bind_weights (`dict[int, float]`, *optional*, defaults to {0: 1, 10: 5, 20: 10}): c_i from each step on
            (≥ 0; 0 before the first key).
        tv (`str`, *optional*, defaults to `"released"`): ``"released"`` (with its vertical-term bug) or
            ``"paper"``.
        quantile (`float`, *optional*, defaults to 0.2), quantile_low_tv (`float`, defaults to 0.3): the JSD
            threshold fractions, in [0, 1]; low_tv (`float`, defaults to 0.1): the TV below which
            ``quantile_low_tv`` applies (≥ 0); eps (`float`, defaults to 1e-5): added after the ReLU (> 0).
        smooth_attentions (`bool`, *optional*, defaults to `True`), sigma (`float`, defaults to 0.5, > 0),
        kernel_size (`int`, defaults to 3, odd): A&E's smoothing.
        subjects (`list[str | int]`, *optional*): object words and/or token positions; default: the nouns.
    """

    @dataclass(frozen=True)
    class Config:
        scale_factor: float = 20.0
        scale_range: tuple[float, float] = (1.0, 0.5)
        max_iter_to_alter: int = 25
        resolution: int = 16
        attribute_resolutions: tuple[int, ...] | None = None
        thresholds: dict[int, float] = field(default_factory=lambda: {0: 0.05, 10: 0.2, 20: 0.3})
        max_refinement_steps: int = 20
        max_refinement_steps_init_step: int = 50
        bind: bool = True
        bind_weights: dict[int, float] = field(default_factory=lambda: {0: 1.0, 10: 5.0, 20: 10.0})
        tv: str = "released"
        quantile: float = 0.2
        quantile_low_tv: float = 0.3
        low_tv: float = 0.1
        eps: float = 1e-5
        smooth_attentions: bool = True
        sigma: float = 0.5
        kernel_size: int = 3
        subjects: tuple[str | int, ...] | None = None

        def __post_init__(self):
            check_float(self, "scale_factor", low=0.0, strict=True)
            check_pair(self, "scale_range")
            check_int(self, "max_iter_to_alter")
            check_int(self, "resolution", low=1)
            ar = self.attribute_resolutions
            if ar is not None:
                ok = isinstance(ar, (list, tuple)) and len(ar) > 0 and all(
                    isinstance(r, int) and not isinstance(r, bool) and r >= self.resolution
                    and r % self.resolution == 0 for r in ar)
                if not ok:
                    raise ValueError("attribute_resolutions must be null or a non-empty list of map sides that are "
                                     f"multiples of resolution={self.resolution}; got {ar!r}")
                set_field(self, "attribute_resolutions", tuple(ar))
            check_step_map(self, "thresholds", low=0.0)
            check_int(self, "max_refinement_steps")
            check_int(self, "max_refinement_steps_init_step")
            check_bool(self, "bind")
            check_step_map(self, "bind_weights", low=0.0)
            check_choice(self, "tv", TV_VARIANTS)
            check_float(self, "quantile", low=0.0, high=1.0)
            check_float(self, "quantile_low_tv", low=0.0, high=1.0)
            check_float(self, "low_tv", low=0.0)
            check_float(self, "eps", low=0.0, strict=True)
            check_bool(self, "smooth_attentions")
            check_float(self, "sigma", low=0.0, strict=True)
            check_kernel_size(self)
            check_subjects(self)

    def bind_weight(self, i: int) -> float:
        """c_i: the ``bind_weights`` value of the largest step key ≤ i (0 before the first key)."""
        keys = [k for k in self.config.bind_weights if k <= i]
        return self.config.bind_weights[max(keys)] if keys else 0.0

    def layers(self, resolutions: Mapping[str, tuple[int, int]]) -> list[str]:
        c = self.config
        names = layers_at_resolution(resolutions, c.resolution)
        if c.bind:
            sizes = attribute_sizes(resolutions.values(), c.resolution, c.attribute_resolutions)
            missing = [s for s in sizes if not layers_at_resolution(resolutions, s)]
            if missing:
                have = sorted({tuple(r) for r in resolutions.values()})
                raise ValueError(f"attribute_resolutions {missing} not among the model's map sizes {have}")
            names += [n for s in sizes if s != c.resolution for n in layers_at_resolution(resolutions, s)]
        return names

    def plan(self, i: int, num_timesteps: int) -> StepPlan | None:
        c = self.config
        if i >= c.max_iter_to_alter:
            return None
        cap = (c.max_refinement_steps_init_step if i == 0 else c.max_refinement_steps) if i in c.thresholds else 0
        return StepPlan(step_size=step_size(i, num_timesteps, c.scale_factor, c.scale_range), max_refinement=cap)

    def bindings(self, parse: Any) -> list[tuple[str, int, tuple[int, ...]]]:
        """``(name, object position, attribute positions)`` per object: the attributes are the first pieces of
        the modifiers of every parse set whose noun starts at the object's position (none when ``bind`` is off)."""
        out = []
        for name, pos in resolve_subjects(parse, self.config.subjects):
            attrs = tuple(m.positions[0] for s in parse.sets if s.noun.positions and s.noun.positions[0] == pos
                          for m in s.modifiers if m.positions) if self.config.bind else ()
            out.append((name, pos, attrs))
        return out

    def _attribute_agg(self, maps: Mapping[str, torch.Tensor], agg: torch.Tensor) -> torch.Tensor:
        c = self.config
        sizes = attribute_sizes({tuple(m.shape[-3:-1]) for m in maps.values()}, c.resolution,
                                c.attribute_resolutions)
        if sizes == [c.resolution]:
            return agg
        sub = {
            n: subsample_nearest(to_token_first(maps[n]), c.resolution).movedim(-3, -1)
            for s in sizes for n in layers_of(maps, s)
        }
        return full_precision(aggregate(sub))

    def idle_reason(self, parse: Any) -> str | None:
        if not resolve_subjects(parse, self.config.subjects):
            return "the prompt has no subject (noun) to attend to"
        return None

    def loss(self, maps: Mapping[str, torch.Tensor], parse: Any, i: int) -> LossOutput:
        c = self.config
        agg = full_precision(aggregate(maps, layers_of(maps, c.resolution)))
        bindings = self.bindings(parse)
        needs_attr = any(attrs for _, _, attrs in bindings)
        loss, terms = divide_bind_loss(
            agg, [p for _, p, _ in bindings], [a for _, _, a in bindings],
            attribute_agg=self._attribute_agg(maps, agg) if needs_attr else None,
            bind_weight=self.bind_weight(i), tv=c.tv, smooth_attentions=c.smooth_attentions,
            kernel_size=c.kernel_size, sigma=c.sigma, quantile=c.quantile, quantile_low_tv=c.quantile_low_tv,
            low_tv=c.low_tv, eps=c.eps, names=[n for n, _, _ in bindings],
        )
        indicator = float(terms["min_tv"]) if "min_tv" in terms else None
        return LossOutput(loss=loss, terms={"loss": loss.detach(), **terms}, indicator=indicator)

    def refine(self, i: int, out: LossOutput) -> bool:
        """True at a threshold step while min_k TV_k < threshold (the released refinement condition)."""
        return i in self.config.thresholds and out.indicator is not None and out.indicator < self.config.thresholds[i]
