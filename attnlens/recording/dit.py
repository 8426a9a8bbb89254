"""Recording the transformer families: which attention modules are sites, and the processor that records them.

Sites (named by module path, as UNet sites are):

* SD3 / SD3.5 (``SD3Transformer2DModel``): ``transformer_blocks.<i>.attn``, the joint attention of each MM-DiT
  block (SD3.5's extra ``attn2`` is image self-attention and is not a site);
* Flux (``FluxTransformer2DModel``): ``transformer_blocks.<i>.attn`` (the 19 double-stream blocks) and
  ``single_transformer_blocks.<i>.attn`` (the 38 single-stream blocks);
* PixArt-Σ / Sana: ``transformer_blocks.<i>.attn2``, the cross-attention over the text encoder's sequence.

What is recorded is the image → text block: for each image query, its softmax probabilities over the text keys.
In joint attention the softmax runs over **all** keys (image and text) and the probabilities are then sliced to
the text columns, so a query's recorded row sums to the share of its attention that goes to text (below 1);
``attnlens.maps.renormalize_text`` divides by that share. In cross-attention the row sums to 1 over all text keys.

:class:`DiTRecordingProcessor` calls the original processor for the output (bit-identical by construction) and
computes the probabilities beside it from a second query/key projection of the recorded samples only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .recorder import Recorder

#: family → the attention modules that are sites: (name prefix or None for any, name suffix)
SITE_RULES = {
    "sd3": (("transformer_blocks.",), ".attn"),
    "flux": (("transformer_blocks.", "single_transformer_blocks."), ".attn"),
    "pixart": (("transformer_blocks.",), ".attn2"),
    "sana": (("transformer_blocks.",), ".attn2"),
}

#: how many attention scores (queries × keys) one chunk of heads may hold while probabilities are computed
SCORE_CHUNK = 1 << 26


def dit_sites(net, family: str) -> dict[str, Any]:
    """``{module path: attention module}`` of the sites of a transformer denoiser, in execution order."""
    prefixes, suffix = SITE_RULES[family]
    found = {}
    for name, m in net.named_modules():
        if name.startswith(prefixes) and name.endswith(suffix) and name.count(".") == 2 and hasattr(m, "processor"):
            found[name] = m
    order = {p: k for k, p in enumerate(prefixes)}
    return {n: found[n] for n in sorted(found, key=lambda n: (order[n.split(".")[0] + "."], int(n.split(".")[1])))}


def site_kind(family: str, name: str) -> str:
    """``joint`` (SD3, image first), ``double`` / ``single`` (Flux, text first), or ``cross`` (PixArt, Sana; the
    processor makes Sana's own processor ``sana``)."""
    if family == "sd3":
        return "joint"
    if family == "flux":
        return "single" if name.startswith("single_") else "double"
    return "cross"


def processor_kind(family: str, name: str, processor: Any) -> str:
    """How :func:`query_keys` computes the queries and keys of site ``name`` whose processor is ``processor``:
    :func:`site_kind`, with ``sana`` for Sana's own processor (found also under wrappers that keep ``.original``)."""
    return _kind(site_kind(family, name), processor)


def _kind(kind: str, processor: Any) -> str:
    while hasattr(processor, "original"):
        processor = processor.original
    return "sana" if kind == "cross" and type(processor).__name__.startswith("Sana") else kind


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(b, n, heads·d) → (b, heads, n, d)."""
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2)


def _rope(x: torch.Tensor, freqs, lo: int, hi: int | None) -> torch.Tensor:
    """Flux's rotary embedding on (b, n, heads, d) for the sequence positions ``[lo, hi)`` of ``freqs``."""
    from diffusers.models.embeddings import apply_rotary_emb

    if freqs is None:
        return x
    cos, sin = freqs
    return apply_rotary_emb(x, (cos[lo:hi], sin[lo:hi]), sequence_dim=1)


def query_keys(kind: str, attn, hidden_states, encoder_hidden_states, attention_mask, rotary, text_len: int):
    """The image queries ``(b, heads, N, d)``, every key ``(b, heads, K, d)``, the first text key and the additive
    mask ``(b·heads or 1, 1, K)`` (or None) of one attention call, computed as the family's processor computes them.
    """
    if kind == "joint":  # JointAttnProcessor2_0: [image; text], per-head RMS norms
        q = _heads(attn.to_q(hidden_states), attn.heads)
        k = _heads(attn.to_k(hidden_states), attn.heads)
        ek = _heads(attn.add_k_proj(encoder_hidden_states), attn.heads)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        if attn.norm_added_k is not None:
            ek = attn.norm_added_k(ek)
        return q, torch.cat([k, ek], dim=2), k.shape[2], None
    if kind in ("double", "single"):  # FluxAttnProcessor: [text; image], RMS norms, rotary embedding
        from diffusers.models.transformers.transformer_flux import _get_qkv_projections

        q, k, _, _, ek, _ = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        q = attn.norm_q(q.unflatten(-1, (-1, attn.head_dim)))
        k = attn.norm_k(k.unflatten(-1, (-1, attn.head_dim)))
        if kind == "double":
            ek = attn.norm_added_k(ek.unflatten(-1, (-1, attn.head_dim)))
            k = torch.cat([ek, k], dim=1)
            q = _rope(q, rotary, text_len, None)
        else:  # the joint sequence arrives whole: its first text_len positions are text
            q = _rope(q[:, text_len:], rotary, text_len, None)
        k = _rope(k, rotary, 0, None)
        return q.transpose(1, 2), k.transpose(1, 2), 0, None
    # cross-attention (PixArt: AttnProcessor(2_0); Sana: SanaAttnProcessor2_0, which norms before the head split)
    sana = kind == "sana"
    q, k = attn.to_q(hidden_states), attn.to_k(encoder_hidden_states)
    if sana and attn.norm_q is not None:
        q, k = attn.norm_q(q), attn.norm_k(k)
    q, k = _heads(q, attn.heads), _heads(k, attn.heads)
    if not sana and attn.norm_q is not None:
        q, k = attn.norm_q(q), attn.norm_k(k)
    mask = None
    if attention_mask is not None:
        mask = attn.prepare_attention_mask(attention_mask, k.shape[2], hidden_states.shape[0])
    return q, k, 0, mask


def text_probs(q: torch.Tensor, k: torch.Tensor, first_text: int, positions: torch.Tensor,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax over all keys of ``scale·q·kᵀ`` (+ mask), sliced to the text keys ``first_text + positions``.

    Shapes: q (b, heads, N, d), k (b, heads, K, d), mask (b·heads or 1, 1 or N, K) → (b·heads, N, len(positions)),
    float32 for half-precision inputs. Heads are taken in chunks so that the scores held stay under SCORE_CHUNK.
    """
    b, h, n, d = q.shape
    dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    qf = q.reshape(b * h, n, d).to(dtype)
    kf = k.reshape(b * h, k.shape[2], d).to(dtype)
    cols = positions.to(q.device) + first_text
    if mask is not None:
        mask = mask.to(dtype)
        if mask.shape[0] == b:  # one row per sample: repeat per head as the processors do
            mask = mask.repeat_interleave(h, dim=0)
    step = max(1, SCORE_CHUNK // max(n * k.shape[2], 1))
    out = []
    for i in range(0, b * h, step):
        if mask is not None:
            m = mask if mask.shape[0] == 1 else mask[i:i + step]
            scores = torch.baddbmm(m.expand(min(step, b * h - i), n, -1), qf[i:i + step], kf[i:i + step].transpose(1, 2),
                                   beta=1, alpha=d ** -0.5)
        else:
            scores = torch.bmm(qf[i:i + step], kf[i:i + step].transpose(1, 2)).mul_(d ** -0.5)
        out.append(scores.softmax(dim=-1).index_select(-1, cols))
    return torch.cat(out)


class DiTRecordingProcessor:
    """Records one transformer site. The output is the original processor's own (the same call, so results are
    bit-identical); the image → text probabilities of the recorded samples are computed beside it."""

    def __init__(self, recorder: "Recorder", name: str, original: Any, kind: str):
        self.recorder = recorder
        self.name = name
        self.original = original
        # SanaAttnProcessor2_0 applies the q/k norms before splitting heads, the others after
        self.kind = _kind(kind, original)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None,
                 *args, **kwargs):
        extra = (image_rotary_emb,) if self.kind in ("double", "single") else ()
        if self.kind not in ("double", "single") and image_rotary_emb is not None:
            kwargs["image_rotary_emb"] = image_rotary_emb
        out = self.original(attn, hidden_states, encoder_hidden_states, attention_mask, *extra, *args, **kwargs)
        rec = self.recorder
        if rec.wants(self.name):
            r0 = rec.first_recorded_sample(hidden_states.shape[0])
            ehs = encoder_hidden_states[r0:] if encoder_hidden_states is not None else None
            mask = attention_mask[r0:] if attention_mask is not None and attention_mask.shape[0] > 1 else attention_mask
            q, k, first, mask = query_keys(self.kind, attn, hidden_states[r0:], ehs, mask, image_rotary_emb,
                                           rec.text_len)
            probs = text_probs(q, k, first, rec.text_index(q.device), mask)
            rec.on_probs(self.name, probs, q.shape[1], first=r0)
        return out
