"""``ebama``: EBAMA (Zhang et al., ECCV 2024, *Object-Attribute Binding in Text-to-Image Generation: Evaluation
and Control*) — cosine-distance binding, noun repulsion and an object-presence term.

Follows YasminZhang/EBAMA (``diffusion_pipeline.py``, ``compute_loss.py``, ``inference.py`` defaults
``--dist cos --lambda_ours 0.5 --step_size 20``). Read, not copied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from ..maps import aggregate, to_token_first
from ._config import check_float, check_int, check_kernel_size
from ._shared import FixedStepMethod, full_precision, layers_of, smooth, token_softmax
from .base import LossOutput
from .registry import register_method


def cos_distance(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """1 − cos(P, Q) of two flattened maps (scale-free, so the released Categorical normalisation is moot).

    Shapes:
        p, q: ``(h, w)`` → 0-d.
    """
    p, q = p.reshape(-1), q.reshape(-1)
    return 1 - (p * q).sum() / (p.norm() * q.norm())


def ebama_loss(
    agg: torch.Tensor,
    sets: Sequence[tuple[Sequence[Sequence[int]], Sequence[int]]],
    prompt_length: int,
    *,
    lambda_excite: float = 0.5,
    kernel_size: int = 3,
    sigma: float = 0.5,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""EBAMA's loss as the released code computes it (``dist='cos'``).

    For each set S = (modifiers m_j, noun n) (units as lists of positions), O(S) = positions 1..T not in S,
    D = ``cos_distance`` on the raw aggregate's token maps:

        pos_S = Σ_j Σ_{a∈m_j} max_{b∈n} D(a, b)                       (modifier pieces summed, noun pieces max)
        neg_S = Σ_{j (once if no modifier)} −(1/|O|) Σ_{o∈O} max_{b∈n} D(b, o)   (the noun only; 0 if O = ∅)
        L_s   = Σ_S pos_S + neg_S
        L_t   = −Σ_S max_ij Ã_{n₁}[i, j]      (Ã: softmax(100·A[..., 1:76)) over tokens, released 3×3 smoothing;
                                              n₁ the noun's first piece)
        L     = L_s + λ · L_t

    Returns:
        `(loss, terms)`: ``positive``, ``negative``, ``excite`` (detached).

    Shapes:
        agg: ``(h, w, 77)`` → 0-d.
    """
    maps = to_token_first(agg)
    zero = agg.sum() * 0.0
    pos, neg, heads = [], [], []
    for mods, noun in sets:
        inside = {p for u in (*mods, noun) for p in u}
        outside = [p for p in range(1, int(prompt_length) + 1) if p not in inside]
        if outside:
            per_o = torch.stack([torch.stack([cos_distance(maps[b], maps[o]) for b in noun]).max() for o in outside])
            noun_neg = -per_o.sum() / len(outside)
        else:  # the released code divides by zero here
            noun_neg = zero
        for m in mods:
            pos.append(torch.stack([torch.stack([cos_distance(maps[a], maps[b]) for b in noun]).max()
                                    for a in m]).sum())
            neg.append(noun_neg)
        if not mods:
            neg.append(noun_neg)
        heads.append(noun[0])
    if not heads:
        return zero, {}
    probs = smooth(to_token_first(token_softmax(agg))[[p - 1 for p in heads]], kernel_size, sigma)
    excite = -probs.amax(dim=(-2, -1)).sum()
    lp = torch.stack(pos).sum() if pos else zero
    ln = torch.stack(neg).sum() if neg else zero
    loss = lp + ln + lambda_excite * excite
    return loss, {"positive": lp.detach(), "negative": ln.detach(), "excite": excite.detach()}


@register_method("ebama")
class Ebama(FixedStepMethod):
    r"""EBAMA (code: https://github.com/YasminZhang/EBAMA). Sets: the parse's sets plus every noun in no set as an
    entity-only set (the released ``_extract_attribution_indices_ours``). ``ebama_loss`` on the ``resolution``²
    aggregate; one update z ← z − α ∂L/∂z (α = 20) per loop index i ≤ 25 — the released ``if self.i > 25: return
    0`` guides 26 steps, one more than SynGen (``intervention_steps`` counts them: 26).
    """

    @dataclass(frozen=True)
    class Config:
        step_size: float = 20.0
        intervention_steps: int = 26
        resolution: int = 16
        lambda_excite: float = 0.5
        sigma: float = 0.5
        kernel_size: int = 3

        def __post_init__(self):
            check_float(self, "step_size", low=0.0, strict=True)
            check_int(self, "intervention_steps")
            check_int(self, "resolution", low=1)
            check_float(self, "lambda_excite", low=0.0)
            check_float(self, "sigma", low=0.0, strict=True)
            check_kernel_size(self)

    @staticmethod
    def sets(parse: Any) -> list[tuple[list[tuple[int, ...]], tuple[int, ...]]]:
        out = [([m.positions for m in s.modifiers if m.positions], s.noun.positions) for s in parse.sets
               if s.noun.positions]
        used = {p for mods, n in out for u in (*mods, n) for p in u}
        out += [([], u.positions) for u in parse.nouns if u.positions and u.positions[0] not in used]
        return out

    def idle_reason(self, parse: Any) -> str | None:
        return None if self.sets(parse) else "the prompt has no noun to bind or excite"

    def loss(self, maps: Mapping[str, torch.Tensor], parse: Any, i: int) -> LossOutput:
        c = self.config
        agg = full_precision(aggregate(maps, layers_of(maps, c.resolution)))
        loss, terms = ebama_loss(agg, self.sets(parse), parse.prompt_length, lambda_excite=c.lambda_excite,
                                 kernel_size=c.kernel_size, sigma=c.sigma)
        return LossOutput(loss=loss, terms={"loss": loss.detach(), **terms})
