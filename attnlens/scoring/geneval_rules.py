"""A GenEval-style rule checker (Ghosh et al. 2023, ``evaluation/evaluate_images.py`` of the released code) over
the boxes of a pluggable detector.

A **detector** is any callable ``detector(image) → [Box, ...]`` (label, box ``(x0, y0, x1, y1)`` in pixels,
confidence, and optionally the colour it saw). GenEval's is Mask2Former on COCO classes with a CLIP colour
classifier on the crops; attnlens's shapes evaluator is one too (:func:`shapes_detector`: shape as the label, its
palette colour as the colour, confidence 1).

**Metadata** says what the prompt asks for, as GenEval's ``metadata.jsonl``::

    {"tag": "color_attr", "include": [{"class": "circle", "count": 1, "color": "red"},
                                      {"class": "square", "count": 1, "color": "blue",
                                       "position": ["right of", 0]}],
     "exclude": [{"class": "square", "count": 2}]}

**Rules**, as released:

1. *Keep*: per class, boxes with confidence > 0.3 (> 0.9 when the tag is ``counting``), most confident first, at
   most 16, then greedy non-maximum suppression at IoU ``max_overlap`` (1.0: none).
2. *Include* (AND over entries): the class's first ``count`` boxes must exist (at least ``count`` kept); with a
   ``color``, at least ``count`` of those boxes must have that colour; with ``position = [relation, k]``, each of
   those boxes must stand in ``relation`` to every box matched by include entry k (which must have matched).
3. *Exclude* (OR over entries): ``count`` or more kept boxes of the class fail the image.
4. *Relative position* of box A to box B: with centres c, sizes s (width, height) and offset o = c_A − c_B, the
   revised offset r = sign(o) · max(|o| − 0.1 · (s_A + s_B), 0); no relation when |r| < 10⁻³ on both axes, else
   with (dx, dy) = r / ‖o‖: "left of" if dx < −0.5, "right of" if dx > 0.5, "above" if dy < −0.5, "below" if
   dy > 0.5 (image y grows downwards).

The image is correct when every rule holds: ``{"geneval_correct": 1.0 or 0.0}``.

Departure: colours come from the detector (``Box.colour``) or from a ``colour_of(image, boxes, class)`` callable,
not from GenEval's CLIP ViT-L/14 crop classifier, which would need its own model.

Examples::

    >>> sorted(relative_position(Box("cat", (0, 0, 10, 10)), Box("dog", (50, 0, 60, 10))))
    ['left of']
    >>> ok, reasons = check({"cat": [Box("cat", (0, 0, 10, 10), colour="red")]},
    ...                     {"tag": "colors", "include": [{"class": "cat", "count": 1, "color": "blue"}]})
    >>> ok, reasons
    (False, ['expected blue cat>=1, found 0 blue; and 1 red'])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import BadOption
from ..testbed.evaluate import detect, parse_caption
from ._common import ImageScorer, resolve_input

THRESHOLD = 0.3
COUNTING_THRESHOLD = 0.9
MAX_OBJECTS = 16
MAX_OVERLAP = 1.0
POSITION_THRESHOLD = 0.1
RELATIONS = ("left of", "right of", "above", "below")


@dataclass(frozen=True)
class Box:
    """A detection: ``label`` (class name), ``box`` ``(x0, y0, x1, y1)`` in pixels, ``score`` (confidence) and the
    ``colour`` the detector saw (None when it does not classify colours)."""

    label: str
    box: tuple[float, float, float, float]
    score: float = 1.0
    colour: str | None = None


Detector = Callable[[Any], Sequence[Box]]


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two ``(x0, y0, x1, y1)`` boxes with GenEval's inclusive-pixel areas ``(x1 − x0 + 1)(y1 − y0 + 1)``."""
    def area(x0, y0, x1, y1):
        return max(x1 - x0 + 1, 0) * max(y1 - y0 + 1, 0)

    inter = area(max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
    union = area(*a[:4]) + area(*b[:4]) - inter
    return inter / union if union else 0.0


def keep_boxes(boxes: Sequence[Box], threshold: float = THRESHOLD, max_objects: int = MAX_OBJECTS,
               max_overlap: float = MAX_OVERLAP) -> dict[str, list[Box]]:
    """Rule 1: ``{class: [kept boxes, most confident first]}`` (classes with no kept box are left out)."""
    out: dict[str, list[Box]] = {}
    for label in dict.fromkeys(b.label for b in boxes):
        ranked = sorted((b for b in boxes if b.label == label and b.score > threshold), key=lambda b: -b.score)
        ranked = ranked[:max_objects]
        kept: list[Box] = []
        while ranked:
            top = ranked.pop(0)
            kept.append(top)
            if max_overlap < 1:
                ranked = [b for b in ranked if box_iou(top.box, b.box) < max_overlap]
        if kept:
            out[label] = kept
    return out


def relative_position(a: Box, b: Box, threshold: float = POSITION_THRESHOLD) -> set[str]:
    """Rule 4: the relations of box ``a`` to box ``b`` (a subset of :data:`RELATIONS`)."""
    boxes = np.array([a.box[:4], b.box[:4]], dtype=np.float64).reshape(2, 2, 2)
    centre_a, centre_b = boxes.mean(axis=1)
    size_a, size_b = np.abs(boxes[:, 1] - boxes[:, 0])
    offset = centre_a - centre_b
    revised = np.maximum(np.abs(offset) - threshold * (size_a + size_b), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    rel = set()
    if dx < -0.5:
        rel.add("left of")
    if dx > 0.5:
        rel.add("right of")
    if dy < -0.5:
        rel.add("above")
    if dy > 0.5:
        rel.add("below")
    return rel


def _detector_colours(image, boxes: Sequence[Box], classname: str) -> list[str | None]:
    return [b.colour for b in boxes]


def check(detected: Mapping[str, Sequence[Box]], metadata: Mapping[str, Any], image: Any = None,
          colour_of: Callable[[Any, Sequence[Box], str], Sequence[str | None]] | None = None,
          position_threshold: float = POSITION_THRESHOLD) -> tuple[bool, list[str]]:
    """Rules 2–4 on the kept boxes (:func:`keep_boxes`): ``(correct, reasons it is not)``.

    ``colour_of(image, boxes, class)`` names each box's colour (default: the detector's ``Box.colour``)."""
    colour_of = colour_of or _detector_colours
    correct, reasons = True, []
    matched: list[Sequence[Box] | None] = []
    for req in metadata.get("include", []):
        cls, count = req["class"], int(req["count"])
        found = list(detected.get(cls, []))[:count]
        ok = True
        if len(found) < count:
            ok = False
            reasons.append(f"expected {cls}>={count}, found {len(found)}")
        else:
            if "color" in req:
                colours = list(colour_of(image, found, cls))
                if colours.count(req["color"]) < count:
                    ok = False
                    others = ", ".join(f"{colours.count(c)} {c}" for c in dict.fromkeys(colours) if c is not None)
                    reasons.append(f"expected {req['color']} {cls}>={count}, found "
                                   f"{colours.count(req['color'])} {req['color']}; and {others}")
            if "position" in req and ok:
                relation, target = req["position"]
                if target >= len(matched) or matched[target] is None:
                    ok = False
                    reasons.append(f"no target for {cls} to be {relation}")
                else:
                    for obj in found:
                        bad = next((t for t in matched[target]
                                    if relation not in relative_position(obj, t, position_threshold)), None)
                        if bad is not None:
                            ok = False
                            rel = relative_position(obj, bad, position_threshold)
                            found_rel = " and ".join(sorted(rel))
                            reasons.append(f"expected {cls} {relation} target, found {found_rel} target")
                            break
        correct &= ok
        matched.append(found if ok else None)
    for req in metadata.get("exclude", []):
        cls, count = req["class"], int(req["count"])
        if len(detected.get(cls, [])) >= count:
            correct = False
            reasons.append(f"expected {cls}<{count}, found {len(detected[cls])}")
    return correct, reasons


def shapes_detector(image) -> list[Box]:
    """The shapes testbed's evaluator (:func:`attnlens.testbed.evaluate.detect`) as a detector: one box per
    object, labelled with its shape, coloured with its palette colour, confidence 1."""
    arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    out = []
    for d in detect(arr):
        r0, c0, r1, c1 = d.bbox
        out.append(Box(d.shape, (float(c0), float(r0), float(c1 - 1), float(r1 - 1)), 1.0, d.colour))
    return out


def caption_metadata(caption: str) -> dict[str, Any]:
    """GenEval metadata for a shapes-testbed caption: one include entry per distinct (shape, colour), counted;
    tag ``colors`` for one object, ``color_attr`` for more ("next to" asks for no side, so no position)."""
    try:
        specs = parse_caption(caption)
    except ValueError as exc:
        raise BadOption(str(exc), hint="pass GenEval metadata for prompts that are not testbed captions") from None
    counts: dict[tuple[str, str], int] = {}
    for s in specs:
        counts[(s.shape, s.colour)] = counts.get((s.shape, s.colour), 0) + 1
    include = [{"class": shape, "count": n, "color": colour} for (shape, colour), n in counts.items()]
    return {"tag": "colors" if len(specs) == 1 else "color_attr", "include": include, "prompt": caption}


class GenEvalScorer(ImageScorer):
    """``score(run_or_image, prompt, metadata=None) → {"geneval_correct": 1.0 | 0.0}`` (module docstring).

    Args:
        detector (`callable`, *optional*, defaults to :func:`shapes_detector`): ``detector(image) → [Box, ...]``.
        metadata_for (`callable`, *optional*, defaults to :func:`caption_metadata`): prompt → GenEval metadata,
            used when ``score`` is given none.
        threshold, counting_threshold, max_objects, max_overlap, position_threshold: GenEval's options (released
            defaults 0.3, 0.9, 16, 1.0, 0.1).
        colour_of: ``colour_of(image, boxes, class) → colours`` (default: the detector's colours).
    """

    name = "geneval"

    def __init__(self, detector: Detector | None = None, *, metadata_for: Callable[[str], Mapping] | None = None,
                 threshold: float = THRESHOLD, counting_threshold: float = COUNTING_THRESHOLD,
                 max_objects: int = MAX_OBJECTS, max_overlap: float = MAX_OVERLAP,
                 position_threshold: float = POSITION_THRESHOLD, colour_of=None):
        self.detector = detector or shapes_detector
        self.metadata_for = metadata_for or caption_metadata
        self.threshold, self.counting_threshold = float(threshold), float(counting_threshold)
        self.max_objects, self.max_overlap = int(max_objects), float(max_overlap)
        self.position_threshold, self.colour_of = float(position_threshold), colour_of
        self.last_reasons: list[str] = []

    def score(self, run_or_image, prompt: str | None = None, metadata: Mapping[str, Any] | None = None
              ) -> dict[str, float]:
        image, prompt = resolve_input(run_or_image, prompt)
        metadata = metadata if metadata is not None else self.metadata_for(prompt)
        t = self.counting_threshold if metadata.get("tag") == "counting" else self.threshold
        kept = keep_boxes(self.detector(image), t, self.max_objects, self.max_overlap)
        ok, self.last_reasons = check(kept, metadata, image, self.colour_of, self.position_threshold)
        return {"geneval_correct": float(ok)}
