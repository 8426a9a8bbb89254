"""Ground-truth evaluator of the shapes testbed: detect the objects of an image and score them against the prompt.

Detection (:func:`detect`), for an RGB image on the testbed's plain background:

1. **pixel colours** — every pixel is explained as a mix ``background + α·(colour − background)`` of the
   background and one palette colour (:data:`~attnlens.testbed.render.COLOURS`); the colour with the smallest
   residual wins, and the pixel is foreground when its ``α ≥ 0.5``. Anti-aliased and blurred edges (which are
   such mixes) therefore keep their object's colour instead of looking like a third colour. The background colour
   is re-estimated from the image (median of the pixels near the nominal one).
2. **connected components** of the foreground (4-connectivity); components under ``min_area`` pixels are noise.
   A component whose second colour covers ≥ ``split_fraction`` of it is split into its colour regions (two
   touching objects); smaller shares of other colours stay on the object and are reported as its colour fractions.
3. **shape** from the region's bounding box and mask: IoU of the mask with each shape drawn to fill the same box
   (:func:`classify_shape`); best IoU below ``min_iou`` → ``"unknown"``.

Scoring (:func:`score`) against the objects the prompt names (:func:`parse_caption`): expected objects are matched
to detections maximising 2·[same shape] + 1·[same colour] (+ ¼·[same size word] as a tie-break; a pair must
share shape or colour). Per object:
``correct``, ``wrong_colour``, ``wrong_shape`` or ``missing``. Image flags:

* **misbinding** — a matched object wears the colour of *another* prompt object (``swapped`` when two objects
  exchanged colours);
* **leakage** — a prompt colour covers ≥ ``leak_fraction`` of an object it does not belong to (neither its own
  colour nor the colour it wears), or appears on an unmatched region (the background);
* **neglect** — a prompt object has no matching detection;
* **extra** — unmatched detections;
* **success** — every object correct, no leakage, no extra detection.

Validation: ``python -m attnlens.testbed.evaluate --validate --n 1000`` (see :func:`validate`).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .render import (
    BACKGROUND,
    COLOURS,
    SHAPES,
    SIZE_WORDS,
    ObjectSpec,
    _shape_patch,
    alpha_mask,
    compose,
    render,
    scene_at,
    swap_colours,
)

UNKNOWN = "unknown"
BIG_SMALL_THRESHOLD = 17  # px: a detected object with a larger box side is "big"


# ------------------------------------------------------------------------------------------------ prompts
_OBJ_RE = re.compile(
    rf"an?\s+(?:(?P<size>{'|'.join(SIZE_WORDS)})\s+)?(?P<colour>{'|'.join(COLOURS)})\s+(?P<shape>{'|'.join(SHAPES)})"
)
_SEP_RE = re.compile(r"\s*,\s*(?:and\s+)?|\s+and\s+|\s+next\s+to\s+")


def parse_caption(caption: str) -> list[ObjectSpec]:
    """The objects a testbed caption names, in order: ``"a small red circle and a blue square"`` → 2 specs.

    Accepts the renderer's templates (and any mix of ``,``/``and``/``next to`` between object phrases); case,
    surrounding spaces and a final full stop are ignored.

    Raises:
        ValueError: a part of the caption is not ``a [big|small] <colour> <shape>``.
    """
    text = caption.strip().lower().rstrip(".").strip()
    parts = [p for p in _SEP_RE.split(text) if p]
    specs = []
    for part in parts:
        m = _OBJ_RE.fullmatch(part.strip())
        if m is None:
            raise ValueError(
                f"cannot parse '{part}' in caption '{caption}': expected 'a [big|small] <colour> <shape>' with colour "
                f"in {list(COLOURS)} and shape in {list(SHAPES)}"
            )
        specs.append(ObjectSpec(m["colour"], m["shape"], m["size"]))
    if not specs:
        raise ValueError(f"empty caption '{caption}'")
    return specs


# ------------------------------------------------------------------------------------------------ detection
@dataclass(frozen=True)
class Detection:
    """A detected object: main colour, shape, pixel area, bbox ``(r0, c0, r1, c1)`` end-exclusive, colour shares."""

    colour: str
    shape: str
    area: int
    bbox: tuple[int, int, int, int]
    colour_fractions: dict[str, float]
    shape_iou: float

    @property
    def size_word(self) -> str:
        r0, c0, r1, c1 = self.bbox
        return "big" if max(r1 - r0, c1 - c0) > BIG_SMALL_THRESHOLD else "small"


_PALETTE_NAMES = list(COLOURS)
_PALETTE = np.array([COLOURS[c] for c in _PALETTE_NAMES], dtype=np.float32)


def estimate_background(image: np.ndarray, nominal: Sequence[int] = BACKGROUND, radius: float = 40.0) -> np.ndarray:
    """Median colour of the pixels within ``radius`` of the nominal background (the nominal one if there are few)."""
    img = np.asarray(image, dtype=np.float32).reshape(-1, 3)
    near = np.linalg.norm(img - np.asarray(nominal, np.float32), axis=1) < radius
    if near.sum() < 0.1 * len(img):
        return np.asarray(nominal, dtype=np.float32)
    return np.median(img[near], axis=0)


def pixel_colours(image: np.ndarray, background: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, the palette index that best explains it as a background/colour mix and that mix's ``α``.

    Returns ``(labels (H, W) int, alpha (H, W) float)``.
    """
    img = np.asarray(image, dtype=np.float32)[..., :3]
    bg = estimate_background(img) if background is None else np.asarray(background, dtype=np.float32)
    v = img - bg  # (H, W, 3)
    d = _PALETTE - bg  # (K, 3)
    alpha = np.clip(np.einsum("hwc,kc->hwk", v, d) / (d**2).sum(1), 0.0, 1.0)  # (H, W, K)
    resid = np.linalg.norm(v[..., None, :] - alpha[..., None] * d, axis=-1)  # (H, W, K)
    labels = resid.argmin(-1)
    return labels, np.take_along_axis(alpha, labels[..., None], -1)[..., 0]


def classify_shape(mask: np.ndarray, min_iou: float = 0.55, max_aspect: float = 1.5) -> tuple[str, float]:
    """Shape of a boolean object mask (cropped or not): the best IoU with each shape filling its bounding box.

    ``"unknown"`` when the best IoU is below ``min_iou`` or the box is more elongated than ``max_aspect``
    (all shapes are drawn in square boxes).
    """
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        return UNKNOWN, 0.0
    crop = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    h, w = crop.shape
    if max(h, w) > max_aspect * min(h, w):
        return UNKNOWN, 0.0
    best, best_iou = UNKNOWN, 0.0
    for shape in SHAPES:
        tmpl = _shape_patch(shape, *crop.shape) >= 0.5
        iou = float((crop & tmpl).sum() / max((crop | tmpl).sum(), 1))
        if iou > best_iou:
            best, best_iou = shape, iou
    return (best if best_iou >= min_iou else UNKNOWN), best_iou


def _fractions(labels: np.ndarray) -> dict[str, float]:
    counts = np.bincount(labels, minlength=len(_PALETTE_NAMES))
    total = max(counts.sum(), 1)
    return {_PALETTE_NAMES[k]: float(c / total) for k, c in enumerate(counts) if c}


def _detection(mask: np.ndarray, labels: np.ndarray, fractions_of: np.ndarray | None = None,
               min_iou: float = 0.55) -> Detection:
    rows, cols = np.nonzero(mask)
    fr = _fractions(labels[fractions_of if fractions_of is not None else mask])
    shape, iou = classify_shape(mask, min_iou)
    return Detection(
        colour=max(fr, key=fr.get), shape=shape, area=int(mask.sum()),
        bbox=(int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1),
        colour_fractions=fr, shape_iou=iou,
    )


def detect(
    image: np.ndarray,
    background: Sequence[float] | None = None,
    min_area: int = 12,
    split_fraction: float = 0.35,
    min_iou: float = 0.55,
) -> list[Detection]:
    """Detect the objects of an RGB image (``uint8 (H, W, 3)`` or float in 0–255), largest first."""
    from skimage.measure import label

    labels, alpha = pixel_colours(image, background)
    fg = alpha >= 0.5
    comps = label(fg, connectivity=1)
    out: list[Detection] = []
    for k in range(1, comps.max() + 1):
        comp = comps == k
        if comp.sum() < min_area:
            continue
        counts = np.bincount(labels[comp], minlength=len(_PALETTE_NAMES))
        order = np.argsort(counts)[::-1]
        if counts[order[1]] >= split_fraction * comp.sum():  # two touching objects: split by colour
            parts = []
            for c in order[counts[order] > 0]:
                sub = label(comp & (labels == c), connectivity=1)
                parts += [sub == j for j in range(1, sub.max() + 1) if (sub == j).sum() >= min_area]
            if len(parts) >= 2:
                out += [_detection(p, labels, min_iou=min_iou) for p in parts]
                continue
        out.append(_detection(comp, labels, min_iou=min_iou))
    return sorted(out, key=lambda d: -d.area)


# ------------------------------------------------------------------------------------------------ scoring
@dataclass(frozen=True)
class ObjectResult:
    """How one prompt object came out. ``status``: correct | wrong_colour | wrong_shape | missing."""

    expected: ObjectSpec
    status: str
    detection: int | None  # index into ImageResult.detections
    colour: str | None  # the colour it was drawn with (None when missing)
    shape: str | None
    colour_from: int | None  # index of the prompt object whose colour it wears instead of its own
    leaked_colours: tuple[str, ...]  # other prompt colours covering ≥ leak_fraction of it
    size_ok: bool | None  # None when the prompt gives no size word or the object is missing


@dataclass(frozen=True)
class ImageResult:
    """The evaluation of one image against its prompt (JSON-serialisable with :meth:`to_dict`)."""

    prompt: str
    objects: tuple[ObjectResult, ...]
    detections: tuple[Detection, ...]
    extra: tuple[int, ...]  # unmatched detections
    misbinding: bool
    swapped: bool
    leakage: bool
    leakage_on_background: tuple[str, ...]  # prompt colours of unmatched detections
    neglect: bool
    success: bool

    @property
    def n_correct(self) -> int:
        return sum(o.status == "correct" for o in self.objects)

    def flags(self) -> dict[str, bool]:
        return {"success": self.success, "misbinding": self.misbinding, "swapped": self.swapped,
                "leakage": self.leakage, "neglect": self.neglect, "extra": bool(self.extra)}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["n_correct"] = self.n_correct
        return d


def _match(expected: Sequence[ObjectSpec], dets: Sequence[Detection]) -> tuple[int | None, ...]:
    """Best assignment expected → detection (or None): max Σ 2·shape + colour + ¼·size, then the larger areas."""
    best: tuple[int | None, ...] = (None,) * len(expected)
    best_key: tuple[float, float] = (0.0, 0.0)
    options = [None, *range(len(dets))]
    for assign in itertools.product(options, repeat=len(expected)):
        used = [a for a in assign if a is not None]
        if len(used) != len(set(used)):
            continue
        total, area = 0.0, 0.0
        ok = True
        for e, a in zip(expected, assign):
            if a is None:
                continue
            s = 2 * (dets[a].shape == e.shape) + (dets[a].colour == e.colour)
            if s == 0:
                ok = False
                break
            s += 0.25 * (e.size_word is not None and dets[a].size_word == e.size_word)
            total, area = total + s, area + dets[a].area
        if ok and (total, area) > best_key:
            best, best_key = assign, (total, area)
    return best


def score(
    image: np.ndarray | Sequence[Detection],
    prompt: str | Sequence[ObjectSpec],
    leak_fraction: float = 0.1,
    **detect_kwargs,
) -> ImageResult:
    """Score an image (or its detections) against a prompt (a testbed caption, or the parsed objects)."""
    expected = parse_caption(prompt) if isinstance(prompt, str) else list(prompt)
    prompt_text = prompt if isinstance(prompt, str) else " and ".join(e.phrase for e in expected)
    dets = list(image) if _is_detections(image) else detect(np.asarray(image), **detect_kwargs)
    assign = _match(expected, dets)
    prompt_colours = [e.colour for e in expected]
    objects = []
    for i, (e, a) in enumerate(zip(expected, assign)):
        if a is None:
            objects.append(ObjectResult(e, "missing", None, None, None, None, (), None))
            continue
        d = dets[a]
        status = "correct" if (d.colour == e.colour and d.shape == e.shape) else (
            "wrong_colour" if d.shape == e.shape else "wrong_shape")
        colour_from = next((j for j, c in enumerate(prompt_colours) if j != i and c == d.colour), None)
        if d.colour == e.colour:
            colour_from = None
        leaked = tuple(
            c for c in dict.fromkeys(prompt_colours)
            if c not in (e.colour, d.colour) and d.colour_fractions.get(c, 0.0) >= leak_fraction
        )
        size_ok = None if e.size_word is None else d.size_word == e.size_word
        objects.append(ObjectResult(e, status, a, d.colour, d.shape, colour_from, leaked, size_ok))
    extra = tuple(k for k in range(len(dets)) if k not in assign)
    on_bg = tuple(dict.fromkeys(dets[k].colour for k in extra if dets[k].colour in prompt_colours))
    misbinding = any(o.colour_from is not None for o in objects)
    swapped = any(
        o.colour_from is not None and objects[o.colour_from].colour_from == i for i, o in enumerate(objects)
    )
    leakage = bool(on_bg) or any(o.leaked_colours for o in objects)
    neglect = any(o.status == "missing" for o in objects)
    success = all(o.status == "correct" for o in objects) and not leakage and not extra
    return ImageResult(prompt_text, tuple(objects), tuple(dets), extra, misbinding, swapped, leakage, on_bg,
                       neglect, success)


def _is_detections(x) -> bool:
    return isinstance(x, (list, tuple)) and (len(x) == 0 or isinstance(x[0], Detection))


def aggregate(results: Iterable[ImageResult]) -> dict[str, float]:
    """Rates over images: success, misbinding, swapped, leakage, neglect, extra; object accuracy over objects."""
    results = list(results)
    n = max(len(results), 1)
    n_obj = max(sum(len(r.objects) for r in results), 1)
    flags = [r.flags() for r in results]
    out = {"n_images": float(len(results))}
    for k in ("success", "misbinding", "swapped", "leakage", "neglect", "extra"):
        out[f"{k}_rate"] = sum(f[k] for f in flags) / n
    out["object_accuracy"] = sum(r.n_correct for r in results) / n_obj
    return out


# ------------------------------------------------------------------------------------------------ validation
@dataclass
class ValidationReport:
    """Agreement of the evaluator with the renderer's ground truth (see :func:`validate`)."""

    n_images: int = 0
    detection_agree: int = 0  # every ground-truth object found (colour, shape, box IoU ≥ 0.5), nothing else
    objects: int = 0
    objects_agree: int = 0
    cases: dict[str, list[int]] = field(default_factory=dict)  # variant → [agreed, total]
    failures: list[dict] = field(default_factory=list)

    @property
    def detection_agreement(self) -> float:
        return self.detection_agree / max(self.n_images, 1)

    @property
    def object_agreement(self) -> float:
        return self.objects_agree / max(self.objects, 1)

    @property
    def scoring_agreement(self) -> float:
        agreed = sum(a for a, _ in self.cases.values())
        return agreed / max(sum(t for _, t in self.cases.values()), 1)

    def summary(self) -> dict:
        return {
            "n_images": self.n_images,
            "detection_agreement": self.detection_agreement,
            "object_agreement": self.object_agreement,
            "scoring_agreement": self.scoring_agreement,
            "cases": {k: {"agreed": a, "total": t, "rate": a / max(t, 1)} for k, (a, t) in self.cases.items()},
        }


def _box_iou(a: Sequence[int], b: Sequence[int]) -> float:
    r0, c0 = max(a[0], b[0]), max(a[1], b[1])
    r1, c1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, r1 - r0) * max(0, c1 - c0)
    area = lambda x: (x[2] - x[0]) * (x[3] - x[1])  # noqa: E731
    return inter / max(area(a) + area(b) - inter, 1)


def validation_cases(scene, rng: np.random.Generator) -> list[tuple[str, np.ndarray, dict]]:
    """Images with known answers made from ``scene``: ``(variant, image, expected flags)``.

    * ``correct`` — the scene as rendered: success;
    * ``swapped`` — two objects of different shapes exchange colours: misbinding + swapped, not success;
    * ``missing`` — one object not drawn: neglect only;
    * ``leak_object`` — the top ~20 % of one object painted in another prompt object's colour: leakage only, all
      objects still correct;
    * ``leak_background`` — a small blob of a prompt colour on the background: leakage (on the background).
    """
    from skimage.draw import ellipse


    base = dict(success=False, misbinding=False, swapped=False, leakage=False, neglect=False)
    cases = [("correct", render(scene), {**base, "success": True})]
    n = len(scene.objects)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n) if scene.objects[i].shape != scene.objects[j].shape]
    if pairs:  # swapping the colours of two objects of the same shape changes nothing
        i, j = pairs[int(rng.integers(len(pairs)))]
        cases.append(("swapped", render(swap_colours(scene, int(i), int(j))),
                      {**base, "misbinding": True, "swapped": True}))
    drop = int(rng.integers(n))
    cases.append(("missing", render([o for k, o in enumerate(scene.objects) if k != drop], scene.image_size),
                  {**base, "neglect": True}))
    layers = [(alpha_mask(o, scene.image_size), COLOURS[o.colour]) for o in scene.objects]
    if n >= 2:
        i, j = rng.choice(n, 2, replace=False)
        a = layers[i][0]
        rows = np.cumsum(a.sum(1)) / a.sum()
        cut = int(np.searchsorted(rows, 0.2)) + 1  # rows above cut hold ~20 % of the object
        top = a.copy()
        top[cut:] = 0.0
        img = compose([*layers, (top, COLOURS[scene.objects[j].colour])], scene.image_size, scene.background)
        cases.append(("leak_object", img, {**base, "leakage": True}))
    # a blob (an ellipse that is none of the shapes, 5x9 px) of a prompt colour in a free place
    c = scene.objects[int(rng.integers(n))].colour
    occupied = np.zeros((scene.image_size,) * 2, bool)
    for o in scene.objects:
        r0, c0, r1, c1 = o.bbox
        occupied[max(r0 - 3, 0) : r1 + 3, max(c0 - 3, 0) : c1 + 3] = True
    free = [(r, q) for r in range(2, scene.image_size - 8) for q in range(2, scene.image_size - 12)
            if not occupied[r : r + 6, q : q + 10].any()]
    if free:
        r, q = free[int(rng.integers(len(free)))]
        blob = np.zeros_like(occupied, dtype=np.float32)
        rr, cc = ellipse(r + 2.5, q + 4.5, 2.6, 4.6, shape=blob.shape)
        blob[rr, cc] = 1.0
        cases.append(("leak_background", compose([*layers, (blob, COLOURS[c])], scene.image_size, scene.background),
                      {**base, "leakage": True}))
    return cases


def degrade(image: np.ndarray, blur: float = 0.0, noise: float = 0.0, rng: np.random.Generator | None = None
            ) -> np.ndarray:
    """Gaussian blur (σ in pixels) and Gaussian noise (σ in 0–255 units) — a stand-in for a decoder's output."""
    if not blur and not noise:
        return image
    from scipy.ndimage import gaussian_filter

    img = np.asarray(image, dtype=np.float32)
    if blur:
        img = gaussian_filter(img, sigma=(blur, blur, 0))
    if noise:
        img = img + (rng or np.random.default_rng(0)).normal(0.0, noise, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def vae_roundtrip(vae) -> Callable[[np.ndarray], np.ndarray]:
    """An image → image function that encodes and decodes with a diffusers ``AutoencoderKL`` (posterior mean)."""

    @torch.no_grad()
    def fn(image: np.ndarray) -> np.ndarray:
        p = next(vae.parameters())
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].to(p.device, p.dtype) / 127.5 - 1
        y = vae.decode(vae.encode(x).latent_dist.mean).sample[0].float().clamp(-1, 1)
        return ((y.permute(1, 2, 0).cpu().numpy() + 1) * 127.5).round().astype(np.uint8)

    return fn


def validate(n: int = 1000, seed: int = 0, split: str = "any", progress: bool = False, keep_failures: int = 20,
             blur: float = 0.0, noise: float = 0.0, image_fn: Callable[[np.ndarray], np.ndarray] | None = None
             ) -> ValidationReport:
    """Agreement of :func:`detect` and :func:`score` with the renderer's ground truth on ``n`` scenes.

    * **detection agreement** — share of images whose detections are exactly the ground-truth objects (each with
      the right colour and shape and box IoU ≥ 0.5, and no other detection); **object agreement** the same per object;
    * **scoring agreement** — share of the known-answer images of :func:`validation_cases` whose flags (success,
      misbinding, swapped, leakage, neglect) all equal the expected ones.

    ``blur``/``noise`` degrade every image first (:func:`degrade`) to measure robustness; ``image_fn`` (e.g.
    :func:`vae_roundtrip`) transforms every image before that.
    """

    report = ValidationReport()
    rng = np.random.default_rng([seed, 12345])
    for idx in tqdm(range(n), disable=not progress, desc="validate"):
        scene = scene_at(seed, idx, split)
        fn = image_fn or (lambda im: im)
        dets = detect(degrade(fn(render(scene)), blur, noise, rng))
        report.n_images += 1
        unmatched = list(range(len(dets)))
        ok_all = True
        for o in scene.objects:
            report.objects += 1
            hit = next((k for k in unmatched if _box_iou(dets[k].bbox, o.bbox) >= 0.5), None)
            ok = hit is not None and dets[hit].colour == o.colour and dets[hit].shape == o.shape
            if hit is not None:
                unmatched.remove(hit)
            report.objects_agree += ok
            ok_all &= ok
        ok_all &= not unmatched
        report.detection_agree += ok_all
        if not ok_all and len(report.failures) < keep_failures:
            report.failures.append({"index": idx, "caption": scene.caption, "kind": "detection",
                                    "detections": [(d.colour, d.shape, d.bbox, round(d.shape_iou, 3)) for d in dets]})
        for variant, image, want in validation_cases(scene, rng):
            got = score(degrade(fn(image), blur, noise, rng), scene.caption).flags()
            agreed = all(got[k] == v for k, v in want.items())
            a, t = report.cases.get(variant, [0, 0])
            report.cases[variant] = [a + agreed, t + 1]
            if not agreed and len(report.failures) < keep_failures:
                report.failures.append({"index": idx, "caption": scene.caption, "kind": variant, "got": got,
                                        "want": want})
    return report


# ------------------------------------------------------------------------------------------------ models
def generate_and_score(
    pipe,
    prompts: Sequence[str],
    seeds: Sequence[int],
    steps: int = 25,
    guidance: float = 5.0,
    batch: int = 16,
    progress: bool = False,
    desc: str = "generate",
) -> tuple[list[ImageResult], np.ndarray]:
    """Generate one image per (prompt, generator seed) with the plain pipeline and score it against its prompt.

    Returns the per-image results and the images ``(n, H, W, 3) uint8``.
    """

    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts for {len(seeds)} seeds")
    images = []
    # one bar over the batches, not the pipeline's own per-call bar too; the caller's pipeline is left as it was
    saved = dict(getattr(pipe, "_progress_bar_config", {}) or {})
    pipe.set_progress_bar_config(**{**saved, "disable": True})
    try:
        for s in tqdm(range(0, len(prompts), batch), disable=not progress, desc=desc):
            gens = [torch.Generator().manual_seed(int(x)) for x in seeds[s : s + batch]]
            out = pipe(list(prompts[s : s + batch]), num_inference_steps=steps, guidance_scale=guidance,
                       generator=gens, output_type="np").images
            images.append((np.clip(out, 0, 1) * 255).round().astype(np.uint8))
    finally:
        pipe._progress_bar_config = saved
    images_arr = np.concatenate(images)
    return [score(img, p) for img, p in zip(images_arr, prompts)], images_arr


def evaluate_pipeline(
    pipe,
    n: int = 64,
    split: str = "test",
    seed: int = 0,
    steps: int = 25,
    guidance: float = 5.0,
    batch: int = 16,
    progress: bool = False,
) -> tuple[list[ImageResult], np.ndarray]:
    """Generate one image for each of ``n`` captions of the renderer's ``split`` and score it from the prompt.

    Captions come from ``scene_at(seed, i, split)``; image *i* uses generator seed ``seed + i``. Returns the
    per-image results and the images ``(n, H, W, 3) uint8``.
    """

    prompts = [scene_at(seed, i, split).caption for i in range(n)]
    return generate_and_score(pipe, prompts, [seed + i for i in range(n)], steps, guidance, batch, progress)


def image_grid(images: np.ndarray, cols: int = 8) -> np.ndarray:
    """Tile ``(n, H, W, 3)`` images into one array, ``cols`` per row (the last row padded with black)."""
    rows = []
    for r in range(0, len(images), cols):
        chunk = list(images[r : r + cols])
        chunk += [np.zeros_like(images[0])] * (cols - len(chunk))
        rows.append(np.concatenate(chunk, axis=1))
    return np.concatenate(rows)


# ------------------------------------------------------------------------------------------------ CLI
# ``python -m attnlens.testbed.evaluate ARGS`` is ``attnlens testbed evaluate ARGS`` (``--help`` lists the options)
if __name__ == "__main__":
    from attnlens.cli import run_module

    run_module("evaluate", None)
