"""``conform``: CONFORM (Meral et al., CVPR 2024) — a contrastive (NT-Xent) loss over the flattened 16² maps.

Follows gemlab-vt/CONFORM (``pipeline_conform.py`` and the settings of its ``notebook.ipynb``, which the README
names as the way to run it). Read, not copied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from ..maps import aggregate, layers_at_resolution, to_token_first
from ._config import check_bool, check_float, check_int, check_kernel_size, check_pair, check_step_list
from ._shared import full_precision, layers_of, smooth, step_size
from .base import GuidanceMethod, LossOutput, StepPlan
from .registry import register_method


def nt_xent(embeddings: torch.Tensor, labels: Sequence[int], temperature: float = 0.5) -> torch.Tensor:
    r"""NT-Xent as ``pytorch_metric_learning.losses.NTXentLoss`` (cosine similarity, mean reducer) computes it.

    With s_ab = cos(e_a, e_b), for every ordered pair (a, p), a ≠ p, of the same label:

        ℓ_ap = −log( exp(s_ap/τ) / (exp(s_ap/τ) + Σ_{n: label(n) ≠ label(a)} exp(s_an/τ)) + tiny )
        L    = mean_{(a,p)} ℓ_ap

    (tiny: the dtype's smallest normal number.) L = 0 when there is no positive pair or no negative pair at all.

    Shapes:
        embeddings: ``(N, D)`` → 0-d.
    """
    lab = torch.as_tensor(list(labels), device=embeddings.device)
    n = embeddings.shape[0]
    same = lab[:, None] == lab[None, :]
    eye = torch.eye(n, dtype=torch.bool, device=embeddings.device)
    pos, neg = same & ~eye, ~same
    if not pos.any() or not neg.any():
        return embeddings.sum() * 0.0
    e = F.normalize(embeddings, p=2, dim=1)
    sim = (e @ e.T) / temperature
    a, p = pos.nonzero(as_tuple=True)
    pos_s = sim[a, p]  # (P,)
    neg_s = sim[a].masked_fill(~neg[a], float("-inf"))  # (P, N)
    m = torch.maximum(pos_s, neg_s.max(dim=1).values).detach()
    num = torch.exp(pos_s - m)
    den = torch.exp(neg_s - m[:, None]).sum(dim=1) + num
    return -torch.log(num / den + torch.finfo(sim.dtype).tiny).mean()


def conform_loss(
    agg: torch.Tensor,
    groups: Sequence[Sequence[int]],
    *,
    previous: torch.Tensor | None = None,
    temperature: float = 0.5,
    softmax_normalize: bool = False,
    smooth_attentions: bool = True,
    kernel_size: int = 3,
    sigma: float = 0.5,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""CONFORM's loss: NT-Xent over the flattened, smoothed token maps, one class per attribute–object group.

    Ã = A[..., 1:76) (``softmax_normalize``: softmax(100 · A[..., 1:76)) over tokens), each token's map smoothed
    with the released 3×3 Gaussian and flattened to a 256-vector. Every token of group g is an embedding of class g;
    with ``previous`` (the last guidance forward's aggregate of the previous step, detached) each token gets a second
    embedding of the same class from it. L = ``nt_xent`` (τ = ``temperature``). A token listed in several groups
    belongs to the last one (the released dict). No positive or no negative pair gives L = 0.

    Returns:
        `(loss, terms)`: ``{"ntxent": loss}`` detached.

    Shapes:
        agg, previous: ``(h, w, 77)`` → 0-d.
    """
    classes: dict[int, int] = {}
    for c, g in enumerate(groups):
        for pos in g:
            classes[pos] = c
    if not classes:
        zero = agg.sum() * 0.0
        return zero, {"ntxent": zero.detach()}

    def prepare(a: torch.Tensor) -> torch.Tensor:
        text = a[..., 1:-1]
        if softmax_normalize:
            text = torch.softmax(text * 100, dim=-1)
        maps = to_token_first(text)[[p - 1 for p in classes]]
        if smooth_attentions:
            maps = smooth(maps, kernel_size, sigma)
        return maps.reshape(len(classes), -1)

    cur = prepare(agg)
    labels = list(classes.values())
    if previous is not None:
        prev = prepare(previous.detach().to(cur.dtype))
        # interleaved as the released code appends them: token k, then its previous-step view
        emb = torch.stack([x for k in range(len(labels)) for x in (cur[k], prev[k])])
        labels = [c for c in labels for _ in range(2)]
    else:
        emb = cur
    loss = nt_xent(emb, labels, temperature)
    return loss, {"ntxent": loss.detach()}


@register_method("conform")
class Conform(GuidanceMethod):
    r"""CONFORM (Meral et al., *CONFORM: Contrast is All You Need for High-Fidelity Text-to-Image Diffusion
    Models*, CVPR 2024, https://arxiv.org/abs/2312.06059; code: https://github.com/gemlab-vt/CONFORM).

    Groups: one per parse set (its modifiers' and noun's first pieces); a noun in no set is its own group. The loss
    is ``conform_loss`` on the ``resolution``² aggregate, with the previous step's last guidance maps as extra views.
    z ← z − α_i ∂L/∂z with A&E's α_i = scale_factor·sqrt(linspace(1, 0.5)[i]) for i < ``max_iter_to_alter``; at
    i ∈ ``refinement_at`` the released code runs exactly ``refinement_steps`` extra forward+update passes (no
    threshold), then the step's own update.

    Defaults are the notebook's (the README's way to run it): max_iter_to_alter = 30, softmax_normalize = False,
    τ = 0.5; the pipeline signature's own defaults differ (25, True) — pass them with -O to get those.
    """

    @dataclass(frozen=True)
    class Config:
        scale_factor: float = 20.0
        scale_range: tuple[float, float] = (1.0, 0.5)
        max_iter_to_alter: int = 30
        refinement_steps: int = 20
        refinement_at: tuple[int, ...] = (0, 10, 20)
        resolution: int = 16
        temperature: float = 0.5
        softmax_normalize: bool = False
        add_previous_attention_maps: bool = True
        smooth_attentions: bool = True
        sigma: float = 0.5
        kernel_size: int = 3

        def __post_init__(self):
            check_float(self, "scale_factor", low=0.0, strict=True)
            check_pair(self, "scale_range")
            check_int(self, "max_iter_to_alter")
            check_int(self, "refinement_steps")
            check_step_list(self, "refinement_at")
            check_int(self, "resolution", low=1)
            check_float(self, "temperature", low=0.0, strict=True)
            check_bool(self, "softmax_normalize")
            check_bool(self, "add_previous_attention_maps")
            check_bool(self, "smooth_attentions")
            check_float(self, "sigma", low=0.0, strict=True)
            check_kernel_size(self)

    def __init__(self, config: Any = None, **overrides: Any):
        super().__init__(config, **overrides)
        self._last: tuple[int, torch.Tensor] | None = None  # (step, detached aggregate) of the latest forward
        self._previous: tuple[int, torch.Tensor] | None = None  # the previous step's last aggregate

    def layers(self, resolutions: Mapping[str, tuple[int, int]]) -> list[str]:
        return layers_at_resolution(resolutions, self.config.resolution)

    def plan(self, i: int, num_timesteps: int) -> StepPlan | None:
        c = self.config
        if i >= c.max_iter_to_alter:
            return None
        cap = c.refinement_steps if i in c.refinement_at else 0
        return StepPlan(step_size=step_size(i, num_timesteps, c.scale_factor, c.scale_range), max_refinement=cap)

    @staticmethod
    def groups(parse: Any) -> list[list[int]]:
        """One group per parse set (modifiers then noun, first piece each); every noun in no set alone."""
        out = [[u.positions[0] for u in (*s.modifiers, s.noun) if u.positions] for s in parse.sets]
        used = {p for g in out for p in g}
        out += [[u.positions[0]] for u in parse.nouns if u.positions and u.positions[0] not in used]
        return [g for g in out if g]

    def idle_reason(self, parse: Any) -> str | None:
        if len(self.groups(parse)) < 2:
            return "CONFORM needs at least two groups (attribute–object sets or nouns) to contrast"
        return None

    def loss(self, maps: Mapping[str, torch.Tensor], parse: Any, i: int) -> LossOutput:
        c = self.config
        if self._last is not None and (i == 0 or self._last[0] > i):  # a new sample: forget the old one
            self._last = self._previous = None
        if self._last is not None and self._last[0] != i:
            self._previous = self._last
        agg = full_precision(aggregate(maps, layers_of(maps, c.resolution)))
        prev = self._previous[1] if (c.add_previous_attention_maps and self._previous is not None) else None
        loss, terms = conform_loss(agg, self.groups(parse), previous=prev, temperature=c.temperature,
                                   softmax_normalize=c.softmax_normalize, smooth_attentions=c.smooth_attentions,
                                   kernel_size=c.kernel_size, sigma=c.sigma)
        self._last = (i, agg.detach())
        return LossOutput(loss=loss, terms={"loss": loss.detach(), **terms}, indicator=float(loss.detach()))

    def refine(self, i: int, out: LossOutput) -> bool:
        """Always at a refinement step: the released code runs a fixed number of passes, no threshold."""
        return i in self.config.refinement_at
