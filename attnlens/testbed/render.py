"""Seeded procedural renderer of the shapes testbed: coloured shapes on a plain background, with ground truth.

Every scene is a pure function of ``(seed, index, split)``: :func:`scene_at` draws it with
``numpy.random.default_rng([seed, index, split_code])`` and :func:`render` turns it into a 64×64 RGB ``uint8`` image
(drawn with ``skimage.draw`` at 4× and area-averaged, so edges are anti-aliased as a linear mix of object colour and
background).

World:

* **colours** (:data:`COLOURS`): red, yellow, green, blue, purple, pink — saturated; every pair (background
  included) is ≥ 128 apart in RGB and ≥ 41 apart in CIELAB ΔE (closest: blue–purple); the background
  (:data:`BACKGROUND`) is a plain light grey;
* **shapes** (:data:`SHAPES`): circle, square, triangle (apex up), cross (plus sign, arms ⅓ of the side), all
  axis-aligned and drawn in a square box of side ``size`` pixels;
* **sizes**: ``small`` 10–14 px, ``big`` 20–26 px, no size word 12–24 px;
* 1–3 objects with distinct colours, ≥ 3 px apart and ≥ 2 px from the border.

Captions (:data:`TEMPLATES`)::

    single    "a red circle"                       (size words optional: "a small red circle")
    and       "a red circle and a blue square"
    next_to   "a red circle next to a blue square" (objects side by side, centres within 4 px vertically)
    three     "a red circle, a blue square and a green cross"

Held-out split (:func:`held_out_pairs`): colour *i* of :data:`COLOURS` never appears on shape ``SHAPES[i % 4]`` in
the ``train`` split — red circle, yellow square, green triangle, blue cross, purple circle, pink square (6 of the 24
colour–shape pairs). Every colour is still seen with three shapes and every shape with four or five colours, so a
model can only draw a held-out pair by *binding* a colour it knows to a shape it knows. The ``test`` split puts at
least one held-out pair in every scene.

Examples::

    >>> from attnlens.testbed.render import scene_at, render
    >>> scene = scene_at(seed=0, index=3, split="train")
    >>> image = render(scene)                       # (64, 64, 3) uint8
    >>> scene.caption, [o.bbox for o in scene.objects]
    ('a yellow cross, a blue square and a purple square', [(11, 4, 26, 19), (38, 8, 58, 28), (40, 39, 60, 59)])
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "yellow": (240, 200, 0),
    "green": (30, 160, 50),
    "blue": (10, 100, 220),
    "purple": (130, 30, 160),
    "pink": (250, 110, 190),
}
BACKGROUND: tuple[int, int, int] = (230, 230, 230)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
SIZE_WORDS: tuple[str, ...] = ("small", "big")
SIZE_RANGES: dict[str | None, tuple[int, int]] = {"small": (10, 14), "big": (20, 26), None: (12, 24)}
TEMPLATES: dict[str, str] = {
    "single": "{0}",
    "and": "{0} and {1}",
    "next_to": "{0} next to {1}",
    "three": "{0}, {1} and {2}",
}
TEMPLATE_OBJECTS: dict[str, int] = {"single": 1, "and": 2, "next_to": 2, "three": 3}
SPLITS: tuple[str, ...] = ("train", "test", "any")
IMAGE_SIZE = 64
SUPERSAMPLE = 4
GAP = 3  # minimum distance in pixels between object boxes
MARGIN = 2  # minimum distance in pixels from the image border


@dataclass(frozen=True)
class ObjectSpec:
    """An object as a caption names it: colour, shape and an optional size word."""

    colour: str
    shape: str
    size_word: str | None = None

    @property
    def phrase(self) -> str:
        """``"a small red circle"``."""
        words = ["a"] + ([self.size_word] if self.size_word else []) + [self.colour, self.shape]
        return " ".join(words)


@dataclass(frozen=True)
class RenderedObject:
    """One object of a scene with its ground truth.

    ``bbox`` is ``(row0, col0, row1, col1)`` in pixels, end-exclusive (the square the shape is drawn in);
    ``size`` its side in pixels.
    """

    colour: str
    shape: str
    size_word: str | None
    size: int
    bbox: tuple[int, int, int, int]

    @property
    def center(self) -> tuple[float, float]:
        r0, c0, r1, c1 = self.bbox
        return ((r0 + r1) / 2.0, (c0 + c1) / 2.0)

    @property
    def spec(self) -> ObjectSpec:
        return ObjectSpec(self.colour, self.shape, self.size_word)


@dataclass(frozen=True)
class Scene:
    """A caption with the objects it describes, in caption order, and everything needed to re-render it."""

    caption: str
    template: str
    objects: tuple[RenderedObject, ...]
    seed: int = 0
    index: int = 0
    split: str = "any"
    image_size: int = IMAGE_SIZE
    background: tuple[int, int, int] = field(default=BACKGROUND)

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (inverse: :meth:`from_dict`)."""
        d = asdict(self)
        d["objects"] = [asdict(o) for o in self.objects]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        objects = tuple(
            RenderedObject(o["colour"], o["shape"], o["size_word"], int(o["size"]), tuple(int(v) for v in o["bbox"]))
            for o in d["objects"]
        )
        return cls(
            caption=d["caption"], template=d["template"], objects=objects, seed=int(d.get("seed", 0)),
            index=int(d.get("index", 0)), split=d.get("split", "any"), image_size=int(d.get("image_size", IMAGE_SIZE)),
            background=tuple(d.get("background", BACKGROUND)),
        )


# ------------------------------------------------------------------------------------------------ split
def held_out_pairs() -> frozenset[tuple[str, str]]:
    """The colour–shape pairs never seen in training: colour *i* with ``SHAPES[i % len(SHAPES)]``."""
    return frozenset((c, SHAPES[i % len(SHAPES)]) for i, c in enumerate(COLOURS))


def is_held_out(colour: str, shape: str) -> bool:
    return (colour, shape) in held_out_pairs()


def train_pairs() -> list[tuple[str, str]]:
    """All colour–shape pairs allowed in the training split."""
    held = held_out_pairs()
    return [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in held]


def caption_for(specs: Sequence[ObjectSpec], template: str) -> str:
    """The caption of ``specs`` in ``template`` (one of :data:`TEMPLATES`)."""
    if TEMPLATE_OBJECTS[template] != len(specs):
        raise ValueError(f"template '{template}' takes {TEMPLATE_OBJECTS[template]} objects, got {len(specs)}")
    return TEMPLATES[template].format(*(s.phrase for s in specs))


# ------------------------------------------------------------------------------------------------ sampling
def _split_code(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got '{split}'")
    return SPLITS.index(split)


def sample_specs(
    rng: np.random.Generator,
    split: str = "train",
    template: str | None = None,
    p_size_words: float = 0.4,
) -> tuple[list[ObjectSpec], str]:
    """Draw a template and its objects (distinct colours) for ``split``; returns ``(specs, template)``.

    Templates are drawn with probabilities single 0.2, and 0.35, next_to 0.2, three 0.25. With probability
    ``p_size_words`` every object gets a size word (big/small), otherwise none does.
    """
    _split_code(split)
    if template is None:
        template = str(rng.choice(list(TEMPLATES), p=[0.2, 0.35, 0.2, 0.25]))
    n = TEMPLATE_OBJECTS[template]
    held = sorted(held_out_pairs())
    allowed = train_pairs() if split == "train" else [(c, s) for c in COLOURS for s in SHAPES]
    use_sizes = rng.random() < p_size_words
    while True:
        pairs: list[tuple[str, str]] = []
        if split == "test":  # at least one held-out pair, at a random position
            pairs.append(held[rng.integers(len(held))])
        while len(pairs) < n:
            c, s = allowed[rng.integers(len(allowed))]
            if c not in {p[0] for p in pairs}:
                pairs.append((c, s))
        order = rng.permutation(n)
        pairs = [pairs[i] for i in order]
        if len({c for c, _ in pairs}) == n:
            break
    specs = [
        ObjectSpec(c, s, str(SIZE_WORDS[rng.integers(2)]) if use_sizes else None) for c, s in pairs
    ]
    return specs, template


def _boxes_clear(box: tuple[int, int, int, int], others: Sequence[tuple[int, int, int, int]], gap: int) -> bool:
    r0, c0, r1, c1 = box
    for q0, p0, q1, p1 in others:
        if r0 < q1 + gap and q0 < r1 + gap and c0 < p1 + gap and p0 < c1 + gap:
            return False
    return True


def layout(
    rng: np.random.Generator, specs: Sequence[ObjectSpec], template: str, image_size: int = IMAGE_SIZE,
    max_tries: int = 200,
) -> list[RenderedObject]:
    """Place ``specs`` without overlap (rejection sampling; sizes shrink by 1 px after every failed round)."""
    sizes = [int(rng.integers(SIZE_RANGES[s.size_word][0], SIZE_RANGES[s.size_word][1] + 1)) for s in specs]
    for _round in range(50):
        for _ in range(max_tries):
            boxes: list[tuple[int, int, int, int]] = []
            for i, size in enumerate(sizes):
                hi = image_size - MARGIN - size
                if template == "next_to" and i == 1:  # same height (±4 px) as the first object, left or right of it
                    q0, p0, q1, p1 = boxes[0]
                    cy = (q0 + q1) / 2 + rng.integers(-4, 5)
                    r0 = int(round(cy - size / 2))
                    left = rng.random() < 0.5
                    c0 = int(rng.integers(MARGIN, max(MARGIN, p0 - GAP - size) + 1)) if left else int(
                        rng.integers(min(hi, p1 + GAP), hi + 1)
                    )
                else:
                    r0, c0 = int(rng.integers(MARGIN, hi + 1)), int(rng.integers(MARGIN, hi + 1))
                box = (r0, c0, r0 + size, c0 + size)
                if min(box[:2]) < MARGIN or max(box[2:]) > image_size - MARGIN or not _boxes_clear(box, boxes, GAP):
                    break
                boxes.append(box)
            else:
                return [RenderedObject(s.colour, s.shape, s.size_word, size, box)
                        for s, size, box in zip(specs, sizes, boxes)]
        lo = {None: 8, "small": 8, "big": 14}
        sizes = [max(lo[s.size_word], z - 1) for s, z in zip(specs, sizes)]
    raise RuntimeError(f"could not place {len(specs)} objects in {image_size}x{image_size}")


def scene_at(seed: int, index: int, split: str = "train", template: str | None = None,
             image_size: int = IMAGE_SIZE) -> Scene:
    """Scene number ``index`` of the stream ``(seed, split)``: deterministic and random-access."""
    rng = np.random.default_rng([seed, index, _split_code(split)])
    specs, template = sample_specs(rng, split, template)
    objects = layout(rng, specs, template, image_size)
    return Scene(caption_for(specs, template), template, tuple(objects), seed, index, split, image_size)


def sample_scene(rng: np.random.Generator, split: str = "train", template: str | None = None,
                 image_size: int = IMAGE_SIZE) -> Scene:
    """A scene drawn from ``rng`` (for callers that manage their own generator)."""
    specs, template = sample_specs(rng, split, template)
    objects = layout(rng, specs, template, image_size)
    return Scene(caption_for(specs, template), template, tuple(objects), split=split, image_size=image_size)


# ------------------------------------------------------------------------------------------------ drawing
def alpha_mask(obj: RenderedObject, image_size: int = IMAGE_SIZE, supersample: int = SUPERSAMPLE) -> np.ndarray:
    """Coverage of ``obj`` in ``[0, 1]`` per pixel, ``(image_size, image_size)`` float32 (drawn ``supersample``×)."""
    out = np.zeros((image_size, image_size), dtype=np.float32)
    r0, c0, r1, c1 = obj.bbox
    patch = _shape_patch(obj.shape, obj.size, obj.size, supersample)
    # clip to the image (boxes from the renderer are always inside; hand-made ones may not be)
    a0, b0, a1, b1 = max(r0, 0), max(c0, 0), min(r1, image_size), min(c1, image_size)
    if a0 < a1 and b0 < b1:
        out[a0:a1, b0:b1] = patch[a0 - r0 : a1 - r0, b0 - c0 : b1 - c0]
    return out


@functools.lru_cache(maxsize=2048)
def _shape_patch(shape: str, height: int, width: int | None = None, k: int = SUPERSAMPLE) -> np.ndarray:
    """Coverage of a shape filling a ``height × width`` box (drawn at ``k``× and area-averaged); cached, read-only."""
    from skimage.draw import ellipse, polygon

    width = height if width is None else width
    h, w = height * k, width * k
    big = np.zeros((h, w), dtype=np.float32)
    if shape == "circle":
        rr, cc = ellipse((h - 1) / 2, (w - 1) / 2, h / 2, w / 2, shape=big.shape)
        big[rr, cc] = 1.0
    elif shape == "square":
        big[:] = 1.0
    elif shape == "triangle":  # apex up, base on the bottom edge
        rr, cc = polygon(np.array([h - 0.5, h - 0.5, -0.5]), np.array([-0.5, w - 0.5, (w - 1) / 2]), shape=big.shape)
        big[rr, cc] = 1.0
    elif shape == "cross":  # plus sign, arms a third of the side
        a0, a1 = int(round(h / 2 - h / 6)), int(round(h / 2 + h / 6))
        b0, b1 = int(round(w / 2 - w / 6)), int(round(w / 2 + w / 6))
        big[a0:a1, :] = 1.0
        big[:, b0:b1] = 1.0
    else:
        raise ValueError(f"unknown shape '{shape}' (known: {SHAPES})")
    patch = big.reshape(height, k, width, k).mean(axis=(1, 3))
    patch.setflags(write=False)
    return patch


def compose(
    layers: Sequence[tuple[np.ndarray, tuple[int, int, int]]],
    image_size: int = IMAGE_SIZE,
    background: tuple[int, int, int] = BACKGROUND,
) -> np.ndarray:
    """Paint ``(alpha, rgb)`` layers in order over ``background``; returns ``uint8 (H, W, 3)``."""
    img = np.empty((image_size, image_size, 3), dtype=np.float32)
    img[:] = np.asarray(background, dtype=np.float32)
    for alpha, rgb in layers:
        a = alpha[..., None]
        img = img * (1.0 - a) + a * np.asarray(rgb, dtype=np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render(scene: Scene | Sequence[RenderedObject], image_size: int | None = None,
           background: tuple[int, int, int] | None = None) -> np.ndarray:
    """Draw a scene (or a list of objects) into a ``uint8 (H, W, 3)`` RGB image."""
    if isinstance(scene, Scene):
        objects, image_size, background = scene.objects, image_size or scene.image_size, background or scene.background
    else:
        objects = scene
    image_size = image_size or IMAGE_SIZE
    background = background or BACKGROUND
    return compose([(alpha_mask(o, image_size), COLOURS[o.colour]) for o in objects], image_size, background)


def object_masks(scene: Scene, threshold: float = 0.5) -> list[np.ndarray]:
    """Boolean masks (coverage ≥ ``threshold``) of the scene's objects, in caption order."""
    return [alpha_mask(o, scene.image_size) >= threshold for o in scene.objects]


def generate(n: int, seed: int = 0, split: str = "train", start: int = 0) -> Iterator[tuple[np.ndarray, Scene]]:
    """Yield ``(image, scene)`` for indices ``start .. start+n-1`` of the stream ``(seed, split)``."""
    for i in range(start, start + n):
        scene = scene_at(seed, i, split)
        yield render(scene), scene


def render_batch(seed: int, indices: Sequence[int], split: str = "train") -> tuple[np.ndarray, list[str]]:
    """Images ``(B, H, W, 3) uint8`` and captions of the given indices (the training data loader)."""
    scenes = [scene_at(seed, int(i), split) for i in indices]
    return np.stack([render(s) for s in scenes]), [s.caption for s in scenes]


def swap_colours(scene: Scene, i: int = 0, j: int = 1) -> Scene:
    """The same scene with the colours of objects ``i`` and ``j`` exchanged (the caption is kept)."""
    objs = list(scene.objects)
    objs[i], objs[j] = replace(objs[i], colour=objs[j].colour), replace(objs[j], colour=objs[i].colour)
    return replace(scene, objects=tuple(objs))


def write_dataset(out: str | Path, n: int, seed: int = 0, split: str = "train") -> Path:
    """Write ``n`` PNGs and ``scenes.jsonl`` (one :meth:`Scene.to_dict` per line) into ``out``."""

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "scenes.jsonl", "w") as f:
        for image, scene in generate(n, seed, split):
            name = f"{split}-{scene.index:06d}.png"
            Image.fromarray(image).save(out / name)
            f.write(json.dumps({"file": name, **scene.to_dict()}) + "\n")
    return out


# ``python -m attnlens.testbed.render ARGS`` is ``attnlens testbed render ARGS`` (``--help`` lists the options)
if __name__ == "__main__":
    from attnlens.cli import run_module

    run_module("render", None)
