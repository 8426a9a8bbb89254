"""Tokens and pairs: which maps of a prompt are analysed (modifiers, nouns, bound/unbound/entity pairs), from its
parse."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import BadOption, NotFoundError
from ..parse import BindingSet, Parse, Unit, parse_prompt
from ..store import Run
from ..textctx import USES, remap_positions
from .runs import _sample_info


@dataclass(frozen=True)
class TokenUnit:
    """A parse word whose maps are analysed: ``label``, ``role`` (modifier | noun), token ``positions``, and
    optionally a ``weight`` per position (default: the mean over the positions)."""

    label: str
    role: str
    positions: tuple[int, ...]
    weights: tuple[float, ...] | None = None


@dataclass(frozen=True)
class TokenPair:
    """Two units compared by the overlap metrics: ``label`` "a|b", ``role`` (bound | unbound | entities)."""

    label: str
    role: str
    a: int
    b: int


@dataclass(frozen=True)
class Selection:
    """Which maps of a prompt are analysed (built by :func:`select_tokens`).

    ``entities``: unit indices of the nouns (their Otsu regions are the entity regions of the leakage metrics);
    ``modifiers``: ``(unit index, index into entities of its own noun)``; ``prompt_length``: T word pieces.
    """

    units: tuple[TokenUnit, ...]
    pairs: tuple[TokenPair, ...]
    entities: tuple[int, ...]
    modifiers: tuple[tuple[int, int], ...]
    prompt_length: int

    def unit(self, label: str) -> int:
        for i, u in enumerate(self.units):
            if u.label == label or u.label.split("@")[0] == label:
                return i
        raise NotFoundError(f"'{label}' is not an analysed word of the prompt",
                            hint=f"words: {', '.join(u.label for u in self.units) or '(none)'}")


def select_tokens(parse: Any) -> Selection:
    """Units and pairs of a prompt from its parse (a ``Parse`` or ``Parse.to_dict()``).

    Units: every modifier of every SynGen set (role ``modifier``) and every noun (the sets' nouns, then the
    parse's NOUN/PROPN words; role ``noun``), each once (identified by its positions), in prompt order. A word
    that is a modifier in some set is a modifier. Labels are the words; a word that occurs twice gets ``@<first
    position>`` ("red@2", "red@6"). Pairs: ``bound`` (modifier, its noun), ``unbound`` (modifier, every other
    noun), ``entities`` (every two nouns, in prompt order).
    """

    p = Parse.from_dict(parse) if isinstance(parse, dict) else parse
    words: dict[tuple[int, ...], str] = {}
    modifier_of: dict[tuple[int, ...], tuple[int, ...]] = {}
    nouns: list[tuple[int, ...]] = []
    for s in p.sets:
        n = tuple(s.noun.positions)
        words.setdefault(n, s.noun.word)
        if n not in nouns:
            nouns.append(n)
        for m in s.modifiers:
            mp = tuple(m.positions)
            words.setdefault(mp, m.word)
            modifier_of.setdefault(mp, n)
    for u in p.nouns:
        up = tuple(u.positions)
        words.setdefault(up, u.word)
        if up not in nouns:
            nouns.append(up)
    nouns = [n for n in nouns if n not in modifier_of and n]
    keys = sorted((k for k in words if k and (k in modifier_of or k in nouns)), key=lambda k: k[0])
    count: dict[str, int] = {}
    for k in keys:
        count[words[k].lower()] = count.get(words[k].lower(), 0) + 1
    label = {k: words[k] if count[words[k].lower()] == 1 else f"{words[k]}@{k[0]}" for k in keys}
    units = tuple(TokenUnit(label[k], "modifier" if k in modifier_of else "noun", k) for k in keys)
    index = {u.positions: i for i, u in enumerate(units)}
    entities = tuple(index[n] for n in sorted(nouns, key=lambda k: k[0]))
    ent_pos = {units[e].positions: j for j, e in enumerate(entities)}
    pairs: list[TokenPair] = []
    modifiers: list[tuple[int, int]] = []
    for k in keys:
        if k not in modifier_of:
            continue
        i, own = index[k], modifier_of[k]
        modifiers.append((i, ent_pos[own]))
        pairs.append(TokenPair(f"{units[i].label}|{units[index[own]].label}", "bound", i, index[own]))
        for e in entities:
            if units[e].positions != own:
                pairs.append(TokenPair(f"{units[i].label}|{units[e].label}", "unbound", i, e))
    for x in range(len(entities)):
        for y in range(x + 1, len(entities)):
            a, b = entities[x], entities[y]
            pairs.append(TokenPair(f"{units[a].label}|{units[b].label}", "entities", a, b))
    return Selection(units, tuple(pairs), entities, tuple(modifiers), p.prompt_length)


_PARSE_CACHE: dict[str, Any] = {}


def run_parse(run: Run, sample: int = 0, known: dict[str, Any] | None = None) -> Any:
    """The parse of a run's sample: the manifest's (for the run's own prompt), else a parse of the same prompt
    from ``known`` (``{prompt: parse dict}``, e.g. another analysed run's manifest — so a ``none`` run gets the
    very parse its guided counterpart used), else ``parse_prompt(prompt)`` (spaCy; cached per process)."""

    m = run.manifest
    prompt = _sample_info(run, sample)[0]
    if m.get("parse") and (sample == 0 or prompt == m.get("prompt")):
        return Parse.from_dict(m["parse"])
    if known and prompt in known:
        return Parse.from_dict(known[prompt])
    if prompt not in _PARSE_CACHE:
        _PARSE_CACHE[prompt] = parse_prompt(prompt)
    return _PARSE_CACHE[prompt]


@functools.lru_cache(maxsize=64)
def _unit_weights(sel: Selection, k: int) -> torch.Tensor:
    w = torch.zeros(len(sel.units), k, dtype=torch.float64)
    for i, u in enumerate(sel.units):
        if u.weights is not None:
            for p, x in zip(u.positions, u.weights):
                if p < k:
                    w[i, p] += x
            continue
        pos = [p for p in u.positions if p < k]
        if pos:
            w[i, pos] = 1.0 / len(pos)
    return w


def unit_maps(maps: torch.Tensor, sel: Selection) -> torch.Tensor:
    """``(S, token, h, w)`` recorded maps → ``(S, unit, h, w)``: the mean over each unit's word pieces."""
    k = maps.shape[-3]
    if all(len(u.positions) == 1 and u.positions[0] < k and u.weights is None for u in sel.units):
        return maps[:, [u.positions[0] for u in sel.units]]
    w = _unit_weights(sel, k).to(maps.dtype)
    s, _, h, ww = maps.shape
    return (w @ maps.reshape(s, k, h * ww)).reshape(s, len(sel.units), h, ww)


def remap_selection(sel: Selection, parse: Any, prompt: str, pieces: list[str], encoders: list[str],
                    use: str = "both") -> Selection:
    """A parse's selection (positions in CLIP's sequence) moved onto a transformer run's token axis.

    Each unit's characters in the prompt are located among the stored pieces of each encoder (``use``: one
    encoder, ``clip`` / ``t5`` / ``gemma``, or ``both``); with several encoders the unit's map is the mean of the
    encoders' maps, each the mean over its own pieces (as gsn-factory averages its CLIP and T5 maps). A unit whose
    word has no stored piece keeps no position (its metrics are NaN).
    """
    if use not in USES:
        raise BadOption(f"unknown text encoder '{use}'", hint=f"choose one of: {', '.join(USES)}")
    if use != "both" and use not in encoders:
        raise BadOption(f"this run has no '{use}' positions", hint=f"its encoders: {', '.join(dict.fromkeys(encoders))}")
    p = Parse.from_dict(parse) if isinstance(parse, dict) else parse
    units = []
    for u in sel.units:
        found = remap_positions(prompt, list(p.pieces), u.positions, pieces, encoders, use)
        pos, weights = [], []
        for enc_pos in found.values():
            for q in enc_pos:
                pos.append(q)
                weights.append(1.0 / (len(enc_pos) * len(found)))
        units.append(TokenUnit(u.label, u.role, tuple(pos), tuple(weights)))
    return Selection(tuple(units), sel.pairs, sel.entities, sel.modifiers, max(len(pieces) - 1, 0))


def run_selection(run: Run, sample: int = 0, known: dict[str, Any] | None = None, text: str = "both") -> Selection:
    """The analysed tokens of a run's sample: :func:`select_tokens` of its parse, on the run's own token axis
    (transformer runs: through :func:`remap_selection` with ``text`` = ``both`` or one encoder)."""
    parse = run_parse(run, sample, known)
    sel = select_tokens(parse)
    layout = run.manifest.get("text") or {}
    if not layout.get("encoders"):
        return sel
    prompt = _sample_info(run, sample)[0]
    return remap_selection(sel, parse, prompt, run.tokens[sample], list(layout["encoders"]), text)


def remap_parse(parse: Any, pieces: list[str], encoders: list[str], use: str = "both") -> Parse:
    """A parse whose units' positions are a transformer run's stored positions (every piece of the ``use``
    encoders that covers the word; a word's map is then the plain mean over them) and whose pieces are the run's:
    for displays that take a parse (the dashboard, the notebook)."""
    p = Parse.from_dict(parse) if isinstance(parse, dict) else parse

    def unit(u: Unit) -> Unit:
        found = remap_positions(p.prompt, list(p.pieces), u.positions, pieces, encoders, use)
        return Unit(u.word, tuple(sorted(q for qs in found.values() for q in qs)))

    sets = tuple(BindingSet(tuple(unit(m) for m in s.modifiers), unit(s.noun), s.rule) for s in p.sets)
    return dataclasses.replace(p, pieces=tuple(pieces), sets=sets, nouns=tuple(unit(u) for u in p.nouns))


def run_display_parse(run: Run, sample: int = 0, known: dict[str, Any] | None = None, text: str = "both") -> Parse:
    """:func:`run_parse`, on the run's own token axis for transformer runs (:func:`remap_parse`)."""
    parse = run_parse(run, sample, known)
    layout = run.manifest.get("text") or {}
    if not layout.get("encoders"):
        return parse
    return remap_parse(parse, run.tokens[sample], list(layout["encoders"]), text)
