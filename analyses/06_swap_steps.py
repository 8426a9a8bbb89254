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
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _causal import Condition, bar_figure, heldout_scenes, paired_tables, parser, run_conditions, summary_table  # noqa: E402
from _common import markdown_table, write_figure  # noqa: E402


def swap_spec(extra: str):
    return lambda s: [f"swap {s.objects[0].colour} {s.objects[1].colour}{extra}"]


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
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    root = args.runs or out / "runs"
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    scenes = heldout_scenes(args.prompts)
    conds = conditions([int(k) for k in args.ks.split(",") if k.strip()], [g for g in args.groups.split(",") if g])
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    import pandas as pd

    frames = [run_conditions(m, scenes, seeds, conds, root / m, args.steps, args.guidance, log=log)
              for m in args.models.split(",") if m]
    outcomes = pd.concat(frames, ignore_index=True)
    outcomes.to_csv(out / "outcomes.csv", index=False)
    table = summary_table(outcomes, [c.label for c in conds])
    (out / "swap.md").write_text(markdown_table(table, ".3f"))
    files = paired_tables(outcomes, out, args.n_boot)
    files += write_figure(bar_figure(table, "swapped", "colour words' maps swapped: images whose colours swap"),
                          out, "swap")
    log(markdown_table(table, ".3f"))
    log(f"done in {(time.perf_counter() - t0) / 60:.1f} min: {out}")
    for f in files:
        print(f)


if __name__ == "__main__":
    main()
