"""``attend-excite``: Attend-and-Excite (Chefer et al., SIGGRAPH 2023) — excite the most neglected subject token.

Pure pieces (the released Gaussian kernel, smoothing, the token re-softmax, the loss, the step-size schedule) plus
the subject resolution shared with Divide & Bind. Reproduces yuval-alaluf/Attend-and-Excite by default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import AttnlensError
from ..maps import aggregate, layers_at_resolution, to_token_first
from .base import GuidanceMethod, LossOutput, StepPlan
from .registry import register_method
from .syngen import check_bool, check_float, check_int, check_pair, check_step_map, full_precision, layers_of


def released_gaussian_kernel(kernel_size: int = 3, sigma: float = 0.5) -> torch.Tensor:
    r"""The 2-D smoothing kernel of the released Attend-and-Excite code (copied by every later repo).

    The code means a Gaussian of standard deviation σ but builds exp(−((x − μ)/(2σ))²) = exp(−(x − μ)²/(4σ²)),
    i.e. an effective σ' = σ√2; the product of the 1-D factors is normalised to sum 1. For σ = 0.5 and size 3 the
    1-D kernel is [e⁻¹, 1, e⁻¹]/(1 + 2e⁻¹) = [0.2119, 0.5761, 0.2119].

    Shapes:
        → ``(kernel_size, kernel_size)``, float32.
    """
    grid = torch.meshgrid(*[torch.arange(kernel_size, dtype=torch.float32)] * 2, indexing="ij")
    kernel = torch.ones(kernel_size, kernel_size)
    mean = (kernel_size - 1) / 2
    for g in grid:
        kernel = kernel * (1 / (sigma * math.sqrt(2 * math.pi)) * torch.exp(-(((g - mean) / (2 * sigma)) ** 2)))
    return kernel / kernel.sum()


def smooth(maps: torch.Tensor, kernel_size: int = 3, sigma: float = 0.5) -> torch.Tensor:
    """Smooth each ``(h, w)`` map with ``released_gaussian_kernel`` after reflect padding (size preserved).

    Computed in float32, as the released code casts to ``FloatTensor`` (it pads by 1 whatever the kernel size;
    here the padding is ``kernel_size // 2``, the same for the default 3).

    Shapes:
        maps: ``(..., h, w)`` → ``(..., h, w)`` float32.
    """
    lead, (h, w) = maps.shape[:-2], maps.shape[-2:]
    x = maps.reshape(-1, 1, h, w).float()
    pad = kernel_size // 2
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    kernel = released_gaussian_kernel(kernel_size, sigma).to(x.device)[None, None]
    return F.conv2d(x, kernel).reshape(*lead, h, w)


def token_softmax(agg: torch.Tensor, prompt_length: int | None = None, sd21: bool = False) -> torch.Tensor:
    r"""Attend-and-Excite's re-softmax over text tokens: Ã = softmax(100 · A[..., 1:76)) (``<sot>`` and the last
    slot dropped; ``<eot>`` and padding kept). With ``sd21`` the slice is [1 : T+1) (prompt pieces only), as the
    released SD 2.1 option. Index k of the result is token position k + 1.

    Shapes:
        agg: ``(h, w, 77)`` → ``(h, w, 75)`` (``sd21``: ``(h, w, T)``).
    """
    if sd21:
        if prompt_length is None:
            raise ValueError("token_softmax(sd21=True) needs prompt_length")
        text = agg[..., 1 : prompt_length + 1]
    else:
        text = agg[..., 1:-1]
    return torch.softmax(text * 100, dim=-1)


def step_size(i: int, num_timesteps: int, scale_factor: float = 20.0,
              scale_range: tuple[float, float] = (1.0, 0.5)) -> float:
    r"""Attend-and-Excite's step size α_i = scale_factor · sqrt(r_i), r = linspace(r₀, r₁, num_timesteps).

    With 51 PNDM timesteps: 20.0 at i = 0, 17.4356 at i = 24.
    """
    return float(scale_factor * np.sqrt(np.linspace(scale_range[0], scale_range[1], num_timesteps)[i]))


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


def _piece_text(piece: str) -> str:
    return piece.replace("</w>", "").lower()


def word_positions(parse: Any, word: str) -> list[int]:
    """First-piece positions of every occurrence of ``word`` in the prompt (case-insensitive), found by joining
    consecutive word pieces ("surfboard" → ``surf`` + ``board</w>`` → the position of ``surf``)."""
    pieces = parse.pieces[1 : parse.prompt_length + 1]
    target, found = word.lower(), []
    for start in range(len(pieces)):
        text = ""
        for piece in pieces[start:]:
            text += _piece_text(piece)
            if text == target and piece.endswith("</w>"):
                found.append(start + 1)
                break
            if not target.startswith(text):
                break
    return found


def resolve_subjects(parse: Any, subjects: Sequence[str | int] | None = None) -> list[tuple[str, int]]:
    """``(name, position)`` of each subject token.

    By default the prompt's nouns (``parse.nouns``), each by its **first** word piece: A&E's token indices are
    single positions, so a multi-piece noun ("surfboard" → ``surf`` + ``board``) is represented by its first piece
    (pass explicit positions in ``subjects`` to choose another). ``subjects`` overrides: an int is a token position
    (1..T), a string a word (every occurrence, first piece each). Names repeat only if positions do; a repeated
    word's name gets ``@position``.

    Raises:
        AttnlensError: a position outside 1..T or a word not in the prompt.
    """
    t = parse.prompt_length
    if subjects is None:
        out = [(u.word, u.positions[0]) for u in parse.nouns if u.positions]
    else:
        out = []
        for s in subjects:
            if isinstance(s, int):
                if not 1 <= s <= t:
                    raise AttnlensError(f"subject position {s} is outside the prompt's positions 1..{t}",
                                        hint=f"pieces: {list(parse.pieces[1:t + 1])}")
                out.append((_piece_text(parse.pieces[s]), s))
            else:
                found = word_positions(parse, s)
                if not found:
                    raise AttnlensError(f"subject word {s!r} is not in the prompt {parse.prompt!r}",
                                        hint="give a word of the prompt or a token position")
                out.extend((s, p) for p in found)
    counts: dict[str, int] = {}
    for name, _ in out:
        counts[name] = counts.get(name, 0) + 1
    return [(f"{n}@{p}" if counts[n] > 1 else n, p) for n, p in out]


def check_subjects(cfg: Any, name: str = "subjects") -> None:
    """Require None or a list of words (str) and token positions (int ≥ 1); store a tuple."""
    v = getattr(cfg, name)
    if v is None:
        return
    ok = isinstance(v, (list, tuple)) and all(
        (isinstance(s, str) and s.strip()) or (isinstance(s, int) and not isinstance(s, bool) and s >= 1) for s in v)
    if not ok:
        raise ValueError(f"{name} must be null or a list of words and token positions (≥ 1); got {v!r}")
    object.__setattr__(cfg, name, tuple(v))


def check_kernel_size(cfg: Any, name: str = "kernel_size") -> None:
    """Require an odd integer ≥ 1."""
    check_int(cfg, name, low=1)
    if getattr(cfg, name) % 2 == 0:
        raise ValueError(f"{name} must be odd; got {getattr(cfg, name)}")


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
    Subjects default to the parse's nouns (first word piece each, see ``resolve_subjects``).

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
            ``released_gaussian_kernel``).
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
        if i >= c.max_iter_to_alter:
            return None
        cap = c.max_refinement_steps if i in c.thresholds else 0
        return StepPlan(step_size=step_size(i, num_timesteps, c.scale_factor, c.scale_range), max_refinement=cap)

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
