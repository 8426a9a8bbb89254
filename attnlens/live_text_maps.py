"""Live (autograd-connected) image → text attention maps of the transformer families, for guidance losses.

The guided sampler reads a method's maps from ``recorder.live_maps`` during a guidance forward. For SD 1.x/2.x and
SDXL the recorder (:mod:`attnlens.recording`) provides them. For SD3, Flux, PixArt-Σ and Sana this module provides the
same interface (``context``, ``need_live``, ``live_maps``, ``resolutions``, ``latent_hw`` and the recorder's
storage calls) so that every method runs on them. Storage is the recorder's job: given an entered ``Recorder`` as
``store``, the storage calls and step contexts go to it (it records the maps of its own configuration, guidance
phase included); without one, nothing is stored.

Sites (module paths, as the recorder names them):

* SD3: ``transformer_blocks.<i>.attn`` — joint attention over ``[image; CLIP (77); T5]`` keys;
* Flux: ``transformer_blocks.<i>.attn`` — the double-stream blocks, joint attention over ``[T5; image]`` keys with
  the rotary embedding (the single-stream blocks are not used by default);
* PixArt-Σ: ``transformer_blocks.<i>.attn2`` — cross-attention over the T5 keys (padding masked);
* Sana: ``transformer_blocks.<i>.attn2`` — cross-attention over the Gemma keys (padding masked).

What a method receives, per site: ``(heads, h, w, T)`` with the text positions of the family's encoder
(:data:`attnlens.adapters.FAMILY_DEFAULTS`, ``text``): the softmax over **all** keys, sliced to that encoder's text
keys and renormalised over them, so each pixel's row is a distribution over the text positions as in a UNet's
cross-attention:

    A[q, j] = P[q, j] / Σ_{j' ∈ text} P[q, j'],   P = softmax(q·Kᵀ/√d) over every key

For CLIP (SD3) ``T = 77`` and position ``j`` is CLIP position ``j`` (``<sot>`` at 0), as the parse counts. For T5
(Flux, PixArt-Σ), which has no start token, an empty column is put first, so T5 piece ``k`` sits at position ``k + 1``
— the position a parse made with the T5 tokenizer gives it. For Gemma (Sana) the pipeline reads instruction +
prompt and keeps the first and the last ``n − 1`` positions, so a prompt piece may sit one column later than a parse
of the prompt alone puts it; the maps take the columns of :meth:`attnlens.adapters.SanaAdapter.text_columns`, which
put every piece at its parse position (``<bos>`` at 0, piece ``k`` at ``k + 1``). SD3's ``both`` (the mean of the
CLIP and the T5 maps, on the CLIP positions) is :func:`both_maps`. Sana's columns and SD3's CLIP ↔ T5 alignment come
from the prompt: the sampler calls :meth:`LiveTextMaps.set_prompt` before the first guidance forward.

The output of every attention call is the original processor's own (it is called first); the probabilities are
computed beside it, only for the sites a method asked for and only in the guidance phase.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from .adapters import FAMILY_DEFAULTS, adapter_for
from .errors import BadOption, ConfigError
from .recording.dit import dit_sites, processor_kind, query_keys
from .textctx import piece_spans

#: family → (site name prefix, site name suffix)
SITES = {"sd3": ("transformer_blocks.", ".attn"), "flux": ("transformer_blocks.", ".attn"),
         "pixart": ("transformer_blocks.", ".attn2"), "sana": ("transformer_blocks.", ".attn2")}
#: family → the text positions its guidance maps can use (the default is FAMILY_DEFAULTS[family].text)
TEXTS = {"sd3": ("clip", "t5", "both"), "flux": ("t5",), "pixart": ("t5",), "sana": ("gemma",)}


def check_guide_text(family: str, text: str | None) -> str | None:
    """``text`` if the guidance maps of ``family`` can use it (None: the family's default), else a ``BadOption``
    that says what can: only SD3 attends to two encoders, so only SD3 has a choice (``clip``, ``t5``, ``both``)."""
    if text is None:
        return None
    if family not in TEXTS:
        raise BadOption(f"guide text '{text}' is for SD3 (CLIP and T5 keys); {family} guidance reads its CLIP "
                        "positions only", hint="leave out --guide-text for this model")
    if text not in TEXTS[family]:
        hint = ("SD3: clip | t5 | both" if family == "sd3" else
                f"{family} attends to {TEXTS[family][0]} pieces only: leave out --guide-text")
        raise BadOption(f"guide text '{text}' is not available on {family}", hint=hint)
    return text


def text_sites(net, family: str) -> dict[str, Any]:
    """``{module path: attention module}`` of the guidance sites of a transformer denoiser, in block order: the
    recorder's sites (:func:`attnlens.recording.dit.dit_sites`) with the prefix of :data:`SITES`."""
    prefix, suffix = SITES[family]
    return {n: m for n, m in dit_sites(net, family).items() if n.startswith(prefix) and n.endswith(suffix)}


def site_scores_probs(kind: str, attn, hidden_states, encoder_hidden_states, attention_mask=None,
                      image_rotary_emb=None) -> tuple[torch.Tensor, int]:
    """The softmax over every key of each image query, ``(b, heads, N_image, K)``, and the index of the first text
    key. The queries, keys and mask come from :func:`attnlens.recording.dit.query_keys` (the one place that knows
    each family's projections, norms and rotary embedding); the scores are ``q·kᵀ·d^-½ + mask`` in float32."""
    q, keys, first, mask = query_keys(kind, attn, hidden_states, encoder_hidden_states, attention_mask,
                                      image_rotary_emb, encoder_hidden_states.shape[1])
    scores = q.float() @ keys.float().transpose(-1, -2) * q.shape[-1] ** -0.5
    if mask is not None:  # (b·heads, 1, K) as the processors prepare it
        scores = scores + mask.view(q.shape[0], q.shape[1], -1, mask.shape[-1]).float()
    return scores.softmax(dim=-1), first


def text_maps(probs: torch.Tensor, first: int, length: int, lead_zero: bool, hw: tuple[int, int]) -> torch.Tensor:
    """One sample's maps for a loss: the ``length`` text keys from ``first``, renormalised over them, laid out
    ``(heads, h, w, T)`` (``lead_zero``: an empty column first, see the module docstring).

    Entries of probability 0 (that column, and PixArt's masked padding, whose ``exp(−10000)`` is 0) hold the dtype's
    smallest normal number instead, so that a loss normalising each token's map over space (SynGen) stays finite
    in its gradient; the rows still sum to 1 up to that number.

    Shapes:
        probs: ``(heads, N, K)`` → ``(heads, h, w, length (+1))``.
    """
    t = probs[..., first:first + length]
    tiny = torch.finfo(t.dtype).tiny
    t = (t / t.sum(-1, keepdim=True).clamp_min(tiny)).clamp_min(tiny)
    if lead_zero:
        t = torch.cat([torch.full_like(t[..., :1], tiny), t], dim=-1)
    return t.reshape(t.shape[0], hw[0], hw[1], t.shape[-1])


def clip_t5_weights(prompt: str, clip_tokenizer, t5_tokenizer, length: int = 77) -> torch.Tensor:
    """``W (length, n)``: row ``j`` spreads CLIP position ``j`` (``<sot>`` at 0, as the parse counts) evenly over the
    T5 pieces (0-based, in the order the T5 tokenizer gives them; ``n`` of them) whose characters overlap that CLIP
    piece's characters in ``prompt``; rows of ``<sot>``, ``<eot>``, padding and pieces with no T5 counterpart are 0.
    """
    clip = clip_tokenizer.tokenize(prompt)[:length - 2]
    t5 = t5_tokenizer.tokenize(prompt)
    w = torch.zeros(length, len(t5))
    t5_spans = piece_spans(prompt, t5)
    for i, s in enumerate(piece_spans(prompt, clip)):
        hits = [k for k, u in enumerate(t5_spans) if s is not None and u is not None and u[0] < s[1] and u[1] > s[0]]
        if hits:
            w[i + 1, hits] = 1.0 / len(hits)
    return w


def both_maps(clip: torch.Tensor, t5: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """SD3's ``both`` maps, on the CLIP positions: for a CLIP position ``j`` with T5 counterparts (``weights`` row
    ``j`` ≠ 0, :func:`clip_t5_weights`), the mean of its CLIP map and of the mean map of its T5 pieces; any other
    position keeps its CLIP map:

        B[..., j] = ½ (C[..., j] + Σ_k W[j, k] · T[..., k])   if Σ_k W[j, k] > 0,   else C[..., j]

    Shapes:
        clip: ``(heads, h, w, 77)``; t5: ``(heads, h, w, n_t5)`` (T5 piece k at index k); weights: ``(77, n)`` with
        ``n ≤ n_t5`` → ``(heads, h, w, 77)``.
    """
    w = weights.to(t5)
    has = (w.sum(-1) > 0).to(clip.dtype)
    mapped = t5[..., :w.shape[1]] @ w.T
    return clip * (1 - has) + 0.5 * (clip + mapped) * has


class _Site:
    """A processor around one site's original: the output is the original's; in the guidance phase, for a site a
    method needs, the image → text maps go to ``owner.live_maps``."""

    def __init__(self, owner: "LiveTextMaps", name: str, original: Any):
        self.owner, self.name, self.original = owner, name, original

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        out = self.original(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)
        owner = self.owner
        if owner.phase == "guidance" and self.name in owner.need_live and encoder_hidden_states is not None:
            rotary = kwargs.get("image_rotary_emb", args[0] if args else None)
            probs, first = site_scores_probs(processor_kind(owner.family, self.name, self.original), attn,
                                             hidden_states, encoder_hidden_states, attention_mask, rotary)
            owner.live_maps[self.name] = owner.maps_of(probs[0], first, encoder_hidden_states.shape[1])
        return out


class LiveTextMaps:
    """Live maps of SD3 / Flux / PixArt-Σ / Sana for guidance, with the recorder's interface and no storage.

    Use as a context manager around ``guided_sample(pipe, ..., recorder=maps)``; the original processors (the same
    objects) are put back on exit, also when the body raises. With a recorder, enter it first
    (``with attnlens.record(pipe, out) as rec, LiveTextMaps(pipe, store=rec) as maps``).

    Args:
        pipe: a ``StableDiffusion3Pipeline``, ``FluxPipeline``, ``PixArtSigmaPipeline`` or ``SanaPipeline``.
        text (`str`, *optional*): SD3: ``clip``, ``t5`` or ``both``; Flux, PixArt-Σ: ``t5``; Sana: ``gemma``;
            the family's default (:data:`attnlens.adapters.FAMILY_DEFAULTS`) if None.
        store (`Recorder`, *optional*): an entered recorder that stores the run.
    """

    def __init__(self, pipe, text: str | None = None, store: Any = None):
        self.store = store
        self.adapter = adapter_for(pipe)
        self.family = self.adapter.family
        if self.family not in SITES:
            raise ConfigError(f"LiveTextMaps serves the transformer families {sorted(SITES)}, not {self.family}",
                              hint="SD 1.x/2.x and SDXL: use attnlens.record(pipe, None)")
        self.text = check_guide_text(self.family, text) or FAMILY_DEFAULTS[self.family].text
        self.net = self.adapter.denoiser
        self.sites = text_sites(self.net, self.family)
        self._originals: dict[str, Any] = {}
        self.need_live: set[str] = set()
        self.live_maps: dict[str, torch.Tensor] = {}
        self.phase, self.step, self.iteration = "sample", -1, 0
        self.latent_hw: tuple[int, int] | None = None
        self._n_steps = 0
        self.columns: list[int] | None = None  # Sana: the key column of each map position (set_prompt)
        self.t5_weights: torch.Tensor | None = None  # SD3 "both": (77, T5 pieces) mean weights (set_prompt)

    def set_prompt(self, prompt: str) -> None:
        """What the layout needs from the prompt (Sana's columns, SD3's CLIP ↔ T5 alignment for ``both``); the
        sampler calls it before the first guidance forward."""
        if self.family == "sana":
            self.columns = self.adapter.text_columns(prompt)
        elif self.text == "both":
            self.t5_weights = clip_t5_weights(prompt, self.adapter.text_tokenizer, self.adapter.pipe.tokenizer_3)

    def maps_of(self, probs: torch.Tensor, first: int, n_text: int) -> torch.Tensor:
        """One sample's ``(heads, h, w, T)`` maps from its ``(heads, N, K)`` probabilities (module docstring)."""
        hw = self.grid()
        if self.family == "sana":
            if self.columns is None:
                raise ConfigError("Sana's live maps need the prompt (call set_prompt first)")
            return text_maps(probs, first, n_text, False, hw)[..., self.columns]
        if self.family != "sd3":
            return text_maps(probs, first, n_text, True, hw)
        clip = text_maps(probs, first, 77, False, hw) if self.text != "t5" else None
        t5 = text_maps(probs, first + 77, n_text - 77, True, hw) if self.text != "clip" else None
        if self.text != "both":
            return clip if t5 is None else t5
        if self.t5_weights is None:
            raise ConfigError("SD3's 'both' maps need the prompt (call set_prompt first)")
        return both_maps(clip, t5[..., 1:], self.t5_weights)

    def grid(self) -> tuple[int, int]:
        if self.latent_hw is None:
            raise ConfigError("map sizes are known once the latent size is (set latent_hw)")
        p = 2 if self.family == "flux" else self.net.config.patch_size
        return self.latent_hw[0] // p, self.latent_hw[1] // p

    def resolutions(self) -> dict[str, tuple[int, int]]:
        """``{site: (h, w)}``: every site has the patch grid's size."""
        g = self.grid()
        return {name: g for name in self.sites}

    def __enter__(self) -> "LiveTextMaps":
        if self._originals:
            raise ConfigError("these live maps are already active")
        try:
            for name, module in self.sites.items():
                self._originals[name] = module.processor
                module.set_processor(_Site(self, name, module.processor))
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        for name, original in self._originals.items():
            self.sites[name].set_processor(original)
        self._originals.clear()

    @property
    def n_steps(self) -> int:
        return self._n_steps

    @n_steps.setter
    def n_steps(self, n: int) -> None:
        self._n_steps = n
        if self.store is not None:
            self.store.n_steps = n

    @contextlib.contextmanager
    def context(self, step: int, timestep: float, phase: str = "sample", iteration: int = 0):
        prev = (self.step, self.phase, self.iteration)
        self.step, self.phase, self.iteration = step, phase, iteration
        if phase == "guidance":
            self.live_maps = {}
        try:
            if self.store is not None:
                with self.store.context(step, timestep, phase=phase, iteration=iteration):
                    yield self
            else:
                yield self
        finally:
            self.step, self.phase, self.iteration = prev

    # the recorder's storage calls, passed to the store (nothing is stored without one)
    def set_batch_layout(self, cfg: bool) -> None:
        if self.store is not None:
            self.store.set_batch_layout(cfg)

    def log_scalars(self, *args, **kwargs) -> None:
        if self.store is not None:
            self.store.log_scalars(*args, **kwargs)

    def record_latent(self, *args) -> None:
        if self.store is not None:
            self.store.record_latent(*args)

    def record_final_latent(self, *args) -> None:
        if self.store is not None:
            self.store.record_final_latent(*args)
