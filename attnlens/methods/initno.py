"""``initno``: InitNO (Guo et al., CVPR 2024) — optimise the initial noise, then Attend-and-Excite-style guidance.

Follows xiefan-guo/initno (``initno/pipelines/pipeline_sd_initno.py``, ``utils/attn_utils.py``, ``utils/ptp_utils.py``
and the settings of ``run_sd_initno.py``, the README's way to run it). Read, not copied.

Two parts, both on the ``resolution``² layers (cross-attention of ``attn2``, self-attention of the sibling ``attn1``):

* the **noise search**, a hook before the denoising loop (``initial_noise``): z_T' = z_T ⊙ exp(½ log σ²) + μ, with
  (μ, log σ²) optimised by Adam against ``initno_search_loss`` at the first timestep, then pulled back by the KL
  term ``initno_kl``; up to 5 rounds of 10 steps on fresh noise, else 50 more steps from the best round. Recorded as
  phase ``noise_search``, one iteration per Adam step (scalars ``noise_search_*``);
* **guided sampling**: at i < 25, z ← z − α_i ∂L_cross/∂z, with refinement at i ∈ {10, 20} on the joint loss of
  ``initno_guidance_loss`` until L_cross ≤ 0.2 and L_self ≤ 0.3 (at most 20 passes).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..maps import aggregate
from ._config import (check_bool, check_float, check_int, check_kernel_size, check_pair, check_step_list,
                      check_subjects)
from ._shared import full_precision, resolve_subjects, smooth, step_size, token_softmax
from .base import GuidanceMethod, LossOutput, StepPlan
from .registry import register_method

# ----------------------------------------------------------------------------------------------------------------
# The released mask helpers: Otsu's threshold (OpenCV) and the connected component of the peak
# ----------------------------------------------------------------------------------------------------------------


def otsu_threshold(x: torch.Tensor) -> float:
    r"""The threshold InitNO's ``fn_get_otsu_mask`` gets from OpenCV, as a value in map units.

    The map is quantised as the released code does, q = ⌊255·x⌋ (float32 product, cast to uint16), and OpenCV's Otsu
    search runs over the integer levels: with p_i the fraction of pixels at level i, q₁(i) = Σ_{j≤i} p_j,
    μ₁, μ₂ the class means, the level k maximising σ²_B(i) = q₁(1 − q₁)(μ₁ − μ₂)² (first maximum; levels where a
    class is empty, min(q₁, q₂) < FLT_EPSILON, are skipped) is returned as k/255. 0 when every pixel has one level.

    Shapes:
        x: ``(h, w)`` → float.
    """
    q = (x.detach().float().cpu().numpy() * np.float32(255)).astype(np.uint16).ravel()
    hist = np.bincount(q)
    scale = 1.0 / q.size
    mu = 0.0
    for i, h in enumerate(hist):
        mu += i * float(h)
    mu *= scale
    mu1 = q1 = max_sigma = 0.0
    best = 0
    eps = float(np.finfo(np.float32).eps)
    for i, h in enumerate(hist):
        p = float(h) * scale
        mu1 *= q1
        q1 += p
        q2 = 1.0 - q1
        if min(q1, q2) < eps or max(q1, q2) > 1.0 - eps:
            continue
        mu1 = (mu1 + i * p) / q1
        mu2 = (mu - q1 * mu1) / q2
        sigma = q1 * q2 * (mu1 - mu2) * (mu1 - mu2)
        if sigma > max_sigma:
            max_sigma, best = sigma, i
    return best / 255.0


def peak_component(mask: torch.Tensor, row: int, col: int) -> torch.Tensor:
    """The 4-connected component of ``mask`` (1 = foreground) that holds pixel (row, col), as a 0/1 mask of the
    same dtype; all zeros when that pixel is background (the released ``fn_clean_mask``, iterative).

    Shapes:
        mask: ``(h, w)`` → ``(h, w)``.
    """
    m = mask.detach().cpu().numpy() == 1
    h, w = m.shape
    out = np.zeros_like(m)
    todo = deque([(row, col)])
    while todo:
        r, c = todo.popleft()
        if 0 <= r < h and 0 <= c < w and m[r, c] and not out[r, c]:
            out[r, c] = True
            todo.extend(((r, c + 1), (r, c - 1), (r + 1, c), (r - 1, c)))
    return torch.as_tensor(out, dtype=mask.dtype, device=mask.device)


# ----------------------------------------------------------------------------------------------------------------
# The loss terms
# ----------------------------------------------------------------------------------------------------------------


def _token_maps(agg: torch.Tensor, indices: Sequence[int], smooth_attentions: bool, kernel_size: int,
                sigma: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
    probs = token_softmax(agg)  # (h, w, 75): index k is position k + 1
    maps = []
    for p in indices:
        m = probs[..., p - 1]
        maps.append(smooth(m, kernel_size, sigma) if smooth_attentions else m)
    return probs, maps


def _peaks(m: torch.Tensor, k: int) -> list[tuple[int, int]]:
    w = m.shape[-1]
    idx = m.detach().reshape(-1).topk(k, dim=0, largest=True, sorted=True).indices.tolist()
    return [(i // w, i % w) for i in idx]


def cross_attention_terms(maps: Sequence[torch.Tensor], top_k: int = 1) -> tuple[torch.Tensor, torch.Tensor,
                                                                                  list[list[tuple[int, int]]]]:
    r"""InitNO's cross-attention response and cleanliness terms on the subjects' (smoothed, re-softmaxed) maps.

    With v_s the mean of the top-``top_k`` values of subject s's map M_s (peaks found on the detached map):

        L_cross = max_s max(0, 1 − v_s)            (Python's ``max``: the first maximum carries the gradient)

    and, with T_s Otsu's threshold of M_s (``otsu_threshold``), F_s the 4-connected component of {M_s ≥ T_s} that
    holds the top peak (``peak_component``) and B_s = max over pixels outside F_s of M_s:

        L_clean = Σ_s B_s · [B_s > min(M_s on F_s, 1 elsewhere)]

    Returns:
        `(L_cross, L_clean, peaks)`: peaks are the (row, col) of each subject's top-k pixels.

    Shapes:
        maps: ``[(h, w)] × S`` → 0-d, 0-d.
    """
    values, peaks = [], []
    clean = maps[0].sum() * 0.0
    for m in maps:
        coords = _peaks(m, top_k)
        values.append(sum(m[r, c] for r, c in coords) / top_k)
        peaks.append(coords)
        mask = (m >= otsu_threshold(m)).to(m.dtype)
        mask = peak_component(mask, *coords[0])
        fg = m * mask + (1 - mask)
        bg = m * (1 - mask)
        clean = clean + (bg.max() if bg.max() > fg.min() else bg.max() * 0)
    cross = max(max(0 * v, 1.0 - v) for v in values)
    return cross, clean, peaks


def self_attention_conflict(self_agg: torch.Tensor, peaks: Sequence[Sequence[tuple[int, int]]], *,
                            smooth_attentions: bool = True, kernel_size: int = 3, sigma: float = 0.5) -> torch.Tensor:
    r"""InitNO's self-attention conflict: how much the subjects' self-attention maps overlap.

    S_s = mean over subject s's peaks (r, c) of the self-attention row A_self[r, c] as an (h, w) map (smoothed with
    the released 3×3 kernel); for each pair s < s':

        L_self = mean_{s<s'} Σ min(S_s, S_s') / (Σ (S_s + S_s') + 10⁻⁶)

    0 with fewer than two subjects.

    Shapes:
        self_agg: ``(h, w, h·w)`` (mean over layers and heads of the self-attention probabilities) → 0-d.
    """
    h, w = self_agg.shape[:2]
    maps = []
    for coords in peaks:
        s = sum(self_agg[r, c].reshape(h, w) for r, c in coords) / len(coords)
        maps.append(smooth(s, kernel_size, sigma) if smooth_attentions else s)
    total, pairs = self_agg.sum() * 0.0, 0
    for a in range(len(maps)):
        for b in range(a + 1, len(maps)):
            total = total + torch.minimum(maps[a], maps[b]).sum() / ((maps[a] + maps[b]).sum() + 1e-6)
            pairs += 1
    return total / pairs if pairs else total


def initno_search_loss(agg: torch.Tensor, self_agg: torch.Tensor, indices: Sequence[int], *, top_k: int = 1,
                       smooth_attentions: bool = True, kernel_size: int = 3, sigma: float = 0.5,
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""The loss of InitNO's noise search (the released ``fn_compute_loss``).

    On Ã = softmax(100 · A[..., 1:76)) over tokens (A&E's ``token_softmax``), each subject's map smoothed:

        L = L_cross + L_self · [L_cross ≤ 0.5] + L_clean

    (``cross_attention_terms``, ``self_attention_conflict``). The self term is zeroed, as released, while the
    response term is above 0.5, and the returned ``self`` term is the zeroed one (the search's stopping rule and
    round score read it).

    Returns:
        `(loss, terms)` with terms ``cross``, ``self``, ``clean`` (0-d tensors, with graph).

    Shapes:
        agg: ``(h, w, 77)``; self_agg: ``(h, w, h·w)`` → 0-d.
    """
    _, maps = _token_maps(agg, indices, smooth_attentions, kernel_size, sigma)
    cross, clean, peaks = cross_attention_terms(maps, top_k)
    self_term = self_attention_conflict(self_agg, peaks, smooth_attentions=smooth_attentions,
                                        kernel_size=kernel_size, sigma=sigma)
    if cross > 0.5:
        self_term = self_term * 0
    loss = cross + self_term + clean
    return loss, {"cross": cross, "self": self_term, "clean": clean}


def initno_guidance_loss(agg: torch.Tensor, self_agg: torch.Tensor, indices: Sequence[int],
                         cache: torch.Tensor | None = None, *, alpha: float = 0.9, top_k: int = 1,
                         smooth_attentions: bool = True, kernel_size: int = 3, sigma: float = 0.5,
                         ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    r"""The loss of InitNO's guided sampling (the released ``fn_augmented_compute_losss``).

    With Ã as in ``initno_search_loss`` and the running average C ← Ã (first call), else C ← α C + (1 − α) Ã
    (detached, all 75 tokens, updated *before* use):

        L_align = Σ_s mean_pixels |G(Ã_s) − G(C_s)|        (G: the released 3×3 smoothing)
        L       = L_cross + 0.1 L_clean + 0.1 L_align + L_self

    L is what the refinement passes descend; the step's own update descends L_cross alone (as released).

    Returns:
        `(loss, terms, cache)`: terms ``cross``, ``self``, ``clean``, ``align``; the updated running average.

    Shapes:
        agg: ``(h, w, 77)``; self_agg: ``(h, w, h·w)``; cache: ``(h, w, 75)`` → 0-d.
    """
    probs, maps = _token_maps(agg, indices, smooth_attentions, kernel_size, sigma)
    cross, clean, peaks = cross_attention_terms(maps, top_k)
    cur = probs.detach().clone()
    cache = cur if cache is None else cache * alpha + cur * (1 - alpha)
    align = agg.sum() * 0.0
    for p, m in zip(indices, maps):
        c = cache[..., p - 1]
        c = smooth(c, kernel_size, sigma) if smooth_attentions else c
        align = align + torch.nn.functional.l1_loss(m, c)
    self_term = self_attention_conflict(self_agg, peaks, smooth_attentions=smooth_attentions,
                                        kernel_size=kernel_size, sigma=sigma)
    loss = cross * 1.0 + clean * 0.1 + align * 0.1 + self_term * 1.0
    return loss, {"cross": cross, "self": self_term, "clean": clean, "align": align}, cache


def initno_kl(log_var: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    r"""The KL term of InitNO's noise search: KL(N(μ, σ²) ‖ N(0, 1)) per element, averaged (released
    ``fn_calc_kld_loss_func``)::

        L_KL = −½ · mean(1 + log σ² − μ² − σ²)

    0 at μ = 0, log σ² = 0. For one element with μ = 1, log σ² = 0: ½.

    Shapes:
        log_var, mu: same shape → 0-d.
    """
    return -0.5 * torch.mean(1 + log_var - mu ** 2 - log_var.exp())


# ----------------------------------------------------------------------------------------------------------------
# The method
# ----------------------------------------------------------------------------------------------------------------


def _self_layer(name: str) -> str:
    return name[: -len("attn2")] + "attn1"


@register_method("initno")
class InitNO(GuidanceMethod):
    r"""InitNO (Guo et al., *InitNO: Boosting Text-to-Image Diffusion Models via Initial Noise Optimization*,
    CVPR 2024, https://arxiv.org/abs/2404.04650; code: https://github.com/xiefan-guo/initno).

    Subjects: the parse's nouns (first piece each), or ``subjects``. Maps: the mean over the ``resolution``²
    cross-attention layers and heads, and over their self-attention siblings (``attn1``).

    Noise search (``noise_search``): for round r < ``search_rounds``, (μ, log σ²) start at 0 and Adam (lr
    ``search_lr``, eps ``search_eps``) runs up to ``search_steps`` steps on ``initno_search_loss`` of
    z' = z ⊙ exp(½ log σ²) + μ at the first timestep; after each step, Adam steps on ``initno_kl`` while it exceeds
    ``kl_threshold``. A round succeeds (and the search stops) when L_cross < ``cross_threshold`` and
    L_self < ``self_threshold``; otherwise the next round starts from fresh noise of the run's generator. The rounds
    are ranked by L_cross + L_self of their last evaluation (+1 when L_self ≤ 10⁻⁶); if the best did not succeed,
    ``search_final_steps`` more steps run from its starting noise.

    Guided sampling (``guided_sampling``): at i < ``max_iter_to_alter``, z ← z − α_i ∂L_cross/∂z with A&E's
    α_i = scale_factor·sqrt(linspace(1, 0.5)[i]); at i ∈ ``refinement_at``, while L_cross > ``cross_threshold`` or
    L_self > ``self_threshold``, refinement passes descend the joint ``initno_guidance_loss`` (at most
    ``max_refinement_steps``).

    Defaults are ``run_sd_initno.py``'s (the README's way to run it: ``run_sd=False``, guided sampling on).
    """

    unet_only = "it reads the self-attention (attn1) maps of the UNet's cross-attention layers"

    @dataclass(frozen=True)
    class Config:
        scale_factor: float = 20.0
        scale_range: tuple[float, float] = (1.0, 0.5)
        max_iter_to_alter: int = 25
        refinement_at: tuple[int, ...] = (10, 20)
        max_refinement_steps: int = 20
        cross_threshold: float = 0.2
        self_threshold: float = 0.3
        alpha: float = 0.9
        resolution: int = 16
        top_k: int = 1
        smooth_attentions: bool = True
        sigma: float = 0.5
        kernel_size: int = 3
        noise_search: bool = True
        guided_sampling: bool = True
        search_rounds: int = 5
        search_steps: int = 10
        search_final_steps: int = 50
        search_lr: float = 1e-2
        search_eps: float = 1e-3
        kl_threshold: float = 1e-3
        kl_max_steps: int = 10000
        subjects: tuple[str | int, ...] | None = None

        def __post_init__(self):
            check_float(self, "scale_factor", low=0.0, strict=True)
            check_pair(self, "scale_range")
            check_int(self, "max_iter_to_alter")
            check_step_list(self, "refinement_at")
            check_int(self, "max_refinement_steps")
            check_float(self, "cross_threshold", low=0.0)
            check_float(self, "self_threshold", low=0.0)
            check_float(self, "alpha", low=0.0, high=1.0)
            check_int(self, "resolution", low=1)
            check_int(self, "top_k", low=1)
            check_bool(self, "smooth_attentions")
            check_float(self, "sigma", low=0.0, strict=True)
            check_kernel_size(self)
            check_bool(self, "noise_search")
            check_bool(self, "guided_sampling")
            check_int(self, "search_rounds", low=1)
            check_int(self, "search_steps", low=1)
            check_int(self, "search_final_steps")
            check_float(self, "search_lr", low=0.0, strict=True)
            check_float(self, "search_eps", low=0.0, strict=True)
            check_float(self, "kl_threshold", low=0.0)
            check_int(self, "kl_max_steps")
            check_subjects(self)

    def __init__(self, config: Any = None, **overrides: Any):
        super().__init__(config, **overrides)
        self._cache: torch.Tensor | None = None  # the running average of the guidance maps (reset per sample)

    def layers(self, resolutions: Mapping[str, tuple[int, int]]) -> list[str]:
        return [n for n, hw in resolutions.items() if tuple(hw) == (self.config.resolution,) * 2]

    def self_attention_layers(self, resolutions: Mapping[str, tuple[int, int]]) -> list[str]:
        return self.layers(resolutions)

    def plan(self, i: int, num_timesteps: int) -> StepPlan | None:
        c = self.config
        if not c.guided_sampling or i >= c.max_iter_to_alter:
            return None
        cap = c.max_refinement_steps if i in c.refinement_at else 0
        return StepPlan(step_size=step_size(i, num_timesteps, c.scale_factor, c.scale_range), max_refinement=cap)

    def idle_reason(self, parse: Any) -> str | None:
        return None if resolve_subjects(parse, self.config.subjects) else "the prompt has no subject (noun) to excite"

    def indices(self, parse: Any) -> list[int]:
        return [p for _, p in resolve_subjects(parse, self.config.subjects)]

    def aggregates(self, maps: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cross (h, w, 77), self (h, w, h·w))``: mean over the ``resolution``² layers and heads of each kind."""
        size = (self.config.resolution,) * 2
        cross = [n for n, m in maps.items() if n.endswith("attn2") and tuple(m.shape[-3:-1]) == size]
        selfs = [_self_layer(n) for n in cross if _self_layer(n) in maps]
        if not selfs:
            raise ValueError("InitNO needs the self-attention maps of its layers (self_attention_layers)")
        return full_precision(aggregate(maps, cross)), full_precision(aggregate(maps, selfs))

    def _options(self) -> dict[str, Any]:
        c = self.config
        return dict(top_k=c.top_k, smooth_attentions=c.smooth_attentions, kernel_size=c.kernel_size, sigma=c.sigma)

    def loss(self, maps: Mapping[str, torch.Tensor], parse: Any, i: int) -> LossOutput:
        agg, self_agg = self.aggregates(maps)
        loss, terms, self._cache = initno_guidance_loss(agg, self_agg, self.indices(parse), self._cache,
                                                        alpha=self.config.alpha, **self._options())
        cross = terms["cross"]
        return LossOutput(loss=loss, step_loss=cross, indicator=float(cross.detach()),
                          terms={"joint": loss.detach(), **{k: v.detach() for k, v in terms.items()}})

    def refine(self, i: int, out: LossOutput) -> bool:
        """At a refinement step, while L_cross > cross_threshold or L_self > self_threshold (as released)."""
        c = self.config
        return i in c.refinement_at and (float(out.terms["cross"]) > c.cross_threshold
                                         or float(out.terms["self"]) > c.self_threshold)

    # -- the noise search --------------------------------------------------------------------------------------
    def initial_noise(self, search: Any) -> torch.Tensor | None:
        self._cache = None  # a new sample
        c = self.config
        if not c.noise_search:
            return None
        indices = self.indices(search.parse)
        counter = [0]
        z, pool = search.latents.detach(), []
        for r in range(c.search_rounds):
            found, ok, score = self._optimise(search, z, indices, c.search_steps, r, counter)
            pool.append((score, r, found, z, ok))
            if ok:
                break
            z = search.draw().detach()
        pool.sort(key=lambda e: (e[0], e[1]))
        score, r, found, start, ok = pool[0]
        if not ok and c.search_final_steps > 0:
            found, ok, score = self._optimise(search, start, indices, c.search_final_steps, len(pool), counter)
        return found

    def _optimise(self, search: Any, z: torch.Tensor, indices: list[int], steps: int, round_: int,
                  counter: list[int]) -> tuple[torch.Tensor, bool, float]:
        """One run of the released ``fn_initno``: returns the optimised noise, success, and its round score."""
        c = self.config
        log_var = torch.zeros_like(z, requires_grad=True)
        mu = torch.zeros_like(z, requires_grad=True)
        opt = torch.optim.Adam([log_var, mu], lr=c.search_lr, eps=c.search_eps)
        ok, cross, self_term = False, float("inf"), float("inf")
        for _ in range(steps):
            it = counter[0]
            counter[0] += 1
            maps = search.forward(z * torch.exp(0.5 * log_var) + mu, it)
            agg, self_agg = self.aggregates(maps)
            loss, terms = initno_search_loss(agg, self_agg, indices, **self._options())
            cross, self_term = float(terms["cross"].detach()), float(terms["self"].detach())
            values = {"loss": float(loss.detach()), "cross": cross, "self": self_term,
                      "clean": float(terms["clean"].detach()), "round": round_}
            if cross < c.cross_threshold and self_term < c.self_threshold:
                search.log(it, {**values, "succeeded": 1.0})
                ok = True
                break
            grads = torch.autograd.grad(loss, [log_var, mu])
            opt.zero_grad()
            log_var.grad, mu.grad = grads
            opt.step()
            kl = initno_kl(log_var, mu)
            n = 0
            while kl > c.kl_threshold and n < c.kl_max_steps:  # the released loop has no cap
                opt.zero_grad()
                log_var.grad, mu.grad = torch.autograd.grad(kl, [log_var, mu])
                opt.step()
                kl = initno_kl(log_var, mu)
                n += 1
            search.log(it, {**values, "kl": float(kl.detach()), "kl_steps": n})
        found = (z * torch.exp(0.5 * log_var) + mu).detach()
        score = cross + self_term + (1.0 if self_term <= 1e-6 else 0.0)
        return found, ok, score
