"""The pieces several guidance methods share, with the numerics of the authors' released code.

* **Map preparation:** ``full_precision``, ``layers_of``.
* **Divergences the losses use** (``released_symmetric_kl``, ``released_jensen_shannon``, ``dot_overlap``,
  ``clamped_entropy``) and SynGen's unit distances (``token_distributions``, ``unit_distance``, ``distances_to``):
  SynGen and SynGen + entropy; Divide & Bind uses the JSD.
* **Released smoothing and token softmax** (``released_gaussian_kernel``, ``smooth``, ``token_softmax``):
  Attend-and-Excite and Divide & Bind.
* **Subjects** (``word_positions``, ``resolve_subjects``): Attend-and-Excite and Divide & Bind.
* **Step schedules:** ``step_size`` (Attend-and-Excite's α_i, also Divide & Bind's), ``scheduled_plan`` (A&E's
  plan with a refinement cap), ``FixedStepMethod`` (SynGen's constant α for i < ``intervention_steps``, also
  SynGen + entropy and function losses) and ``RefinementScheduleMethod`` (A&E's α_i with a fixed number of
  refinement passes: CONFORM, A-STAR, Predicated Diffusion).
* **State across steps:** ``PreviousStep`` (the previous step's maps: A-STAR's retention).

The divergences here are *loss* numerics and differ, on purpose, from the analysis metrics of the same formula in
:mod:`attnlens.metrics` (which renormalise their inputs, smooth with ``eps`` and use ``xlogy``); each docstring names
its ``attnlens.metrics`` counterpart and how they differ. Method modules import from here and from ``_config``, never
from one another.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import AttnlensError
from ..maps import layers_at_resolution, spatial_normalize, to_token_first
from .base import GuidanceMethod, StepPlan

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------------------------------------------
# Map preparation
# ----------------------------------------------------------------------------------------------------------------


def full_precision(x: torch.Tensor) -> torch.Tensor:
    """Half-precision maps → float32 (the released code computes its losses in fp32); other dtypes unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def layers_of(maps: Mapping[str, torch.Tensor], size: int) -> list[str]:
    """Names of the ``(heads, h, w, T)`` maps whose spatial size is ``size × size``."""
    return layers_at_resolution({n: tuple(m.shape[-3:-1]) for n, m in maps.items()}, size)


# ----------------------------------------------------------------------------------------------------------------
# Divergences between spatial distributions (loss numerics)
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


def released_symmetric_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    r"""SynGen's distance as its released code computes it: the symmetric KL of two spatial distributions.

    d(P, Q) = ½ [KL(P‖Q) + KL(Q‖P)],  KL(P‖Q) = Σ_ij P_ij (log P_ij − log Q_ij)   (natural log)

    Computed as ``torch.distributions.Categorical`` does in the released code: logs of probabilities clamped to
    [ε, 1 − ε] with ε the dtype's machine epsilon; a pixel with P = 0 contributes 0, one with Q = 0 < P gives +∞.
    The inputs are taken as they are (already spatial distributions, no renormalisation).

    Analysis counterpart: :func:`attnlens.metrics.symmetric_kl` — same formula, but it renormalises each map,
    smooths with ``eps`` (default 1e-8, finite on disjoint supports) and uses ``xlogy`` without clamping; with
    ``eps=0`` it agrees with this function up to the ε-clamp of probabilities below ε.

    Args:
        p (`torch.Tensor`): distributions over the last two (pixel) dims; each ``(h, w)`` map sums to 1
            (see ``attnlens.maps.spatial_normalize``).
        q (`torch.Tensor`): same, broadcastable against ``p``.

    Shapes:
        p, q: ``(..., h, w)`` → ``(...)``.
    """
    p, q = flatten_pixels(p), flatten_pixels(q)
    return 0.5 * (_categorical_kl(p, q) + _categorical_kl(q, p))


def released_jensen_shannon(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    r"""Jensen–Shannon divergence as Divide & Bind's released code applies it: on the inputs as given, not
    renormalised (natural log; 0 ≤ JSD ≤ log 2 for distributions).

    JSD(P, Q) = ½ KL(P‖M) + ½ KL(Q‖M),  M = ½ (P + Q)

    Pixels where a map is 0 contribute 0 (logs clamped at the dtype's smallest normal number, see ``safe_log``, so
    gradients stay finite). Divide & Bind feeds it thresholded maps that no longer sum to 1.

    Analysis counterpart: :func:`attnlens.metrics.jensen_shannon` — same formula on the *spatially renormalised*
    maps (``xlogy``, optional ``eps`` smoothing); the two agree on inputs that already sum to 1.

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
    Analysis counterpart: none (:func:`attnlens.metrics.cosine_similarity` is the scale-free relative).

    Shapes:
        p, q: ``(..., h, w)`` → ``(...)``.
    """
    return -(flatten_pixels(p) * flatten_pixels(q)).sum(-1)


def clamped_entropy(p: torch.Tensor) -> torch.Tensor:
    r"""Shannon entropy of spatial distributions as the SynGen + entropy loss computes it (the report published no
    code, so there is no released variant): H(P) = −Σ_ij P_ij log P_ij (natural log; 0 log 0 = 0).

    The inputs are taken as given (already spatial distributions) and the log is clamped at the dtype's smallest
    normal number (``safe_log``), so the gradient stays finite at P = 0. 0 for a one-hot map, log(h·w) for a
    uniform one.

    Analysis counterpart: :func:`attnlens.metrics.spatial_entropy` — same formula on the *renormalised* maps with
    ``xlogy`` (no clamp; optional division by log(h·w)).

    Shapes:
        p: ``(..., h, w)`` → ``(...)``.
    """
    p = flatten_pixels(p)
    return -(p * safe_log(p)).sum(-1)


#: distances accepted by SynGen's ``distance`` option; the keys are what run manifests store
DISTANCES: dict[str, Distance] = {
    "symmetric_kl": released_symmetric_kl,
    "jensen_shannon": released_jensen_shannon,
    "dot_overlap": dot_overlap,
}

#: short names accepted on the command line (-O distance=jsd); stored under the long name
DISTANCE_ALIASES = {"skl": "symmetric_kl", "kl": "symmetric_kl", "jsd": "jensen_shannon", "js": "jensen_shannon",
                    "dot": "dot_overlap"}


def get_distance(name: str) -> Distance:
    """The distance function called ``name`` (a key of ``DISTANCES`` or of ``DISTANCE_ALIASES``)."""
    try:
        return DISTANCES[DISTANCE_ALIASES.get(name, name)]
    except KeyError:
        raise ValueError(f"unknown distance {name!r}; valid choices: {sorted(DISTANCES)}") from None


# ----------------------------------------------------------------------------------------------------------------
# SynGen's units: token distributions and distances between words of one or more pieces
# ----------------------------------------------------------------------------------------------------------------


def token_distributions(agg: torch.Tensor) -> torch.Tensor:
    """Token-first spatial distributions of an aggregate: each token's ``(h, w)`` map divided by its sum.

    Shapes:
        agg: ``(h, w, T)`` → ``(T, h, w)``.
    """
    return spatial_normalize(to_token_first(agg))


def distances_to(maps: torch.Tensor, u: Sequence[int], others: Sequence[int], fn: Distance) -> torch.Tensor:
    """``[D(u, o) for o in others]``: the distance of unit ``u`` (max over its pieces) to each single position.

    Shapes:
        maps: ``(T, h, w)`` → ``(len(others),)``.
    """
    pu = maps[list(u)].unsqueeze(1)  # (|u|, 1, h, w)
    po = maps[list(others)].unsqueeze(0)  # (1, |others|, h, w)
    return fn(pu, po).amax(dim=0)


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


# ----------------------------------------------------------------------------------------------------------------
# Attend-and-Excite's released smoothing and token softmax (also Divide & Bind's)
# ----------------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------------
# Subjects: the tokens Attend-and-Excite excites and Divide & Bind divides
# ----------------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------------
# Step schedules
# ----------------------------------------------------------------------------------------------------------------


def step_size(i: int, num_timesteps: int, scale_factor: float = 20.0,
              scale_range: tuple[float, float] = (1.0, 0.5)) -> float:
    r"""Attend-and-Excite's step size α_i = scale_factor · sqrt(r_i), r = linspace(r₀, r₁, num_timesteps)
    (Divide & Bind uses the same).

    With 51 PNDM timesteps: 20.0 at i = 0, 17.4356 at i = 24.
    """
    return float(scale_factor * np.sqrt(np.linspace(scale_range[0], scale_range[1], num_timesteps)[i]))


class FixedStepMethod(GuidanceMethod):
    """SynGen's schedule, for methods whose ``Config`` has ``resolution``, ``step_size`` and
    ``intervention_steps``: the ``resolution``² layers, a constant α = ``step_size`` for loop indices
    i < ``intervention_steps``, no refinement."""

    def layers(self, resolutions: Mapping[str, tuple[int, int]]) -> list[str]:
        return layers_at_resolution(resolutions, self.config.resolution)

    def plan(self, i: int, num_timesteps: int) -> StepPlan | None:
        return StepPlan(step_size=self.config.step_size) if i < self.config.intervention_steps else None


def scheduled_plan(config: Any, i: int, num_timesteps: int, max_refinement: int = 0) -> StepPlan | None:
    """Attend-and-Excite's plan for loop index ``i``: None for i ≥ ``config.max_iter_to_alter``, else α_i =
    ``step_size(i, num_timesteps, config.scale_factor, config.scale_range)`` with the given refinement cap."""
    if i >= config.max_iter_to_alter:
        return None
    return StepPlan(step_size=step_size(i, num_timesteps, config.scale_factor, config.scale_range),
                    max_refinement=max_refinement)


class RefinementScheduleMethod(GuidanceMethod):
    """Attend-and-Excite's schedule with a *fixed* number of refinement passes, for methods whose ``Config`` has
    ``resolution``, ``scale_factor``, ``scale_range``, ``max_iter_to_alter``, ``refinement_steps`` and
    ``refinement_at``: the ``resolution``² layers, α_i = ``step_size(i, …)`` for loop indices
    i < ``max_iter_to_alter``, and at i ∈ ``refinement_at`` exactly ``refinement_steps`` extra forward + update
    passes before the step's own update (no threshold; ``refinement_steps = 0`` or ``refinement_at = ()``: none)."""

    def layers(self, resolutions: Mapping[str, tuple[int, int]]) -> list[str]:
        return layers_at_resolution(resolutions, self.config.resolution)

    def plan(self, i: int, num_timesteps: int) -> StepPlan | None:
        c = self.config
        return scheduled_plan(c, i, num_timesteps, c.refinement_steps if i in c.refinement_at else 0)

    def refine(self, i: int, out: Any) -> bool:
        """Always at a refinement step (a fixed number of passes, no threshold)."""
        return i in self.config.refinement_at


class PreviousStep:
    """Hands the value a method computed at its latest forward of the previous guided step to the next step.

    ``advance(i)`` at the start of step ``i``'s loss returns it (None at the first guided step); ``store(i, v)``
    after each forward keeps ``v`` (detach it first). Step index 0, or one lower than the last, starts a new sample
    and forgets everything (a repeated index is a refinement pass of the same step), so one method object serves
    several seeds and prompts.
    """

    def __init__(self) -> None:
        self.last: tuple[int, Any] | None = None  # (step, value) of the latest forward
        self.previous: tuple[int, Any] | None = None  # the same for the latest forward of an earlier step

    def advance(self, i: int) -> Any | None:
        if self.last is not None and (i == 0 or self.last[0] > i):  # a new sample
            self.last = self.previous = None
        if self.last is not None and self.last[0] != i:
            self.previous = self.last
        return None if self.previous is None else self.previous[1]

    def store(self, i: int, value: Any) -> None:
        self.last = (i, value)
