"""``syngen``: SynGen (Rassin et al., NeurIPS 2023) — align modifier and noun maps, push them away from the rest.

The loss functions are pure (tensors in, scalar and named terms out) and reproduce the released code
(RoyiRa/Linguistic-Binding-in-Diffusion-Models, ``compute_loss.py``) up to float rounding. This module also holds the
small config-validation helpers shared by the built-in methods.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from ..maps import aggregate, layers_at_resolution, spatial_normalize, to_token_first
from .base import GuidanceMethod, LossOutput, StepPlan
from .registry import register_method

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------------------------------------------
# Distances between spatial distributions
# ----------------------------------------------------------------------------------------------------------------


def flatten_pixels(x: torch.Tensor) -> torch.Tensor:
    """``(..., h, w)`` → ``(..., h·w)``."""
    return x.reshape(*x.shape[:-2], -1)


def safe_log(x: torch.Tensor) -> torch.Tensor:
    """log x with x clamped to the dtype's smallest normal number (so 0 · log 0 = 0 with finite gradients)."""
    return torch.log(x.clamp_min(torch.finfo(x.dtype).tiny))


def _categorical_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p‖q) over the last dim, exactly as ``torch.distributions.kl_divergence`` computes it for two
    ``Categorical`` distributions (logs of probabilities clamped to [ε, 1 − ε]; a term is 0 where p = 0 and +∞
    where q = 0 < p)."""
    eps = torch.finfo(p.dtype).eps
    t = p * (torch.log(p.clamp(eps, 1 - eps)) - torch.log(q.clamp(eps, 1 - eps)))
    t = torch.where(q == 0, torch.full_like(t, math.inf), t)
    t = torch.where(p == 0, torch.zeros_like(t), t)
    return t.sum(-1)


def symmetric_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    r"""SynGen's distance: the symmetric Kullback–Leibler divergence of two spatial distributions.

    d(P, Q) = ½ [KL(P‖Q) + KL(Q‖P)],  KL(P‖Q) = Σ_ij P_ij (log P_ij − log Q_ij)   (natural log)

    Computed as the released code does (``torch.distributions.Categorical``): logs of probabilities clamped to
    [ε, 1 − ε] with ε the dtype's machine epsilon; a pixel with P = 0 contributes 0, one with Q = 0 < P gives +∞.

    Args:
        p (`torch.Tensor`): distributions over the last two (pixel) dims; each ``(h, w)`` map sums to 1
            (see ``attnlens.maps.spatial_normalize``).
        q (`torch.Tensor`): same, broadcastable against ``p``.

    Shapes:
        p, q: ``(..., h, w)`` → ``(...)``.
    """
    p, q = flatten_pixels(p), flatten_pixels(q)
    return 0.5 * (_categorical_kl(p, q) + _categorical_kl(q, p))


def jensen_shannon(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    r"""Jensen–Shannon divergence of two spatial distributions (natural log, so 0 ≤ JSD ≤ log 2).

    JSD(P, Q) = ½ KL(P‖M) + ½ KL(Q‖M),  M = ½ (P + Q)

    Pixels where a distribution is 0 contribute 0. The inputs are not renormalised (Divide & Bind applies it to
    thresholded, unnormalised maps).

    Shapes:
        p, q: ``(..., h, w)`` → ``(...)``.
    """
    p, q = flatten_pixels(p), flatten_pixels(q)
    log_m = safe_log(0.5 * (p + q))
    kl_pm = (p * (safe_log(p) - log_m)).sum(-1)
    kl_qm = (q * (safe_log(q) - log_m)).sum(-1)
    return 0.5 * (kl_pm + kl_qm)


def dot_overlap(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    r"""Negative overlap of two spatial distributions, usable as a distance (lower = more overlap).

    d(P, Q) = −Σ_ij P_ij Q_ij

    With it, SynGen's positive term becomes −Σ A_m·A_n and the negative term +Σ A_m·A_u: the simplified
    "dot-product" SynGen of the SynGen + entropy report's code listing (not what the official SynGen computes).

    Shapes:
        p, q: ``(..., h, w)`` → ``(...)``.
    """
    return -(flatten_pixels(p) * flatten_pixels(q)).sum(-1)


DISTANCES: dict[str, Distance] = {
    "symmetric_kl": symmetric_kl,
    "jensen_shannon": jensen_shannon,
    "dot_overlap": dot_overlap,
}

# short names accepted on the command line (-O distance=jsd); stored under the long name
DISTANCE_ALIASES = {"skl": "symmetric_kl", "kl": "symmetric_kl", "jsd": "jensen_shannon", "js": "jensen_shannon",
                    "dot": "dot_overlap"}


def get_distance(name: str) -> Distance:
    """The distance function called ``name`` (one of ``DISTANCES``)."""
    try:
        return DISTANCES[DISTANCE_ALIASES.get(name, name)]
    except KeyError:
        raise ValueError(f"unknown distance {name!r}; valid choices: {sorted(DISTANCES)}") from None


def token_distributions(agg: torch.Tensor) -> torch.Tensor:
    """Token-first spatial distributions of an aggregate: each token's ``(h, w)`` map divided by its sum.

    Shapes:
        agg: ``(h, w, T)`` → ``(T, h, w)``.
    """
    return spatial_normalize(to_token_first(agg))


def unit_distance(
    maps: torch.Tensor,
    u_positions: Sequence[int],
    v_positions: Sequence[int],
    distance: str | Distance = "symmetric_kl",
) -> torch.Tensor:
    r"""Distance between two units (words) made of one or more word pieces: the maximum over piece pairs.

    D(u, v) = max_{a ∈ u, b ∈ v} d(P_a, P_b)

    Args:
        maps (`torch.Tensor`): token-first spatial distributions indexed by token position
            (``token_distributions(agg)``).
        u_positions, v_positions (`Sequence[int]`): the token positions of each unit.
        distance (`str` or callable, *optional*, defaults to `"symmetric_kl"`): a name in ``DISTANCES`` or a
            function ``(p, q) -> d`` reducing the last two dims.

    Shapes:
        maps: ``(T, h, w)`` → 0-d tensor.
    """
    fn = get_distance(distance) if isinstance(distance, str) else distance
    return distances_to(maps, u_positions, v_positions, fn).max()


def distances_to(maps: torch.Tensor, u: Sequence[int], others: Sequence[int], fn: Distance) -> torch.Tensor:
    """``[D(u, o) for o in others]``: the distance of unit ``u`` (max over its pieces) to each single position.

    Shapes:
        maps: ``(T, h, w)`` → ``(len(others),)``.
    """
    pu = maps[list(u)].unsqueeze(1)  # (|u|, 1, h, w)
    po = maps[list(others)].unsqueeze(0)  # (1, |others|, h, w)
    return fn(pu, po).amax(dim=0)


def syngen_loss(
    agg: torch.Tensor,
    sets: Iterable[Any],
    prompt_length: int,
    *,
    distance: str | Distance = "symmetric_kl",
    positive: bool = True,
    negative: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""SynGen's loss on an aggregated map, as the released code computes it.

    For a set S = [m₁ … m_k, n] (modifiers, then the noun) let O(S) be every prompt position 1..T that is not a
    piece of a word of S (articles, "and", other sets' words included). With D the unit distance (max over word
    pieces, see ``unit_distance``) and mean_O taken over positions:

        L_S = Σ_j D(m_j, n)  +  Σ_j ½ ( −mean_{o∈O} D(m_j, o) − mean_{o∈O} D(n, o) )
        L   = Σ_S L_S

    The positive pairs form a star around the noun; the noun's negative term is counted once per modifier. An
    entity-only set (no modifiers) contributes L_S = −mean_{o∈O} D(n, o). If O is empty its means are 0. With no
    set at all the loss is 0 (the sampler then skips the update). The loss is usually negative.

    Args:
        agg (`torch.Tensor`): the aggregated cross-attention (mean over layers and heads, softmax over all 77 text
            positions: ``<sot>``/``<eot>``/padding included, no re-softmax, no smoothing).
        sets (iterable of `BindingSet`): SynGen sets; ``modifiers`` may be empty.
        prompt_length (`int`): T, the number of prompt word pieces (positions 1..T).
        distance (`str` or callable, *optional*, defaults to `"symmetric_kl"`): see ``DISTANCES``.
        positive (`bool`, *optional*, defaults to `True`): include the positive (modifier–noun) term.
        negative (`bool`, *optional*, defaults to `True`): include the negative (set–rest) term.

    Returns:
        `(loss, terms)`: a 0-d tensor and ``{"positive": ..., "negative": ...}`` (detached 0-d tensors, computed
        whether or not they enter the loss).

    Shapes:
        agg: ``(h, w, P)`` with P > T (77 for live maps) → 0-d.
    """
    fn = get_distance(distance) if isinstance(distance, str) else distance
    maps = token_distributions(agg)
    prompt = range(1, int(prompt_length) + 1)
    zero = agg.sum() * 0.0
    pos_terms: list[torch.Tensor] = []
    neg_terms: list[torch.Tensor] = []
    for s in sets:
        inside = {p for u in (*s.modifiers, s.noun) for p in u.positions}
        outside = [p for p in prompt if p not in inside]

        def mean_outside(u: Sequence[int]) -> torch.Tensor:
            return distances_to(maps, u, outside, fn).mean() if outside else zero

        noun_neg = mean_outside(s.noun.positions)
        if not s.modifiers:
            neg_terms.append(-noun_neg)
        for m in s.modifiers:
            pos_terms.append(unit_distance(maps, m.positions, s.noun.positions, fn))
            neg_terms.append(0.5 * (-mean_outside(m.positions) - noun_neg))
    pos = torch.stack(pos_terms).sum() if pos_terms else zero
    neg = torch.stack(neg_terms).sum() if neg_terms else zero
    loss = (pos if positive else zero) + (neg if negative else zero)
    return loss, {"positive": pos.detach(), "negative": neg.detach()}


# ----------------------------------------------------------------------------------------------------------------
# Config validation helpers (shared by the built-in methods)
# ----------------------------------------------------------------------------------------------------------------


def _set(cfg: Any, name: str, value: Any) -> None:
    object.__setattr__(cfg, name, value)


def check_float(cfg: Any, name: str, *, low: float | None = None, strict: bool = False,
                high: float | None = None) -> None:
    """Require a finite real in [low, high] (``strict``: low excluded); store it as ``float``."""
    v = getattr(cfg, name)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    ok = ok and (low is None or (v > low if strict else v >= low)) and (high is None or v <= high)
    if not ok:
        rng = "".join([f" {'>' if strict else '≥'} {low}" if low is not None else "",
                       f" and ≤ {high}" if high is not None else ""])
        raise ValueError(f"{name} must be a finite number{rng}; got {v!r}")
    _set(cfg, name, float(v))


def check_int(cfg: Any, name: str, *, low: int = 0) -> None:
    """Require an integer ≥ ``low``."""
    v = getattr(cfg, name)
    if not isinstance(v, int) or isinstance(v, bool) or v < low:
        raise ValueError(f"{name} must be an integer ≥ {low}; got {v!r}")


def check_bool(cfg: Any, name: str) -> None:
    """Require ``True`` or ``False``."""
    v = getattr(cfg, name)
    if not isinstance(v, bool):
        raise ValueError(f"{name} must be true or false; got {v!r}")


def check_syngen_config(cfg: Any) -> None:
    """Validate the options SynGen and its variants share (step_size, intervention_steps, resolution, distance,
    positive, negative); a short distance name is stored under its long name."""
    check_float(cfg, "step_size", low=0.0, strict=True)
    check_int(cfg, "intervention_steps")
    check_int(cfg, "resolution", low=1)
    object.__setattr__(cfg, "distance", DISTANCE_ALIASES.get(cfg.distance, cfg.distance))
    check_choice(cfg, "distance", DISTANCES)
    check_bool(cfg, "positive")
    check_bool(cfg, "negative")
    if not (cfg.positive or cfg.negative):
        raise ValueError("positive and negative are both false: at least one term must be enabled")


def check_choice(cfg: Any, name: str, choices: Iterable[str]) -> None:
    """Require one of ``choices``."""
    v, choices = getattr(cfg, name), sorted(choices)
    if v not in choices:
        raise ValueError(f"{name} must be one of {choices}; got {v!r}")


def check_step_map(cfg: Any, name: str, *, low: float | None = None, high: float | None = None) -> None:
    """Require a mapping ``{step index: number}`` (JSON string keys accepted); store it with int keys, sorted."""
    v = getattr(cfg, name)
    if not isinstance(v, Mapping):
        raise ValueError(f"{name} must be a mapping {{step index: value}}; got {v!r}")
    out: dict[int, float] = {}
    for k, x in v.items():
        try:
            step = int(k)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: step index {k!r} is not an integer") from None
        ok = isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
        if step < 0 or not ok or (low is not None and x < low) or (high is not None and x > high):
            rng = f" in [{low}, {high}]" if low is not None and high is not None else ""
            raise ValueError(f"{name} must map step indices ≥ 0 to finite numbers{rng}; got {k!r}: {x!r}")
        out[step] = float(x)
    _set(cfg, name, dict(sorted(out.items())))


def check_pair(cfg: Any, name: str, *, low: float = 0.0) -> None:
    """Require two finite numbers ≥ ``low`` (a list from JSON is accepted); store them as a tuple of floats."""
    v = getattr(cfg, name)
    ok = isinstance(v, (tuple, list)) and len(v) == 2 and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= low for x in v)
    if not ok:
        raise ValueError(f"{name} must be two finite numbers ≥ {low}; got {v!r}")
    _set(cfg, name, (float(v[0]), float(v[1])))


def full_precision(x: torch.Tensor) -> torch.Tensor:
    """Half-precision maps → float32 (the released code computes its losses in fp32); other dtypes unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def layers_of(maps: Mapping[str, torch.Tensor], size: int) -> list[str]:
    """Names of the ``(heads, h, w, T)`` maps whose spatial size is ``size × size``."""
    return layers_at_resolution({n: tuple(m.shape[-3:-1]) for n, m in maps.items()}, size)


# ----------------------------------------------------------------------------------------------------------------
# The method
# ----------------------------------------------------------------------------------------------------------------


@register_method("syngen")
class SynGen(GuidanceMethod):
    r"""SynGen: syntax-guided generation (Rassin et al., *Linguistic Binding in Diffusion Models*, NeurIPS 2023,
    https://arxiv.org/abs/2306.08877; code: https://github.com/RoyiRa/Linguistic-Binding-in-Diffusion-Models).

    On the mean of the ``resolution``×``resolution`` cross-attention maps (all layers and heads; 16×16 for SD 1.x
    at 512×512), each token's map is normalised over its pixels and, for every parse set S = [m₁ … m_k, n]:

        L_S = Σ_j D(m_j, n) + Σ_j ½ ( −mean_{o∈O(S)} D(m_j, o) − mean_{o∈O(S)} D(n, o) ),   L = Σ_S L_S

    where D is the symmetric KL (max over word pieces) and O(S) every other prompt position (see
    ``syngen_loss``). Entity-only sets contribute −mean_O D(n, o). The latent takes one plain gradient step
    z ← z − α ∂L/∂z per loop index i < ``intervention_steps``; no refinement, no thresholds.

    Args:
        step_size (`float`, *optional*, defaults to 20.0): α, > 0.
        intervention_steps (`int`, *optional*, defaults to 25): guide loop indices i < this (≥ 0; 0 = never).
        resolution (`int`, *optional*, defaults to 16): side of the maps used (≥ 1; must exist in the model).
        distance (`str`, *optional*, defaults to `"symmetric_kl"`): one of ``"symmetric_kl"`` (released),
            ``"jensen_shannon"``, ``"dot_overlap"``.
        positive (`bool`, *optional*, defaults to `True`): include the positive term (False = the paper's
            "negative only" ablation).
        negative (`bool`, *optional*, defaults to `True`): include the negative term (False = "positive only").
            At least one of the two must be true.
        pos_only (`bool`, *optional*, defaults to `False`): shorthand for ``negative=False``.
        neg_only (`bool`, *optional*, defaults to `False`): shorthand for ``positive=False``.
    """

    @dataclass(frozen=True)
    class Config:
        step_size: float = 20.0
        intervention_steps: int = 25
        resolution: int = 16
        distance: str = "symmetric_kl"
        positive: bool = True
        negative: bool = True
        pos_only: bool = False
        neg_only: bool = False

        def __post_init__(self):
            check_bool(self, "pos_only")
            check_bool(self, "neg_only")
            if self.pos_only and self.neg_only:
                raise ValueError("pos_only and neg_only are exclusive")
            if self.pos_only:
                object.__setattr__(self, "negative", False)
            if self.neg_only:
                object.__setattr__(self, "positive", False)
            check_syngen_config(self)

    def layers(self, resolutions: Mapping[str, tuple[int, int]]) -> list[str]:
        return layers_at_resolution(resolutions, self.config.resolution)

    def plan(self, i: int, num_timesteps: int) -> StepPlan | None:
        return StepPlan(step_size=self.config.step_size) if i < self.config.intervention_steps else None

    def loss(self, maps: Mapping[str, torch.Tensor], parse: Any, i: int) -> LossOutput:
        c = self.config
        agg = full_precision(aggregate(maps, layers_of(maps, c.resolution)))
        loss, terms = syngen_loss(agg, parse.sets, parse.prompt_length, distance=c.distance,
                                  positive=c.positive, negative=c.negative)
        return LossOutput(loss=loss, terms=terms)
