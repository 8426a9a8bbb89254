"""``syngen``: SynGen (Rassin et al., NeurIPS 2023) — align modifier and noun maps, push them away from the rest.

The loss function is pure (tensors in, scalar and named terms out) and reproduces the released code
(RoyiRa/Linguistic-Binding-in-Diffusion-Models, ``compute_loss.py``) up to float rounding. Its distances
(``released_symmetric_kl`` by default) and unit distances live in ``attnlens.methods._shared``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch

from ..maps import aggregate
from ._config import check_bool, check_syngen_config, set_field
from ._shared import (
    Distance,
    FixedStepMethod,
    distances_to,
    full_precision,
    get_distance,
    layers_of,
    token_distributions,
    unit_distance,
)
from .base import LossOutput
from .registry import register_method


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
        distance (`str` or callable, *optional*, defaults to `"symmetric_kl"`): a key of ``_shared.DISTANCES``
            (``"symmetric_kl"`` is ``released_symmetric_kl``) or a function ``(p, q) -> d``.
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
# The method
# ----------------------------------------------------------------------------------------------------------------


@register_method("syngen")
class SynGen(FixedStepMethod):
    r"""SynGen: syntax-guided generation (Rassin et al., *Linguistic Binding in Diffusion Models*, NeurIPS 2023,
    https://arxiv.org/abs/2306.08877; code: https://github.com/RoyiRa/Linguistic-Binding-in-Diffusion-Models).

    On the mean of the ``resolution``×``resolution`` cross-attention maps (all layers and heads; 16×16 for SD 1.x
    at 512×512), each token's map is normalised over its pixels and, for every parse set S = [m₁ … m_k, n]:

        L_S = Σ_j D(m_j, n) + Σ_j ½ ( −mean_{o∈O(S)} D(m_j, o) − mean_{o∈O(S)} D(n, o) ),   L = Σ_S L_S

    where D is the symmetric KL (``_shared.released_symmetric_kl``, max over word pieces) and O(S) every other
    prompt position (see ``syngen_loss``). Entity-only sets contribute −mean_O D(n, o). The latent takes one plain
    gradient step z ← z − α ∂L/∂z per loop index i < ``intervention_steps``; no refinement, no thresholds.

    Args:
        step_size (`float`, *optional*, defaults to 20.0): α, > 0.
        intervention_steps (`int`, *optional*, defaults to 25): guide loop indices i < this (≥ 0; 0 = never).
        resolution (`int`, *optional*, defaults to 16): side of the maps used (≥ 1; must exist in the model).
        distance (`str`, *optional*, defaults to `"symmetric_kl"`): one of ``"symmetric_kl"`` (released),
            ``"jensen_shannon"``, ``"dot_overlap"`` (``_shared.DISTANCES``; short names ``skl``, ``jsd``, ``dot``).
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
                set_field(self, "negative", False)
            if self.neg_only:
                set_field(self, "positive", False)
            check_syngen_config(self)

    # layers() and plan(): FixedStepMethod (the resolution² layers, α = step_size for i < intervention_steps)

    def idle_reason(self, parse: Any) -> str | None:
        if not any(st.modifiers for st in parse.sets):
            return "the prompt has no modifier bound to a noun (no SynGen set), so there is nothing to bind"
        return None

    def loss(self, maps: Mapping[str, torch.Tensor], parse: Any, i: int) -> LossOutput:
        c = self.config
        agg = full_precision(aggregate(maps, layers_of(maps, c.resolution)))
        loss, terms = syngen_loss(agg, parse.sets, parse.prompt_length, distance=c.distance,
                                  positive=c.positive, negative=c.negative)
        return LossOutput(loss=loss, terms=terms)
