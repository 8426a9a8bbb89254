"""Attention edits written against a testbed scene: the causal conditions of docs/testbed.md as reusable names.

A held-out caption of the shapes testbed comes with its :class:`~attnlens.testbed.render.Scene` (the objects'
colours, shapes and ground-truth boxes). Three named edits turn a scene into intervention texts
(docs/interventions.md) for the unguided model:

* ``mask-gt``: each object's colour and shape words restricted to that object's ground-truth box
  (``mask COLOUR SHAPE box=r0,c0,r1,c1`` per object, fractions of the image) — attention exactly where each object
  should be, the upper bound of what an attention-guidance loss can buy (``analyses/07_ideal_attention.py``);
* ``copy-noun``: each object's shape map copied onto its colour word (``copy SHAPE COLOUR``), the state SynGen's
  positive term pulls towards;
* ``swap-colours``: the two colour words' maps exchanged (``swap COLOUR1 COLOUR2``, ``analyses/06_swap_steps.py``).

Options after the name (``steps=0:10``, ``layers=res8``, ``phases=sample``) are appended to every intervention the
edit makes. Any other text is an intervention of its own (``ablate and``), applied as written to every prompt.

    >>> from attnlens.testbed.scene_edits import edit_texts, scene_of
    >>> scene = scene_of("a green cross and a blue cross")
    >>> edit_texts("swap-colours steps=0:5", scene)
    ['swap green blue steps=0:5']
    >>> [t.split(" box=")[0] for t in edit_texts("mask-gt", scene)]
    ['mask green cross', 'mask blue cross']
"""

from __future__ import annotations

import functools
import shlex
from typing import Callable

from ..errors import BadOption
from ..interventions import parse_intervention
from .render import Scene, scene_at


def fraction_box(obj, image_size: int) -> str:
    """An object's ground-truth box as ``box=r0,c0,r1,c1`` in fractions of the image."""
    return "box=" + ",".join(f"{v / image_size:.4g}" for v in obj.bbox)


def mask_gt(scene: Scene) -> list[str]:
    return [f"mask {o.colour} {o.shape} {fraction_box(o, scene.image_size)}" for o in scene.objects]


def copy_noun(scene: Scene) -> list[str]:
    return [f"copy {o.shape} {o.colour}" for o in scene.objects]


def swap_colours(scene: Scene) -> list[str]:
    colours = list(dict.fromkeys(o.colour for o in scene.objects))
    if len(colours) != 2:
        raise BadOption(f"swap-colours needs two different colours; '{scene.caption}' has {len(colours)}",
                        hint="use prompts whose two objects differ in colour")
    return [f"swap {colours[0]} {colours[1]}"]


#: name → scene → intervention texts
EDITS: dict[str, Callable[[Scene], list[str]]] = {"mask-gt": mask_gt, "copy-noun": copy_noun,
                                                  "swap-colours": swap_colours}


def is_named(text: str) -> bool:
    """Whether ``text`` is a named edit (:data:`EDITS`), which needs the prompt's scene."""
    words = shlex.split(text)
    return bool(words) and words[0] in EDITS


def edit_texts(text: str, scene: Scene | None) -> list[str]:
    """The intervention texts of ``text`` on ``scene``: a named edit (:data:`EDITS`) with its options appended to
    each of its interventions, or ``text`` itself (no scene needed)."""
    words = shlex.split(text)
    if words and words[0] in EDITS:
        if scene is None:
            raise BadOption(f"'{words[0]}' needs the prompt's testbed scene")
        options = " ".join(words[1:])
        return [f"{t} {options}".rstrip() for t in EDITS[words[0]](scene)]
    return [text]


def check_edit(text: str) -> None:
    """Refuse, before anything runs, an edit that is neither a named one (with valid options) nor a valid
    intervention text (``BadOption``)."""
    words = shlex.split(text) if text.strip() else []
    if not words:
        raise BadOption("empty --intervene", hint="e.g. --intervene mask-gt, or --intervene 'swap red blue'")
    if words[0] in EDITS:
        bad = [w for w in words[1:] if w.partition("=")[0] not in ("steps", "layers", "phases")]
        if bad:
            raise BadOption(f"'{text}': {words[0]} takes only steps=, layers=, phases= options, not '{bad[0]}'",
                            hint=f"e.g. --intervene '{words[0]} steps=0:10 layers=res8'")
        parse_intervention("ablate x " + " ".join(words[1:]))  # the options' own checks
        return
    try:
        parse_intervention(text)
    except BadOption as exc:
        raise BadOption(f"{exc.message} (testbed edits: {', '.join(EDITS)})", hint=exc.hint) from None


@functools.lru_cache(maxsize=4096)
def scene_of(caption: str, seed: int = 0, limit: int = 20000) -> Scene:
    """The first scene of the renderer's ``test`` stream (seed ``seed``) with this caption: where the held-out
    captions of :func:`attnlens.testbed.bench.heldout_prompts` come from."""
    for i in range(limit):
        scene = scene_at(seed, i, "test")
        if scene.caption == caption:
            return scene
    raise BadOption(f"'{caption}' is not a held-out caption of the testbed's test stream",
                    hint="scene edits need testbed captions (attnlens bench binding chooses them)")


__all__ = ["EDITS", "check_edit", "edit_texts", "fraction_box", "is_named", "scene_of"]
