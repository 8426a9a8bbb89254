"""Sanity bars of a shapes model without guidance: does it draw one object right, and two objects at all?

Kinds of prompt (captions of the renderer's stream ``scene_at(seed, i, split, template)``, image *i* generated with
seed ``seed + i``):

* ``single (train)`` — one object, colour–shape pairs seen in training; the bar is ≥ 90 % success;
* ``single (held-out)`` — one object whose colour–shape pair never appeared in training;
* ``two (train)`` / ``two (held-out)`` — "a X and a Y" captions; how often both objects appear (1 − neglect), and
  how often the unguided model misbinds or leaks: the rates the guidance methods are meant to improve.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from ..models import load_pipeline
from .evaluate import aggregate, generate_and_score, image_grid
from .render import scene_at

KINDS = {
    "single (train)": ("train", "single"),
    "single (held-out)": ("test", "single"),
    "two (train)": ("train", "and"),
    "two (held-out)": ("test", "and"),
}


def run_sanity(model: str | Any, n: int = 64, steps: int = 25, guidance_scale: float = 7.5, seed: int = 0,
               save: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Score ``n`` unguided images per kind; returns ``{"model", "steps", "guidance_scale", "n", "kinds": {kind:
    aggregate rates + both_present}}``. ``save``: a PNG path; one grid per kind is written beside it."""

    pipe = load_pipeline(model) if isinstance(model, str) else model
    pipe.set_progress_bar_config(disable=True)
    report: dict[str, Any] = {"model": str(model if isinstance(model, str) else "pipeline"), "steps": steps,
                              "guidance_scale": guidance_scale, "n": n, "seed": seed, "kinds": {}}
    for kind, (split, template) in KINDS.items():
        prompts = [scene_at(seed, i, split, template=template).caption for i in range(n)]
        results, images = generate_and_score(pipe, prompts, [seed + i for i in range(n)], steps, guidance_scale,
                                             progress=progress, desc=kind)
        agg = aggregate(results)
        agg["both_present"] = sum(not r.neglect for r in results) / max(len(results), 1)
        report["kinds"][kind] = agg
        if save:

            path = Path(save)
            path.parent.mkdir(parents=True, exist_ok=True)
            slug = kind.replace(" ", "-").replace("(", "").replace(")", "")
            Image.fromarray(image_grid(images)).save(path.with_name(f"{path.stem}-{slug}{path.suffix or '.png'}"))
    return report
