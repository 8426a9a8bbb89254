"""``attend-excite``: Attend-and-Excite (Chefer et al., SIGGRAPH 2023) — excite the most neglected subject token.

The loss is pure; the released Gaussian kernel, smoothing, token re-softmax, step-size schedule and subject
resolution it uses (shared with Divide & Bind) live in ``attnlens.methods._shared``. Reproduces
yuval-alaluf/Attend-and-Excite by default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from ..maps import aggregate, layers_at_resolution, to_token_first
from ._config import (
    check_bool,
    check_float,
    check_int,
    check_kernel_size,
    check_pair,
    check_step_map,
    check_subjects,
)
from ._shared import full_precision, layers_of, resolve_subjects, scheduled_plan, smooth, token_softmax
from .base import GuidanceMethod, LossOutput, StepPlan
from .registry import register_method


def attend_excite_loss(
    agg: torch.Tensor,
    subject_positions: Sequence[int],
    *,
    prompt_length: int | None = None,
    sd21: bool = False,
    smooth_attentions: bool = True,
    kernel_size: int = 3,
    sigma: float = 0.5,
    names: Sequence[str] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""Attend-and-Excite's loss: the most neglected subject's shortfall from full attention.

        L = max_s max(0, 1 − max_ij Ã_s[i, j])

    with Ã the token re-softmax (``token_softmax``), smoothed by ``smooth`` when ``smooth_attentions``. No subject
    gives L = 0.

    Args:
        agg (`torch.Tensor`): aggregated cross-attention (softmax over all 77 positions).
        subject_positions (`Sequence[int]`): token positions (1..T) of the subject tokens.
        prompt_length (`int`, *optional*): T, needed with ``sd21``.
        sd21 (`bool`, *optional*, defaults to `False`): slice [1 : T+1) instead of [1 : 76).
        smooth_attentions (`bool`, *optional*, defaults to `True`), kernel_size (`int`, defaults to 3),
        sigma (`float`, defaults to 0.5): the smoothing.
        names (`Sequence[str]`, *optional*): term names of the subjects (default: their positions).

    Returns:
        `(loss, terms)`: terms ``max_attention/<name>`` (detached) per subject.

    Shapes:
        agg: ``(h, w, 77)`` → 0-d.
    """
    if not subject_positions:
        return agg.sum() * 0.0, {}
    probs = to_token_first(token_softmax(agg, prompt_length, sd21))
    images = probs[[p - 1 for p in subject_positions]]  # (S, h, w)
    if smooth_attentions:
        images = smooth(images, kernel_size, sigma)
    max_attn = images.amax(dim=(-2, -1))
    loss = (1.0 - max_attn).clamp_min(0.0).max()
    names = [str(p) for p in subject_positions] if names is None else list(names)
    return loss, {f"max_attention/{n}": v for n, v in zip(names, max_attn.detach())}


@register_method("attend-excite")
class AttendExcite(GuidanceMethod):
    r"""Attend-and-Excite (Chefer et al., *Attend-and-Excite: Attention-Based Semantic Guidance for Text-to-Image
    Diffusion Models*, SIGGRAPH 2023, https://arxiv.org/abs/2301.13826; code:
    https://github.com/yuval-alaluf/Attend-and-Excite).

    On the mean of the ``resolution``² cross-attention maps, re-softmaxed over tokens (×100, positions [1:76)) and
    smoothed with the released 3×3 Gaussian ([0.2119, 0.5761, 0.2119]², reflect padding):

        L = max_s max(0, 1 − max_ij Ã_s[i, j]),   z ← z − α_i ∂L/∂z,   α_i = scale_factor · sqrt(r_i)

    with r = linspace(``scale_range``, number of timesteps) (51 for PNDM at 50 steps), for loop indices
    i < ``max_iter_to_alter``. At i ∈ ``thresholds``, while L > 1 − thresholds[i] the update is repeated (forward
    and update at the same α_i, at most ``max_refinement_steps`` times), then the step's own update follows.
    Subjects default to the parse's nouns (first word piece each, see ``_shared.resolve_subjects``).

    Args:
        scale_factor (`float`, *optional*, defaults to 20.0): > 0.
        scale_range (`tuple[float, float]`, *optional*, defaults to (1.0, 0.5)): r at the first and last timestep,
            both ≥ 0.
        max_iter_to_alter (`int`, *optional*, defaults to 25): guide loop indices i < this (≥ 0).
        resolution (`int`, *optional*, defaults to 16): side of the maps used (≥ 1).
        thresholds (`dict[int, float]`, *optional*, defaults to {0: 0.05, 10: 0.5, 20: 0.8}): refinement steps
            and target max attention, each in [0, 1]; {} disables refinement.
        max_refinement_steps (`int`, *optional*, defaults to 20): refinement cap per threshold step (≥ 0).
        smooth_attentions (`bool`, *optional*, defaults to `True`): Gaussian smoothing on/off.
        sigma (`float`, *optional*, defaults to 0.5): the kernel's nominal σ (> 0; effective σ√2, see
            ``_shared.released_gaussian_kernel``).
        kernel_size (`int`, *optional*, defaults to 3): odd, ≥ 1, smaller than the map side.
        sd21 (`bool`, *optional*, defaults to `False`): re-softmax over the prompt pieces only (the released
            SD 2.1 option).
        subjects (`list[str | int]`, *optional*): subject words and/or token positions; default: the nouns.
    """

    @dataclass(frozen=True)
    class Config:
        scale_factor: float = 20.0
        scale_range: tuple[float, float] = (1.0, 0.5)
        max_iter_to_alter: int = 25
        resolution: int = 16
        thresholds: dict[int, float] = field(default_factory=lambda: {0: 0.05, 10: 0.5, 20: 0.8})
        max_refinement_steps: int = 20
        smooth_attentions: bool = True
        sigma: float = 0.5
        kernel_size: int = 3
        sd21: bool = False
        subjects: tuple[str | int, ...] | None = None

        def __post_init__(self):
            check_float(self, "scale_factor", low=0.0, strict=True)
            check_pair(self, "scale_range")
            check_int(self, "max_iter_to_alter")
            check_int(self, "resolution", low=1)
            check_step_map(self, "thresholds", low=0.0, high=1.0)
            check_int(self, "max_refinement_steps")
            check_bool(self, "smooth_attentions")
            check_float(self, "sigma", low=0.0, strict=True)
            check_kernel_size(self)
            check_bool(self, "sd21")
            check_subjects(self)

    def layers(self, resolutions: Mapping[str, tuple[int, int]]) -> list[str]:
        return layers_at_resolution(resolutions, self.config.resolution)

    def plan(self, i: int, num_timesteps: int) -> StepPlan | None:
        c = self.config
        return scheduled_plan(c, i, num_timesteps, c.max_refinement_steps if i in c.thresholds else 0)

    def idle_reason(self, parse: Any) -> str | None:
        if not resolve_subjects(parse, self.config.subjects):
            return "the prompt has no subject (noun) to attend to"
        return None

    def loss(self, maps: Mapping[str, torch.Tensor], parse: Any, i: int) -> LossOutput:
        c = self.config
        agg = full_precision(aggregate(maps, layers_of(maps, c.resolution)))
        subjects = resolve_subjects(parse, c.subjects)
        loss, terms = attend_excite_loss(
            agg, [p for _, p in subjects], prompt_length=parse.prompt_length, sd21=c.sd21,
            smooth_attentions=c.smooth_attentions, kernel_size=c.kernel_size, sigma=c.sigma,
            names=[n for n, _ in subjects],
        )
        return LossOutput(loss=loss, terms={"loss": loss.detach(), **terms}, indicator=float(loss.detach()))

    def refine(self, i: int, out: LossOutput) -> bool:
        """True at a threshold step while L > max(0, 1 − threshold) (the released refinement condition)."""
        if i not in self.config.thresholds:
            return False
        value = out.indicator if out.indicator is not None else float(out.loss.detach())
        return value > max(0.0, 1.0 - self.config.thresholds[i])
