"""The shapes testbed: a procedural colour–shape world, a ground-truth evaluator and a small trainable SD.

* :mod:`attnlens.testbed.render` — seeded renderer (64×64, 1–3 objects), captions, held-out split, ground truth.
* :mod:`attnlens.testbed.evaluate` — detector + scorer (correct / misbinding / leakage / neglect), validation CLI.
* :mod:`attnlens.testbed.train` — trains an SD-shaped pipeline (VAE, UNet, CLIP text encoder) on the renderer.

See ``docs/testbed.md``.
"""

from __future__ import annotations

from .evaluate import Detection, ImageResult, ObjectResult, aggregate, detect, parse_caption, score, validate
from .render import (
    BACKGROUND,
    COLOURS,
    SHAPES,
    ObjectSpec,
    RenderedObject,
    Scene,
    caption_for,
    generate,
    is_held_out,
    held_out_pairs,
    render,
    render_batch,
    sample_scene,
    scene_at,
    train_pairs,
)

__all__ = [
    "Detection", "ImageResult", "ObjectResult", "aggregate", "detect", "parse_caption", "score", "validate",
    "BACKGROUND", "COLOURS", "SHAPES", "ObjectSpec", "RenderedObject", "Scene", "caption_for", "generate",
    "held_out_pairs", "is_held_out", "render", "render_batch", "sample_scene", "scene_at", "train_pairs",
]
