"""The text context a denoiser attends to: which encoder each key position came from, which positions are recorded,
and word → position alignment over one encoder or several. Pure (no torch, no tokenizer objects).

A UNet (SD 1.x/2.x/SDXL) attends to one CLIP sequence of 77 positions. The transformer families attend to a
sequence made of *segments*, one per text encoder:

* SD3 / SD3.5: ``clip`` (CLIP-L and CLIP-G, concatenated along channels: one position each) 77 positions, then
  ``t5`` (``max_sequence_length``, 256 by default);
* Flux: ``t5`` (512 by default; CLIP-L gives only the pooled vector);
* PixArt-Σ: ``t5`` (300); Sana: ``gemma`` (300).

The recorder stores a subset of the key positions (``positions``, key indices into the text sequence), each with
its word piece per sample and its encoder; the manifest's ``text`` entry (:func:`layout_dict`) keeps them.

Examples::

    >>> segs = [Segment("clip", 0, 6), Segment("t5", 6, 5)]
    >>> pieces = [["<|startoftext|>", "red</w>", "crown</w>", "<|endoftext|>", "<|endoftext|>", "<|endoftext|>",
    ...            "▁red", "▁c", "row", "n", "</s>"]]
    >>> select_positions(segs, [[4], [5]], "prompt")
    [0, 1, 2, 3, 6, 7, 8, 9, 10]
    >>> enc = [s.encoder for p in [0, 1, 2, 3, 6, 7, 8, 9, 10] for s in segs if s.start <= p < s.start + s.length]
    >>> stored = [pieces[0][p] for p in [0, 1, 2, 3, 6, 7, 8, 9, 10]]
    >>> word_positions_by_encoder("a red crown", stored, enc, (6, 11))
    {'clip': [2], 't5': [5, 6, 7]}
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

#: the encoders' names as stored
ENCODERS = ("clip", "t5", "gemma")
#: what ``use=`` accepts in alignment: one encoder, or ``both`` (every encoder of the run)
USES = ("both", *ENCODERS)


@dataclass(frozen=True)
class Segment:
    """One encoder's part of the text sequence: key positions ``[start, start + length)``."""

    encoder: str
    start: int
    length: int

    def to_dict(self) -> dict[str, Any]:
        return {"encoder": self.encoder, "start": self.start, "length": self.length}


def select_positions(segments: Sequence[Segment], prompt_lengths: Sequence[Sequence[int]], tokens: str) -> list[int]:
    """Key positions to record.

    Args:
        segments: the text sequence's segments, in order.
        prompt_lengths: per segment, per sample, how many leading positions of the segment hold the prompt
            (CLIP: ``<sot>`` … ``<eot>``; T5: pieces and ``</s>``; Gemma: ``<bos>`` and pieces, no padding).
        tokens: ``"prompt"`` (the prompt positions of the longest prompt of each segment) or ``"all"``.
    """
    out: list[int] = []
    for seg, lengths in zip(segments, prompt_lengths):
        n = seg.length if tokens == "all" else min(max(list(lengths) or [seg.length]), seg.length)
        out.extend(range(seg.start, seg.start + n))
    return out


def segment_of(segments: Sequence[Segment], position: int) -> Segment:
    for s in segments:
        if s.start <= position < s.start + s.length:
            return s
    raise ValueError(f"key position {position} is outside the text sequence")


def layout_dict(segments: Sequence[Segment], positions: Sequence[int]) -> dict[str, Any]:
    """The manifest's ``text`` entry: segments, the stored key positions and the encoder of each."""
    return {"segments": [s.to_dict() for s in segments], "positions": list(positions),
            "encoders": [segment_of(segments, p).encoder for p in positions]}


_BYTE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def piece_text(piece: str) -> str:
    """The text a stored word piece stands for, without tokenizer: CLIP's ``</w>`` and sentencepiece's ``▁`` marks
    removed, special tokens (``<|startoftext|>``, ``</s>``, ``<bos>``, ``<pad>``) empty, byte pieces (``<0xC3>``)
    empty (their characters are not located)."""
    if not piece or _BYTE.match(piece) or (piece.startswith("<") and piece.endswith(">")):
        return ""
    return piece.replace("</w>", "").replace("▁", " ").strip()


def piece_spans(text: str, pieces: Sequence[str]) -> list[tuple[int, int] | None]:
    """Character span ``[start, end)`` in ``text`` of each piece (searched case-insensitively from the end of the
    previous match, so the k-th "red" piece lands on the k-th "red"); ``None`` for pieces that stand for no text."""
    folded = "".join(c.lower() if len(c.lower()) == 1 else c for c in text)
    spans: list[tuple[int, int] | None] = []
    cursor = 0
    for piece in pieces:
        t = piece_text(piece).lower()
        start = folded.find(t, cursor) if t else -1
        if start < 0:
            spans.append(None)
        else:
            spans.append((start, start + len(t)))
            cursor = start + len(t)
    return spans


def word_positions_by_encoder(prompt: str, pieces: Sequence[str], encoders: Sequence[str],
                              span: tuple[int, int]) -> dict[str, list[int]]:
    """Indices into the stored token axis of the pieces, of each encoder, that overlap the characters ``span`` of
    ``prompt`` (a word's span). Each encoder's pieces are located in the prompt on their own."""
    out: dict[str, list[int]] = {}
    for enc in dict.fromkeys(encoders):
        idx = [i for i, e in enumerate(encoders) if e == enc]
        for i, s in zip(idx, piece_spans(prompt, [pieces[i] for i in idx])):
            if s is not None and s[0] < span[1] and s[1] > span[0]:
                out.setdefault(enc, []).append(i)
    return out


def unit_span(prompt: str, clip_pieces: Sequence[str], clip_positions: Sequence[int]) -> tuple[int, int] | None:
    """The character span of a parse unit given by its positions in CLIP's sequence (``clip_pieces`` with
    ``<sot>`` at 0, as ``attnlens.parse`` numbers them)."""
    spans = piece_spans(prompt, clip_pieces)
    found = [spans[p] for p in clip_positions if p < len(spans) and spans[p] is not None]
    if not found:
        return None
    return min(s[0] for s in found), max(s[1] for s in found)


def remap_positions(prompt: str, clip_pieces: Sequence[str], clip_positions: Sequence[int], pieces: Sequence[str],
                    encoders: Sequence[str], use: str = "both") -> dict[str, list[int]]:
    """A parse unit's stored positions per encoder (``{encoder: [index into the token axis]}``), restricted to
    ``use`` (an encoder name, or ``"both"`` for every encoder the run has)."""
    span = unit_span(prompt, clip_pieces, clip_positions)
    if span is None:
        return {}
    found = word_positions_by_encoder(prompt, pieces, encoders, span)
    return found if use == "both" else {k: v for k, v in found.items() if k == use}
