"""The transformer families' text sequence (issue 15): position selection per encoder, word alignment over CLIP,
T5 or both, renormalisation over the text — by hand."""

import pytest
import torch

from attnlens.analysis.tokens import Selection, TokenUnit, remap_selection, unit_maps
from attnlens.errors import BadOption
from attnlens.maps import renormalize_text
from attnlens.parse import Parse
from attnlens.textctx import Segment, layout_dict, piece_text, remap_positions, select_positions

CLIP = ["<|startoftext|>", "a</w>", "red</w>", "crown</w>", "<|endoftext|>"]
STORED = ["<|startoftext|>", "a</w>", "red</w>", "crown</w>", "<|endoftext|>", "▁a", "▁red", "▁c", "row", "n", "</s>"]
ENC = ["clip"] * 5 + ["t5"] * 6


def test_select_positions_per_segment():
    segs = [Segment("clip", 0, 77), Segment("t5", 77, 256)]
    assert select_positions(segs, [[5, 3], [7, 9]], "prompt") == [*range(0, 5), *range(77, 86)]
    assert len(select_positions(segs, [[5], [7]], "all")) == 333
    d = layout_dict(segs, [0, 1, 77])
    assert d["encoders"] == ["clip", "clip", "t5"] and d["segments"][1] == {"encoder": "t5", "start": 77, "length": 256}


def test_piece_text():
    assert [piece_text(p) for p in ["red</w>", "▁red", "row", "</s>", "<0xC3>", "<bos>"]] == ["red", "red", "row", "", "", ""]


@pytest.mark.parametrize("use, expected", [("clip", {"clip": [3]}), ("t5", {"t5": [7, 8, 9]}),
                                           ("both", {"clip": [3], "t5": [7, 8, 9]})])
def test_remap_positions(use, expected):
    assert remap_positions("a red crown", CLIP, (3,), STORED, ENC, use) == expected


def test_remap_selection_weights_average_the_encoders():
    parse = Parse(prompt="a red crown", pieces=tuple(CLIP), sets=(), nouns=(), source="manual", tree=())
    sel = Selection((TokenUnit("red", "modifier", (2,)), TokenUnit("crown", "noun", (3,))), (), (1,), ((0, 0),), 3)
    both = remap_selection(sel, parse, "a red crown", STORED, ENC, "both")
    assert both.units[1].positions == (3, 7, 8, 9)
    assert both.units[1].weights == pytest.approx((0.5, 1 / 6, 1 / 6, 1 / 6))
    maps = torch.zeros(1, len(STORED), 2, 2)
    maps[0, 3] = 1.0   # CLIP's crown
    maps[0, 7:10] = 4.0  # T5's three pieces
    crown = unit_maps(maps, both)[0, 1]
    assert torch.allclose(crown, torch.full((2, 2), 0.5 * 1.0 + 0.5 * 4.0, dtype=crown.dtype))
    assert remap_selection(sel, parse, "a red crown", STORED, ENC, "t5").units[0].positions == (6,)
    with pytest.raises(BadOption):
        remap_selection(sel, parse, "a red crown", STORED, ["t5"] * 11, "clip")


def test_renormalize_text():
    x = torch.tensor([[[0.1, 0.0]], [[0.3, 0.0]]])  # (token, h, w) = (2, 1, 2); the second pixel has no text mass
    y = renormalize_text(x)
    assert torch.allclose(y[:, 0, 0], torch.tensor([0.25, 0.75])) and (y[:, 0, 1] == 0).all()
