"""The benchmark protocol (attnlens.testbed.protocol): the fixed val/test split, the power calculation, the choice
of a calibrated factor, discordance on a pilot, and calibration files."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from attnlens.errors import AttnlensError, BadOption
from attnlens.testbed.bench import bench_variants, heldout_prompts
from attnlens.testbed.protocol import choose_factor, discordance, paired_units, read_calibration, split_of


def test_split_is_a_property_of_the_caption_not_of_how_many_are_taken():
    every = heldout_prompts(420)
    val, test = heldout_prompts(40, split="val"), heldout_prompts(40, split="test")
    assert not set(val) & set(test)
    assert val == [p for p in every if split_of(p) == "val"][:40]
    assert test == [p for p in every if split_of(p) == "test"][:40]
    assert heldout_prompts(10, split="val") == val[:10]  # taking fewer takes a prefix
    assert heldout_prompts(5, split="test", skip=8) == test[8:13]  # skipping leaves out a prefix
    share = sum(split_of(p) == "val" for p in every) / len(every)
    assert 0.18 < share < 0.32  # about one in four
    with pytest.raises(BadOption, match="unknown split"):
        heldout_prompts(3, split="train")
    with pytest.raises(AttnlensError, match="'val' split"):
        heldout_prompts(400, split="val")


def test_paired_units_matches_the_formula_by_hand():
    # delta 0.1, psi 0.25, alpha 0.05, power 0.8: (1.959964 * 0.5 + 0.841621 * sqrt(0.24))^2 / 0.01 = 193.8...
    by_hand = (1.959964 * 0.5 + 0.841621 * math.sqrt(0.25 - 0.01)) ** 2 / 0.01
    assert paired_units(0.1, 0.25) == math.ceil(by_hand) == 194
    assert paired_units(-0.1, 0.25) == 194  # the sign of the difference does not matter
    assert paired_units(0.1, 0.5) > paired_units(0.1, 0.25) > paired_units(0.1, 0.1)  # more disagreement, more units
    assert paired_units(0.2, 0.25) < paired_units(0.1, 0.25)
    assert paired_units(0.1, 0.25, power=0.9) > paired_units(0.1, 0.25)
    with pytest.raises(BadOption, match=r"\[\|δ\|, 1\]"):
        paired_units(0.3, 0.1)
    with pytest.raises(BadOption):
        paired_units(0.0, 0.25)


def test_discordance_counts_disagreeing_units():
    rows = []
    for (p, s), (a, b) in {("x", 0): (1, 1), ("x", 1): (0, 1), ("y", 0): (0, 0), ("y", 1): (1, 0),
                           ("z", 0): (0, 1)}.items():
        rows += [{"variant": "none", "prompt": p, "seed": s, "misbinding": a},
                 {"variant": "syngen", "prompt": p, "seed": s, "misbinding": b}]
    rows.append({"variant": "none", "prompt": "w", "seed": 0, "misbinding": 1})  # unpaired: left out
    d = discordance(pd.DataFrame(rows), "misbinding", "none", "syngen")
    assert d == {"n": 5.0, "discordant": 3 / 5, "b_only": 2 / 5, "a_only": 1 / 5, "delta": 3 / 5 - 2 / 5}
    with pytest.raises(AttnlensError, match="no \\(prompt, seed\\) unit"):
        discordance(pd.DataFrame(rows), "misbinding", "none", "attend-excite")


def test_choose_factor_objective_then_tiebreak_then_closest_to_one():
    rows = [{"factor": 0.25, "bound": 0.5, "success": 0.2}, {"factor": 4.0, "bound": 0.7, "success": 0.1},
            {"factor": 16.0, "bound": 0.7, "success": 0.3}, {"factor": 64.0, "bound": 0.7, "success": 0.3}]
    assert choose_factor(rows)["factor"] == 16.0
    assert choose_factor(rows, objective="success", tiebreak="bound")["factor"] == 16.0
    tie = [{"factor": 0.25, "bound": 0.5, "success": 0.0}, {"factor": 1.0, "bound": 0.5, "success": 0.0},
           {"factor": 4.0, "bound": 0.5, "success": 0.0}]
    assert choose_factor(tie)["factor"] == 1.0  # nothing beats the released value: keep it
    with pytest.raises(AttnlensError):
        choose_factor([])


def test_calibration_file_round_trip_and_errors(tmp_path):
    good = tmp_path / "calibration.json"
    good.write_text(json.dumps({"chosen": {"syngen": {"factor": 4, "param": "step_size"}}}))
    assert read_calibration(good) == {"syngen": 4.0}
    vs = bench_variants(["none", "syngen"], sweep=[0.25, 4.0], calibrated=read_calibration(good))
    calibrated = [v for v in vs if v.calibrated]
    assert [v.label for v in calibrated] == ["syngen step_size=80"] and calibrated[0].sweep  # one run serves both
    assert len({v.label for v in vs}) == len(vs) == 4
    for text, match in (("[1, 2]", "not a calibration file"), ('{"chosen": {"syngen": {"factor": -1}}}', "positive"),
                        ("{", "not a calibration file")):
        good.write_text(text)
        with pytest.raises(BadOption, match=match):
            read_calibration(good)
    with pytest.raises(BadOption, match="no calibration file"):
        read_calibration(tmp_path / "missing.json")
