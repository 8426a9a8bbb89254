"""(7) Causal: how much binding does perfect attention buy? An upper bound for attention-guidance losses.

On held-out two-object prompts of the shapes testbed, each image is sampled with the cross-attention made "ideal" in
one of two ways (docs/interventions.md), in every layer and at every step:

* ``copy``: each noun's map copied onto its modifier (``copy SHAPE COLOUR`` per object) — the state SynGen's positive
  term pulls towards (modifier and noun attend to the same pixels);
* ``mask``: each object's colour and shape words restricted to that object's ground-truth box from the renderer's
  ``Scene`` (``mask COLOUR SHAPE box=...`` per object) — attention that is exactly where the object should be;
* ``copy + mask``: both.

The testbed evaluator scores every image (bound, misbinding, swapped, success, object accuracy) against ``none``.
Both models: ``attnlens-shapes`` and ``attnlens-shapes-bow``.

    python analyses/07_ideal_attention.py --out out/analyses/07 --runs out/analyses/causal-runs

Writes OUT/outcomes.csv, OUT/ideal.md, OUT/paired-MODEL.{md,csv,tex} and OUT/ideal.{pdf,png}.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _causal import Condition, parser, run_experiment  # noqa: E402

from attnlens.testbed.scene_edits import copy_noun as copy_specs  # noqa: E402
from attnlens.testbed.scene_edits import mask_gt as mask_specs  # noqa: E402


CONDITIONS = [
    Condition("none", lambda s: []),
    Condition("none + copy(noun→modifier)", copy_specs),
    Condition("none + mask(words→gt boxes)", mask_specs),
    Condition("none + copy(noun→modifier) + mask(words→gt boxes)", lambda s: copy_specs(s) + mask_specs(s)),
]


def main() -> None:
    args = parser(__doc__, "07").parse_args()
    run_experiment(args, CONDITIONS, "ideal", "bound", "ideal attention: images with every object in its own colour")


if __name__ == "__main__":
    main()
