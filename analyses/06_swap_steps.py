"""(6) Causal: swap the two colour words' attention maps over steps [0, k) — do the colours swap in the image?

On held-out two-object prompts of the shapes testbed (two different colours, two different shapes), each image is
sampled with the colour words' cross-attention columns exchanged (``swap COLOUR1 COLOUR2``, docs/interventions.md):
in every layer over steps [0, k) for several k, and over all steps in one resolution group at a time. The testbed
evaluator (``attnlens.testbed.evaluate``) scores every image: ``swapped`` (each object wears the other's colour) is the
headline; misbinding, bound, success and object accuracy beside it. Both models: ``attnlens-shapes`` (CLIP text
encoder: a colour's embedding may already carry its noun) and ``attnlens-shapes-bow`` (bag of words: binding can only
happen in cross-attention).

    python analyses/06_swap_steps.py --out out/analyses/06 --runs out/analyses/causal-runs

Writes OUT/outcomes.csv, OUT/swap.md (rates per model and condition), OUT/paired-MODEL.{md,csv,tex} (paired bootstrap
differences to none) and OUT/swap.{pdf,png}.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _causal import Condition, parser, run_experiment  # noqa: E402

from attnlens.testbed.scene_edits import edit_texts  # noqa: E402


def swap_spec(extra: str):
    return lambda s: edit_texts(f"swap-colours{extra}", s)


def conditions(ks: list[int], groups: list[str]) -> list[Condition]:
    out = [Condition("none", lambda s: [])]
    for k in ks:
        out.append(Condition(f"none + swap(colours; steps 0:{k})", swap_spec(f" steps=0:{k}")))
    out.append(Condition("none + swap(colours)", swap_spec("")))
    for g in groups:
        out.append(Condition(f"none + swap(colours; {g})", swap_spec(f" layers={g}")))
    return out


def main() -> None:
    p = parser(__doc__, "06")
    p.add_argument("--ks", default="2,5,12", help="steps k of the swaps over [0, k) (default 2,5,12; all steps too)")
    p.add_argument("--groups", default="res16,res8", help="resolution groups swapped over all steps (default res16,res8)")
    args = p.parse_args()
    conds = conditions([int(k) for k in args.ks.split(",") if k.strip()], [g for g in args.groups.split(",") if g])
    run_experiment(args, conds, "swap", "flipped",
                   "colour words' maps swapped: images whose colour binding flips (vs. the same seed unedited)")


if __name__ == "__main__":
    main()
