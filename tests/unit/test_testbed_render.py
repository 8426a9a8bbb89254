"""Shapes-testbed renderer: determinism, ground truth, captions, the held-out split."""

from __future__ import annotations

import json

import numpy as np
import pytest

from attnlens.testbed.evaluate import parse_caption
from attnlens.testbed.render import (
    BACKGROUND,
    COLOURS,
    GAP,
    MARGIN,
    SHAPES,
    TEMPLATES,
    ObjectSpec,
    RenderedObject,
    Scene,
    alpha_mask,
    caption_for,
    held_out_pairs,
    is_held_out,
    render,
    render_batch,
    scene_at,
    swap_colours,
    train_pairs,
    write_dataset,
)


def test_same_seed_same_scene_and_pixels():
    for i in range(20):
        a, b = scene_at(7, i, "train"), scene_at(7, i, "train")
        assert a == b
        assert np.array_equal(render(a), render(b))
    imgs1, caps1 = render_batch(3, range(8))
    imgs2, caps2 = render_batch(3, range(8))
    assert np.array_equal(imgs1, imgs2) and caps1 == caps2


def test_different_seeds_indices_and_splits_differ():
    caps = {scene_at(s, i, sp).caption for s in range(3) for i in range(10) for sp in ("train", "test")}
    assert len(caps) > 50
    assert not np.array_equal(render(scene_at(0, 0)), render(scene_at(1, 0)))


def test_image_format_and_background():
    img = render(scene_at(0, 1))
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert tuple(img[0, 0]) == BACKGROUND  # margins are background


@pytest.mark.parametrize("index", range(40))
def test_ground_truth_matches_pixels(index):
    scene = scene_at(11, index, "any")
    img = render(scene)
    boxes = [o.bbox for o in scene.objects]
    for k, o in enumerate(scene.objects):
        r0, c0, r1, c1 = o.bbox
        assert r1 - r0 == c1 - c0 == o.size
        assert MARGIN <= r0 and MARGIN <= c0 and r1 <= 64 - MARGIN and c1 <= 64 - MARGIN
        a = alpha_mask(o)
        assert a[r0:r1, c0:c1].sum() == pytest.approx(a.sum())  # drawn inside its box
        full = a >= 1.0
        assert full.sum() > 0.3 * o.size**2
        assert (img[full] == COLOURS[o.colour]).all()  # fully covered pixels have exactly the object's colour
        for q in boxes[k + 1 :]:  # boxes at least GAP apart
            sep_r = max(q[0] - r1, r0 - q[2])
            sep_c = max(q[1] - c1, c0 - q[3])
            assert max(sep_r, sep_c) >= GAP
    # outside all boxes: background
    outside = np.ones((64, 64), bool)
    for r0, c0, r1, c1 in boxes:
        outside[r0:r1, c0:c1] = False
    assert (img[outside] == BACKGROUND).all()


def test_sizes_follow_size_words():
    for i in range(300):
        for o in scene_at(5, i).objects:
            if o.size_word == "small":
                assert 8 <= o.size <= 14
            elif o.size_word == "big":
                assert 14 <= o.size <= 26


def test_captions_templates_and_round_trip():
    seen = set()
    for i in range(300):
        s = scene_at(2, i, "any")
        seen.add(s.template)
        assert s.caption == caption_for([o.spec for o in s.objects], s.template)
        assert parse_caption(s.caption) == [o.spec for o in s.objects]
        assert len({o.colour for o in s.objects}) == len(s.objects)  # distinct colours
    assert seen == set(TEMPLATES)
    assert caption_for([ObjectSpec("red", "circle"), ObjectSpec("blue", "square")], "and") == \
        "a red circle and a blue square"
    assert caption_for([ObjectSpec("green", "triangle", "small"), ObjectSpec("yellow", "cross", "big")], "and") == \
        "a small green triangle and a big yellow cross"
    assert caption_for([ObjectSpec("red", "circle"), ObjectSpec("blue", "square")], "next_to") == \
        "a red circle next to a blue square"
    with pytest.raises(ValueError):
        caption_for([ObjectSpec("red", "circle")], "and")


def test_next_to_objects_side_by_side():
    for i in range(200):
        s = scene_at(4, i, "any", template="next_to")
        (a0, _, a1, _), (b0, _, b1, _) = (o.bbox for o in s.objects)
        assert abs((a0 + a1) / 2 - (b0 + b1) / 2) <= 5


def test_held_out_split():
    held = held_out_pairs()
    assert len(held) == len(COLOURS)
    assert ("red", "circle") in held and is_held_out("red", "circle") and not is_held_out("red", "square")
    train = set(train_pairs())
    assert not train & held and len(train) + len(held) == len(COLOURS) * len(SHAPES)
    for c in COLOURS:  # every colour and every shape is still seen in training
        assert sum((c, s) in train for s in SHAPES) == len(SHAPES) - 1
    for s in SHAPES:
        assert any((c, s) in train for c in COLOURS)
    for i in range(500):
        assert not any(is_held_out(o.colour, o.shape) for o in scene_at(0, i, "train").objects)
        assert any(is_held_out(o.colour, o.shape) for o in scene_at(0, i, "test").objects)


def test_scene_json_round_trip():
    s = scene_at(0, 3)
    d = json.loads(s.to_json())
    assert Scene.from_dict(d) == s
    assert isinstance(d["objects"][0]["bbox"], list)


def test_swap_colours_and_object_list_rendering():
    s = scene_at(0, 0, "any", template="and")
    t = swap_colours(s)
    assert [o.colour for o in t.objects] == [o.colour for o in s.objects][::-1]
    assert t.caption == s.caption
    one = render([RenderedObject("blue", "square", None, 10, (5, 5, 15, 15))])
    assert (one[5:15, 5:15] == COLOURS["blue"]).all() and (one[20:, 20:] == BACKGROUND).all()


def test_write_dataset(tmp_path):
    out = write_dataset(tmp_path / "ds", 3, seed=1, split="test")
    lines = (out / "scenes.jsonl").read_text().splitlines()
    assert len(lines) == 3
    rec = json.loads(lines[0])
    assert (out / rec["file"]).exists() and rec["split"] == "test"
