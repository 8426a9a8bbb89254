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
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _causal import (  # noqa: E402
    Condition, bar_figure, fraction_box, heldout_scenes, paired_tables, parser, run_conditions, summary_table,
)
from _common import markdown_table, write_figure  # noqa: E402


def copy_specs(scene) -> list[str]:
    return [f"copy {o.shape} {o.colour}" for o in scene.objects]


def mask_specs(scene) -> list[str]:
    return [f"mask {o.colour} {o.shape} {fraction_box(o, scene.image_size)}" for o in scene.objects]


CONDITIONS = [
    Condition("none", lambda s: []),
    Condition("none + copy(noun→modifier)", copy_specs),
    Condition("none + mask(words→gt boxes)", mask_specs),
    Condition("none + copy(noun→modifier) + mask(words→gt boxes)", lambda s: copy_specs(s) + mask_specs(s)),
]


def main() -> None:
    args = parser(__doc__, "07").parse_args()
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    root = args.runs or out / "runs"
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    scenes = heldout_scenes(args.prompts)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    import pandas as pd

    frames = [run_conditions(m, scenes, seeds, CONDITIONS, root / m, args.steps, args.guidance, log=log)
              for m in args.models.split(",") if m]
    outcomes = pd.concat(frames, ignore_index=True)
    outcomes.to_csv(out / "outcomes.csv", index=False)
    table = summary_table(outcomes, [c.label for c in CONDITIONS])
    (out / "ideal.md").write_text(markdown_table(table, ".3f"))
    files = paired_tables(outcomes, out, args.n_boot)
    files += write_figure(bar_figure(table, "bound", "ideal attention: images with every object in its own colour"),
                          out, "ideal")
    log(markdown_table(table, ".3f"))
    log(f"done in {(time.perf_counter() - t0) / 60:.1f} min: {out}")
    for f in files:
        print(f)


if __name__ == "__main__":
    main()
