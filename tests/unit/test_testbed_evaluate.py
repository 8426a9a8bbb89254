"""Shapes-testbed evaluator on rendered images whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from attnlens.testbed.evaluate import (
    UNKNOWN,
    aggregate,
    classify_shape,
    degrade,
    detect,
    parse_caption,
    score,
    validate,
)
from attnlens.testbed.render import (
    BACKGROUND,
    COLOURS,
    SHAPES,
    ObjectSpec,
    RenderedObject,
    _shape_patch,
    compose,
    alpha_mask,
    render,
)

RED_CIRCLE = RenderedObject("red", "circle", None, 16, (8, 6, 24, 22))
BLUE_SQUARE = RenderedObject("blue", "square", None, 18, (36, 38, 54, 56))
PROMPT = "a red circle and a blue square"


def test_parse_caption():
    assert parse_caption("a red circle and a blue square") == [ObjectSpec("red", "circle"),
                                                               ObjectSpec("blue", "square")]
    assert parse_caption(" A small green triangle and a big yellow cross. ") == [
        ObjectSpec("green", "triangle", "small"), ObjectSpec("yellow", "cross", "big")]
    assert parse_caption("a red circle next to a blue square")[1] == ObjectSpec("blue", "square")
    assert len(parse_caption("a red circle, a blue square and a green cross")) == 3
    for bad in ("a crimson circle", "a red dog", "red circle", "a red circle or a blue square", ""):
        with pytest.raises(ValueError):
            parse_caption(bad)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", [9, 12, 17, 26])
def test_classify_shape_on_drawn_shapes(shape, size):
    mask = np.zeros((40, 40), bool)
    mask[5 : 5 + size, 7 : 7 + size] = _shape_patch(shape, size) >= 0.5
    assert classify_shape(mask)[0] == shape


def test_classify_shape_unknown_for_elongated_or_ragged():
    bar = np.zeros((30, 30), bool)
    bar[10:13, 2:28] = True
    assert classify_shape(bar)[0] == UNKNOWN
    rng = np.random.default_rng(0)
    speckle = rng.random((20, 20)) < 0.5
    assert classify_shape(speckle)[0] == UNKNOWN


def test_detect_finds_objects_with_boxes():
    dets = detect(render([RED_CIRCLE, BLUE_SQUARE]))
    assert [(d.colour, d.shape) for d in dets] == [("blue", "square"), ("red", "circle")]  # largest first
    assert dets[0].bbox == BLUE_SQUARE.bbox and dets[1].bbox == RED_CIRCLE.bbox
    assert dets[0].colour_fractions == {"blue": 1.0}
    assert detect(np.full((64, 64, 3), BACKGROUND, np.uint8)) == []


def test_correct_image_is_success():
    r = score(render([RED_CIRCLE, BLUE_SQUARE]), PROMPT)
    assert r.success and not (r.misbinding or r.leakage or r.neglect or r.extra)
    assert [o.status for o in r.objects] == ["correct", "correct"]
    assert r.n_correct == 2


def test_swapped_colours_is_misbinding():
    img = render([RenderedObject("blue", "circle", None, 16, RED_CIRCLE.bbox),
                  RenderedObject("red", "square", None, 18, BLUE_SQUARE.bbox)])
    r = score(img, PROMPT)
    assert r.misbinding and r.swapped and not r.success and not r.neglect and not r.leakage
    assert [o.status for o in r.objects] == ["wrong_colour", "wrong_colour"]
    assert [o.colour_from for o in r.objects] == [1, 0]


def test_one_sided_misbinding_and_neglect():
    # only a red square: the square wears the circle's colour, the circle is missing
    img = render([RenderedObject("red", "square", None, 18, BLUE_SQUARE.bbox)])
    r = score(img, PROMPT)
    assert r.misbinding and not r.swapped and r.neglect
    assert [o.status for o in r.objects] == ["missing", "wrong_colour"]


def test_missing_object_is_neglect():
    r = score(render([BLUE_SQUARE]), PROMPT)
    assert r.neglect and not r.misbinding and not r.leakage and not r.success
    assert r.objects[0].status == "missing" and r.objects[0].detection is None
    assert r.objects[1].status == "correct"


def test_colour_on_background_is_leakage():
    blob = np.zeros((64, 64), np.float32)
    blob[50:55, 4:14] = 1.0  # a red bar on the background
    img = compose([(alpha_mask(RED_CIRCLE), COLOURS["red"]), (alpha_mask(BLUE_SQUARE), COLOURS["blue"]),
                   (blob, COLOURS["red"])])
    r = score(img, PROMPT)
    assert r.leakage and r.leakage_on_background == ("red",) and r.extra and not r.success
    assert [o.status for o in r.objects] == ["correct", "correct"]


def test_colour_on_wrong_object_is_leakage():
    top = alpha_mask(BLUE_SQUARE).copy()
    top[41:] = 0.0  # the top 5 of 18 rows of the square are red
    img = compose([(alpha_mask(RED_CIRCLE), COLOURS["red"]), (alpha_mask(BLUE_SQUARE), COLOURS["blue"]),
                   (top, COLOURS["red"])])
    r = score(img, PROMPT)
    assert r.leakage and not r.misbinding and not r.success
    assert r.objects[1].status == "correct" and r.objects[1].leaked_colours == ("red",)


def test_wrong_shape_and_extra_object():
    img = render([RenderedObject("red", "triangle", None, 16, RED_CIRCLE.bbox), BLUE_SQUARE,
                  RenderedObject("green", "cross", None, 12, (40, 4, 52, 16))])
    r = score(img, PROMPT)
    assert r.objects[0].status == "wrong_shape" and r.extra == (2,) and not r.leakage  # green is not a prompt colour
    assert not r.success


def test_size_words():
    small = RenderedObject("red", "circle", "small", 12, (4, 4, 16, 16))
    big = RenderedObject("blue", "square", "big", 24, (30, 30, 54, 54))
    r = score(render([small, big]), "a small red circle and a big blue square")
    assert r.success and [o.size_ok for o in r.objects] == [True, True]
    r = score(render([small, big]), "a big red circle and a small blue square")
    assert r.success and [o.size_ok for o in r.objects] == [False, False]  # size is reported, not scored


def test_robust_to_mild_blur_and_noise():
    img = degrade(render([RED_CIRCLE, BLUE_SQUARE]), blur=0.8, noise=6.0)
    assert score(img, PROMPT).success


def test_aggregate():
    good = score(render([RED_CIRCLE, BLUE_SQUARE]), PROMPT)
    bad = score(render([BLUE_SQUARE]), PROMPT)
    agg = aggregate([good, bad])
    assert agg["success_rate"] == 0.5 and agg["neglect_rate"] == 0.5 and agg["object_accuracy"] == 0.75
    assert good.to_dict()["objects"][0]["status"] == "correct"


def test_validation_agreement_on_rendered_images():
    rep = validate(n=150, seed=3)
    assert rep.detection_agreement >= 0.98
    assert rep.object_agreement >= 0.98
    assert rep.scoring_agreement >= 0.98
    assert set(rep.cases) == {"correct", "swapped", "missing", "leak_object", "leak_background"}
