"""Intervention specs (attnlens.interventions.spec): the text grammar, JSON/TOML files, labels, and refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from attnlens.errors import BadOption
from attnlens.interventions import Intervention, as_interventions, label_of, parse_intervention, read_spec_file


@pytest.mark.parametrize("text, expected", [
    ("swap red blue steps=0:10 layers=res16", dict(op="swap", tokens=("red", "blue"), steps="0:10", layers=("res16",))),
    ("scale red 2.5", dict(op="scale", tokens=("red",), factor=2.5)),
    ("scale red blue factor=0", dict(op="scale", tokens=("red", "blue"), factor=0.0)),
    ("ablate 5 phases=guidance", dict(op="ablate", tokens=(5,), phases=("guidance",))),
    ("copy circle red layers=16,up_blocks.*", dict(op="copy", tokens=("circle", "red"), layers=(16, "up_blocks.*"))),
    ("mask red circle box=0,0.5,1,1", dict(op="mask", tokens=("red", "circle"), box=(0.0, 0.5, 1.0, 1.0))),
    ("patch 'runs/my run'", dict(op="patch", source="runs/my run")),
])
def test_parse(text, expected):
    it = parse_intervention(text)
    for key, value in expected.items():
        assert getattr(it, key) == value, key
    assert Intervention.from_dict(json.loads(json.dumps(it.to_dict()))) == it  # the manifest's JSON round-trips


@pytest.mark.parametrize("text, message", [
    ("", "empty"), ("explode red", "unknown intervention"), ("swap red", "takes 2"), ("swap red red", "two different"),
    ("scale red", "needs a factor"), ("scale red -1", "≥ 0"), ("ablate red factor=2", "unknown key"),
    ("mask red", "exactly one region"), ("mask red box=0,0,1", "4 numbers"), ("mask red box=1,0,0,1", "r0 < r1"),
    ("ablate red steps=a:b", "step selection"), ("ablate red phases=uncond", "unknown phase"),
    ("patch", "one run folder"), ("copy a b c", "takes 2"), ("ablate red steps=1 steps=2", "twice"),
    ("swap 'red blue", "cannot read"),
])
def test_bad_text_is_refused_with_what_is_wrong(text, message):
    with pytest.raises(BadOption, match=message):
        parse_intervention(text)


def test_labels():
    items = as_interventions(["swap red blue steps=0:10 layers=res16", "scale blue 2 phases=sample",
                              {"op": "mask", "tokens": ["red"], "box": [0, 0, 32, 32]}])
    assert label_of(items) == "swap(red,blue; steps 0:10; res16) + scale(blue,×2; sample) + mask(red,box 0,0,32,32)"
    region = Intervention("mask", ("red",), region=np.ones((4, 4)))
    assert region.to_dict()["region"]["shape"] == [4, 4]
    assert label_of([region.to_dict()]) == "mask(red,region 4×4)"  # read back from a manifest


def test_spec_files(tmp_path):
    toml = tmp_path / "s.toml"
    toml.write_text('[[intervention]]\nop = "swap"\ntokens = ["red", "blue"]\nsteps = "0:5"\n\n'
                    '[[intervention]]\nop = "scale"\ntokens = ["red"]\nfactor = 2\n')
    js = tmp_path / "s.json"
    js.write_text(json.dumps(["swap red blue steps=0:5", {"op": "scale", "tokens": "red", "factor": 2}]))
    assert read_spec_file(toml) == read_spec_file(js) == as_interventions(["swap red blue steps=0:5", "scale red 2"])
    bad = tmp_path / "bad.json"
    bad.write_text('{"nothing": 1}')
    with pytest.raises(BadOption, match="no list"):
        read_spec_file(bad)
    bad.write_text('[{"op": "swap", "tokens": ["a", "b"], "colour": 1}]')
    with pytest.raises(BadOption, match="unknown key"):
        read_spec_file(bad)
