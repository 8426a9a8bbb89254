"""``structured``: Structured Diffusion Guidance (Feng et al., ICLR 2023) — no loss: the cross-attention *values* of
the conditional branch are the average over per-noun-phrase encodings, an attention-processor hook.

Follows weixi-feng/Structured-Diffusion-Guidance (``structured_stable_diffusion/modules/attention.py``,
``CrossAttention.multi_qkv``, and ``scripts/txt2img_demo.py``'s default, non-conjunction path). Read, not copied.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch

from ..attn_layer import layer_input, layer_output
from ..errors import ConfigError
from ..parse import NOUN_POS, piece_spans
from .base import GuidanceMethod
from .registry import register_method

# ----------------------------------------------------------------------------------------------------------------
# Noun phrases
# ----------------------------------------------------------------------------------------------------------------


def _word_positions(parse: Any, tokenizer: Any) -> list[tuple[int, ...]]:
    """Token positions (1..T) of each word of ``parse.tree``, located in the prompt in order."""
    prompt = parse.prompt
    spans = piece_spans(prompt, parse.pieces[1 : parse.prompt_length + 1], tokenizer)
    out, cursor = [], 0
    for t in parse.tree:
        start = prompt.find(t["text"], cursor)
        if start < 0:
            out.append(())
            continue
        end = cursor = start + len(t["text"])
        out.append(tuple(k + 1 for k, s in enumerate(spans) if s is not None and s[0] < end and s[1] > start))
    return out


def noun_phrase_spans(parse: Any, tokenizer: Any) -> list[tuple[int, int]]:
    """Token spans ``(first, last)`` (positions 1..T, inclusive) of the prompt's noun phrases of two words or more.

    From spaCy's dependency parse (``parse.tree``), a noun phrase is a noun (not a ``compound`` part of another
    noun) with every word of its subtree to its left — "a red apple and a green bird" → "a red apple", "a green
    bird"; the released code takes every NP node of a Stanza constituency tree instead (a constituency-style split
    of the same lowest phrases; larger NPs that contain other NPs are not produced here). With ``--bind``
    (``parse.source == "manual"``) each bound set is a phrase, from its first to its last word. A phrase covering the
    whole prompt is dropped (the prompt itself is always the first value encoding). Sorted, without repeats.
    """
    t_len = parse.prompt_length
    spans: set[tuple[int, int]] = set()
    if parse.source == "manual" or not parse.tree:
        for s in parse.sets:
            pos = [p for u in (*s.modifiers, s.noun) for p in u.positions]
            if pos:
                spans.add((min(pos), max(pos)))
    else:
        tree = parse.tree
        heads = [int(t["head"]) for t in tree]
        positions = _word_positions(parse, tokenizer)

        def ancestors(j: int) -> Iterator[int]:
            seen = set()
            while j not in seen:
                seen.add(j)
                yield j
                j = heads[j]

        for n, t in enumerate(tree):
            if t["pos"] not in NOUN_POS or t["dep"] == "compound":
                continue
            left = min(j for j in range(n + 1) if n in ancestors(j))
            words = [positions[j] for j in range(left, n + 1) if positions[j]]
            if len(words) > 1:
                spans.add((min(p for w in words for p in w), max(p for w in words for p in w)))
    return sorted(s for s in spans if s != (1, t_len))


def phrase_text(parse: Any, tokenizer: Any, span: tuple[int, int]) -> str:
    """The prompt's text under the word pieces ``span`` (inclusive): from the first piece's first character to the
    last piece's last."""
    spans = piece_spans(parse.prompt, parse.pieces[1 : parse.prompt_length + 1], tokenizer)
    first, last = spans[span[0] - 1], spans[span[1] - 1]
    if first is None or last is None:
        return tokenizer.convert_tokens_to_string(list(parse.pieces[span[0] : span[1] + 1])).replace("</w>", " ").strip()
    return parse.prompt[first[0] : last[1]]


def structured_values(cond: torch.Tensor, phrases: Sequence[torch.Tensor], spans: Sequence[tuple[int, int]]
                      ) -> torch.Tensor:
    r"""The value encodings of Structured Diffusion: the prompt's encoding, then one copy per noun phrase whose
    positions ``first..last`` hold the phrase's own encoding (its positions 1..last−first+1, after ``<sot>``).

        V_0 = E(prompt),   V_k[j] = E(phrase_k)[j − first_k + 1] for first_k ≤ j ≤ last_k, else E(prompt)[j]

    Shapes:
        cond: ``(77, D)``; phrases: ``[(77, D)] × K`` → ``(K + 1, 77, D)``.
    """
    out = [cond]
    for enc, (first, last) in zip(phrases, spans):
        v = cond.clone()
        n = last - first + 1
        v[first : last + 1] = enc[1 : 1 + n]
        out.append(v)
    return torch.stack(out)


def structured_attention(probs: torch.Tensor, values: Sequence[torch.Tensor]) -> torch.Tensor:
    r"""The conditional branch's attention output with several value sequences and one key sequence:

        O = (1/K) Σ_k P V_k      (P: softmax probabilities over the keys of the full prompt)

    summed in order then divided, as the released ``multi_qkv`` (one key, K values). A single value sequence gives
    the ordinary P V.

    Shapes:
        probs: ``(B·heads, queries, 77)``; values: ``[(B·heads, 77, d)] × K`` → ``(B·heads, queries, d)``.
    """
    return sum(torch.bmm(probs, v) for v in values) / len(values)


# ----------------------------------------------------------------------------------------------------------------
# The processor hook
# ----------------------------------------------------------------------------------------------------------------


class StructuredProcessor:
    """A cross-attention processor: rows of the batch whose text embedding is the prompt's (``cond``) get the
    structured values (``structured_attention``); every other row (the unconditional CFG half) runs the processor
    it wraps. The keys, hence the attention probabilities, are the layer's own — a recorder wrapping this
    processor records the real maps."""

    def __init__(self, original: Any, cond: torch.Tensor, values: torch.Tensor):
        self.original = original
        self.cond = cond
        self.values = values

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        ehs = encoder_hidden_states
        rows = [] if ehs is None or ehs.shape[-2:] != self.cond.shape else \
            [r for r in range(ehs.shape[0]) if torch.equal(ehs[r], self.cond)]
        if not rows or attention_mask is not None:
            return self.original(attn, hidden_states, ehs, attention_mask, temb, *args, **kwargs)
        others = [r for r in range(ehs.shape[0]) if r not in rows]
        mine = self._structured(attn, hidden_states[rows], ehs[rows], temb)
        if not others:
            return mine
        rest = self.original(attn, hidden_states[others], ehs[others], None, temb, *args, **kwargs)
        out = torch.empty((ehs.shape[0], *mine.shape[1:]), dtype=mine.dtype, device=mine.device)
        out[others], out[rows] = rest, mine
        return out

    def _structured(self, attn, hidden_states, ehs, temb):
        hidden_states, state = layer_input(attn, hidden_states, temb)
        values = self.values.to(ehs.dtype).unsqueeze(1).expand(-1, ehs.shape[0], -1, -1)  # (K, b, 77, D)
        if attn.norm_cross:
            ehs = attn.norm_encoder_hidden_states(ehs)
            values = torch.stack([attn.norm_encoder_hidden_states(v) for v in values])
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(ehs))
        probs = attn.get_attention_scores(query, key, None)
        out = structured_attention(probs, [attn.head_to_batch_dim(attn.to_v(v)) for v in values])
        return layer_output(attn, attn.batch_to_head_dim(out), state)


@register_method("structured")
class Structured(GuidanceMethod):
    r"""Structured Diffusion Guidance (Feng et al., *Training-Free Structured Diffusion Guidance for Compositional
    Text-to-Image Synthesis*, ICLR 2023, https://arxiv.org/abs/2212.05032; code:
    https://github.com/weixi-feng/Structured-Diffusion-Guidance).

    No loss and no latent update: in every cross-attention layer, the conditional branch attends with the prompt's
    keys and averages the outputs over the value encodings ``structured_values`` — the prompt's, and one per noun
    phrase (``noun_phrase_spans``) whose positions carry the phrase encoded alone. The unconditional branch is
    unchanged. Installed by ``attention_hook`` for one sample, under any recorder.
    """

    needs_maps = False
    unet_only = "it replaces the values of the UNet's attn2 cross-attention (a transformer has no such layers)"

    @dataclass(frozen=True)
    class Config:
        pass

    def __init__(self, config: Any = None, **overrides: Any):
        super().__init__(config, **overrides)
        self._active = False  # inside attention_hook

    def initial_noise(self, search: Any) -> None:
        """Nothing to change in the noise; refuses a sampler run without the hook (it would be plain sampling)."""
        if not self._active:
            raise ConfigError("Structured Diffusion acts through its attention processors, which are not installed",
                              hint="use attnlens.sample, or enter method.attention_hook(pipe, prompt, parse) before "
                                   "attnlens.record")
        return None

    def idle_reason(self, parse: Any) -> str | None:
        if parse is not None and not noun_phrase_spans(parse, _PieceTokenizer(parse)):
            return "the prompt has no noun phrase of two words or more to encode on its own"
        return None

    @contextlib.contextmanager
    def attention_hook(self, pipe: Any, prompt: str, parse: Any):
        """Install ``StructuredProcessor`` on every ``attn2`` module of ``pipe.unet`` (restored on exit, also on
        error); the phrase encodings come from ``pipe.encode_prompt``."""
        modules = {n: m for n, m in pipe.unet.named_modules() if n.endswith("attn2") and hasattr(m, "set_processor")}
        if any(isinstance(m.processor, StructuredProcessor) for m in modules.values()):
            raise ConfigError("Structured Diffusion's processors are already installed on this pipeline")
        device = pipe.unet.device
        with torch.no_grad():
            cond = pipe.encode_prompt(prompt, device, 1, False)[0][0]
            spans = noun_phrase_spans(parse, pipe.tokenizer)
            phrases = [pipe.encode_prompt(phrase_text(parse, pipe.tokenizer, s), device, 1, False)[0][0]
                       for s in spans]
        values = structured_values(cond, phrases, spans)
        originals = {n: m.processor for n, m in modules.items()}
        try:
            for n, m in modules.items():
                m.set_processor(StructuredProcessor(originals[n], cond, values))
            self._active = True
            yield self
        finally:
            self._active = False
            for n, m in modules.items():
                m.set_processor(originals[n])


class _PieceTokenizer:
    """Stand-in tokenizer for ``noun_phrase_spans`` without a pipeline: a piece's text is the piece without its
    ``</w>`` end-of-word mark (exact for CLIP's ASCII pieces)."""

    def __init__(self, parse: Any):
        self.parse = parse

    @staticmethod
    def convert_tokens_to_string(pieces: Sequence[str]) -> str:
        return "".join(p.replace("</w>", " ") for p in pieces).strip()
