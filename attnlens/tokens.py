"""Prompt checks against the tokenizer: empty prompts and prompts over the 75 word pieces CLIP can take."""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import BadOption

MAX_PIECES = 75  # 77 positions minus <sot> and <eot>


@dataclass(frozen=True)
class PromptInfo:
    """The prompt as the model will see it.

    Attributes:
        text: the prompt, unchanged (the pipeline's tokenizer truncates it itself).
        pieces: its word pieces without ``<sot>``/``<eot>``, at most 75.
        dropped: the words whose pieces fall beyond piece 75 (empty when the prompt fits).
        warnings: human-readable warnings to show and store in the manifest.
    """

    text: str
    pieces: tuple[str, ...]
    dropped: tuple[str, ...] = ()
    warnings: list[str] = field(default_factory=list)


def check_prompt(prompt: str, tokenizer) -> PromptInfo:
    """Validate ``prompt``: refuse an empty one; name the words dropped when it is over 75 word pieces."""
    if prompt is None or not prompt.strip():
        raise BadOption("empty prompt", hint='give a prompt, e.g. attnlens record "a red crown and a golden strawberry"')
    ids = tokenizer(prompt, add_special_tokens=False, truncation=False).input_ids
    pieces = tokenizer.convert_ids_to_tokens(ids)
    if len(pieces) <= MAX_PIECES:
        return PromptInfo(prompt, tuple(pieces))
    kept = pieces[:MAX_PIECES]
    # words are delimited by pieces ending in </w>; the first dropped word may be cut in the middle
    words, current = [], ""
    for piece in pieces[MAX_PIECES:]:
        current += piece.replace("</w>", "")
        if piece.endswith("</w>"):
            words.append(current)
            current = ""
    if current:
        words.append(current)
    warning = (f"prompt has {len(pieces)} word pieces; CLIP reads only the first {MAX_PIECES}, "
               f"so these words are dropped: {' '.join(words)}")
    return PromptInfo(prompt, tuple(kept), tuple(words), [warning])


def word_positions_in(pieces: list[str] | tuple[str, ...], word: str) -> list[int] | None:
    """Positions of ``word`` among ``pieces`` (its consecutive pieces, case-insensitive, CLIP's ``</w>`` and
    sentencepiece's ``▁`` ignored; the first occurrence), or None when it is not there."""
    target = word.lower().replace(" ", "")
    clean = [p.replace("</w>", "").replace("\u2581", "").lower() for p in pieces]
    for start in range(len(clean)):
        acc = ""
        for end in range(start, len(clean)):
            acc += clean[end]
            if acc == target:
                return list(range(start, end + 1))
            if not target.startswith(acc):
                break
    return None
