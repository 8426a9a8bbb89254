"""``predicated``: Predicated Diffusion (Sueyoshi & Matsubara, CVPR 2024) — product-fuzzy-logic propositions on the
cross-attention maps: existence, modifier–noun correspondence, leak and possession.

The official repository (tksmatsubara/PredicatedDiffusion, built on Attend-and-Excite's code) could not be
retrieved here; the numerics follow the loss ``_compute_loss_attention_product_prob``, the fixed refinement and the
``RunConfig`` defaults of its public SD 1.x fork Fahad16301139/dall-e-with-predicate (read, not copied; its loss,
run unchanged on the embedded model's maps, gives the same values and gradients: docs/methods.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..errors import AttnlensError
from ..maps import aggregate, to_token_first
from ._config import check_bool, check_float, check_refinement_schedule, check_subjects, set_field
from ._shared import RefinementScheduleMethod, full_precision, layers_of, resolve_subjects, token_softmax
from .base import LossOutput
from .registry import register_method

Pair = tuple[int, int]


def min_max(x: torch.Tensor) -> torch.Tensor:
    """(x − min x) / (max x − min x) over the last two dims, the released "0-1 normalized attention".

    A constant map gives 0 everywhere (the released code divides 0 by 0 and the NaN reaches the latent: a crash fix
    that changes no finite value).

    Shapes:
        x: ``(..., h, w)`` → ``(..., h, w)``.

    Examples:
        >>> min_max(torch.tensor([[0.0, 2.0], [1.0, 4.0]])).tolist(), min_max(torch.ones(1, 2)).tolist()
        ([[0.0, 0.5], [0.25, 1.0]], [[0.0, 0.0]])
    """
    lo = x.amin(dim=(-2, -1), keepdim=True)
    span = x.amax(dim=(-2, -1), keepdim=True) - lo
    return torch.where(span > 0, (x - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(x))


def predicated_loss(
    agg: torch.Tensor,
    *,
    exist: Sequence[int] = (),
    corr: Sequence[Pair] = (),
    leak: Sequence[Pair] = (),
    possession: Sequence[Pair] = (),
    weight_exist: float = 0.1,
    weight_corr: float = 1.0,
    weight_leak: float = 0.3,
    weight_possession: float = 1.0,
    exist_eps: float = 1e-4,
    eps: float = 1e-20,
    exist_product: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""Predicated Diffusion's loss as the released code computes it, on the aggregate A (N = h·w pixels).

    Product fuzzy logic: ¬P = 1 − P, P ∧ Q = PQ, P → Q = 1 − P(1 − Q), ∀ = Π over pixels, ∃x.P = 1 − Π(1 − P);
    each proposition R contributes −log R.

    * existence ∃x.Noun(x), on Ã = softmax(100·A[..., 1:76)) (A&E's re-softmax, no smoothing):
      ℓ_e = −log(1 − exp((1/N) Σ_ij log(1 − Ã_e,ij + ε_e)))  — the released per-pixel *geometric mean* of 1 − Ã
      (``exist_product``: the paper's Π, i.e. the sum without 1/N);
    * correspondence ∀x.Mod(x) ↔ Noun(x), on M̂, N̂ = ``min_max`` of the raw maps:
      ℓ_c = (1/N) Σ_ij [−log(1 − N̂(1 − M̂) + ε) − log(1 − M̂(1 − N̂) + ε)];
    * leak ∀x.Mod(x) → ¬Noun'(x) for a modifier and a noun of another set: ℓ_l = (1/N) Σ_ij −log(1 − M̂N̂' + ε);
    * possession ∀x.Possessed(x) → Holder(x): ℓ_p = (1/N) Σ_ij −log(1 − P̂(1 − Ĥ) + ε);

        L = w_e · mean_e ℓ_e + w_c · mean_c ℓ_c + w_l · mean_l ℓ_l + w_p · mean_p ℓ_p     (an empty list adds 0)

    Released defaults w = (0.1, 1, 0.3, 1), ε_e = 1e-4, ε = 1e-20 (below float32 resolution next to 1, as released).

    Args:
        exist: token positions (1..T) of the nouns; corr: (modifier, noun) positions; leak: (modifier, other noun);
            possession: (holder, possessed).

    Returns:
        `(loss, terms)`: ``exist``, ``correspondence``, ``leak``, ``possession`` — each term's weighted share of L
        (they sum to L), detached.

    Shapes:
        agg: ``(h, w, 77)`` → 0-d.
    """
    n = agg.shape[-3] * agg.shape[-2]
    raw = to_token_first(agg)
    zero = agg.sum() * 0.0
    parts = {"exist": zero, "correspondence": zero, "leak": zero, "possession": zero}
    if exist:
        probs = to_token_first(token_softmax(agg))[[e - 1 for e in exist]]
        logs = torch.log(1 - probs + exist_eps).sum(dim=(-2, -1))
        ell = -torch.log(1 - torch.exp(logs if exist_product else logs / n))
        parts["exist"] = weight_exist * ell.mean()

    def pairwise(pairs: Sequence[Pair], fuzzy) -> torch.Tensor:
        a = min_max(raw[[p for p, _ in pairs]])
        b = min_max(raw[[q for _, q in pairs]])
        return (fuzzy(a, b).sum(dim=(-2, -1)) / n).mean()

    if corr:
        parts["correspondence"] = weight_corr * pairwise(
            corr, lambda m, o: -torch.log(1 - o * (1 - m) + eps) - torch.log(1 - m * (1 - o) + eps))
    if leak:
        parts["leak"] = weight_leak * pairwise(leak, lambda m, o: -torch.log(1 - o * m + eps))
    if possession:
        parts["possession"] = weight_possession * pairwise(possession, lambda h, p: -torch.log(1 - p * (1 - h) + eps))
    loss = sum(parts.values(), zero)
    return loss, {k: v.detach() for k, v in parts.items()}


def _check_pairs(cfg: Any, name: str) -> None:
    v = getattr(cfg, name)
    ok = isinstance(v, (list, tuple)) and all(
        isinstance(p, (list, tuple)) and len(p) == 2
        and all((isinstance(s, str) and s.strip()) or (isinstance(s, int) and not isinstance(s, bool) and s >= 1)
                for s in p) for p in v)
    if not ok:
        raise ValueError(f"{name} must be a list of [holder, possessed] pairs (words or token positions ≥ 1); "
                         f"got {v!r}")
    set_field(cfg, name, tuple(tuple(p) for p in v))


@register_method("predicated")
class Predicated(RefinementScheduleMethod):
    r"""Predicated Diffusion (Sueyoshi & Matsubara, *Predicated Diffusion: Predicate Logic-Based Attention Guidance
    for Text-to-Image Diffusion Models*, CVPR 2024, https://arxiv.org/abs/2311.16117; code:
    https://github.com/tksmatsubara/PredicatedDiffusion, followed through its public SD 1.x fork).

    Propositions from the parse (the released code takes them as hand-written index lists; the README's examples
    are what this derives): existence for every noun (``subjects`` overrides), correspondence for every
    (modifier, noun) of a set, leak for every modifier and every noun outside its set, possession for each
    ``possession`` pair (none by default: the parse has no possession relation). Multi-piece words use their first
    piece. ``predicated_loss`` on the ``resolution``² aggregate; z ← z − α_i ∂L/∂z with A&E's α_i for
    i < ``max_iter_to_alter``, and at i = 0 the released fixed refinement (``thresholds = {0: 0}``): 5 more
    forward + update passes.

    Args:
        scale_factor (`float`, defaults to 20.0), scale_range (`tuple`, defaults to (1.0, 0.5)),
        max_iter_to_alter (`int`, defaults to 25), refinement_steps (`int`, defaults to 5), refinement_at
        (`tuple[int]`, defaults to (0,)), resolution (`int`, defaults to 16): the released schedule.
        weight_exist, weight_corr, weight_leak, weight_possession (`float` ≥ 0, defaults 0.1, 1, 0.3, 1).
        exist_eps (`float`, defaults to 1e-4), eps (`float`, defaults to 1e-20): the released log offsets.
        exist_product (`bool`, defaults to False): the paper's Π over pixels instead of the released mean of logs.
        subjects (`list[str | int]`, *optional*): the nouns that must exist; default: every noun.
        possession (`list[[holder, possessed]]`, defaults to []): words or token positions.
    """

    @dataclass(frozen=True)
    class Config:
        scale_factor: float = 20.0
        scale_range: tuple[float, float] = (1.0, 0.5)
        max_iter_to_alter: int = 25
        refinement_steps: int = 5
        refinement_at: tuple[int, ...] = (0,)
        resolution: int = 16
        weight_exist: float = 0.1
        weight_corr: float = 1.0
        weight_leak: float = 0.3
        weight_possession: float = 1.0
        exist_eps: float = 1e-4
        eps: float = 1e-20
        exist_product: bool = False
        subjects: tuple[str | int, ...] | None = None
        possession: tuple[tuple[str | int, str | int], ...] = ()

        def __post_init__(self):
            check_refinement_schedule(self)
            for name in ("weight_exist", "weight_corr", "weight_leak", "weight_possession"):
                check_float(self, name, low=0.0)
            check_float(self, "exist_eps", low=0.0)
            check_float(self, "eps", low=0.0)
            check_bool(self, "exist_product")
            check_subjects(self)
            _check_pairs(self, "possession")

    def propositions(self, parse: Any) -> dict[str, list]:
        """The index lists the released code takes (``exist``, ``corr``, ``leak``, ``possession``), from ``parse``.

        Raises:
            AttnlensError: a ``possession`` word that is not in the prompt, or a position outside it.
        """
        exist = [p for _, p in resolve_subjects(parse, self.config.subjects)]
        nouns = [u.positions[0] for u in parse.nouns if u.positions]
        corr, leak = [], []
        for s in parse.sets:
            if not s.noun.positions:
                continue
            noun = s.noun.positions[0]
            for m in s.modifiers:
                if m.positions:
                    corr.append((m.positions[0], noun))
                    leak += [(m.positions[0], o) for o in nouns if o != noun]
        possession = []
        for holder, possessed in self.config.possession:
            h = resolve_subjects(parse, [holder])
            q = resolve_subjects(parse, [possessed])
            if len(h) != 1 or len(q) != 1:
                raise AttnlensError(f"possession pair {[holder, possessed]!r} names a word that occurs more than once",
                                    hint="give token positions instead of the repeated word")
            possession.append((h[0][1], q[0][1]))
        return {"exist": exist, "corr": list(dict.fromkeys(corr)), "leak": list(dict.fromkeys(leak)),
                "possession": possession}

    def idle_reason(self, parse: Any) -> str | None:
        if not any(self.propositions(parse).values()):
            return "the prompt has no noun, modifier or possession pair to state a proposition about"
        return None

    def loss(self, maps: Any, parse: Any, i: int) -> LossOutput:
        c = self.config
        agg = full_precision(aggregate(maps, layers_of(maps, c.resolution)))
        loss, terms = predicated_loss(agg, **self.propositions(parse), weight_exist=c.weight_exist,
                                      weight_corr=c.weight_corr, weight_leak=c.weight_leak,
                                      weight_possession=c.weight_possession, exist_eps=c.exist_eps, eps=c.eps,
                                      exist_product=c.exist_product)
        return LossOutput(loss=loss, terms={"loss": loss.detach(), **terms}, indicator=float(loss.detach()))
