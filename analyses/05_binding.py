"""(5) Ground-truth binding on the shapes testbed model: which method binds better, and does attention predict it?

Three steps, one command (all on the embedded ``attnlens-shapes`` model, see docs/testbed.md):

1. ``sanity``: the unguided model on single-object and two-object prompts (train and held-out pairs).
2. ``defaults``: ``attnlens bench binding`` with every method at its released defaults on ``--prompts`` held-out
   two-object prompts × ``--seeds``: binding table (success, misbinding, leakage, neglect, object accuracy, paired
   bootstrap intervals) and the AUC of every attention metric for per-run success (table + figure).
3. ``sweep``: the guided methods' step size × ``--sweep`` factors on the first ``--sweep-prompts`` of those prompts
   (the released-default runs are reused), with its own binding table.

    python analyses/05_binding.py --out out/analyses/05
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "out" / "analyses" / "05")
    p.add_argument("--model", default="attnlens-shapes")
    p.add_argument("--prompts", type=int, default=8, help="held-out prompts for the defaults (default 8)")
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds (default 0,1)")
    p.add_argument("--sweep", default="0.25,4", help="step-size factors (default 0.25,4)")
    p.add_argument("--sweep-prompts", type=int, default=4, help="prompts for the sweep (default 4)")
    p.add_argument("--sanity-n", type=int, default=100,
                   help="images per sanity kind (default 100; 0 skips the sanity step and keeps its old results)")
    p.add_argument("--n-steps", dest="steps", type=int, default=50, help="denoising steps (default 50)")
    p.add_argument("--guidance-scale", "--guidance", dest="guidance", type=float, default=7.5)
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from attnlens.testbed.bench import METHODS, run_binding_bench
    from attnlens.testbed.sanity import run_sanity

    t0 = time.perf_counter()
    out, runs = args.out, args.out / "runs"
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    sweep = [float(s) for s in args.sweep.split(",") if s.strip()]
    log = lambda s: print(s, file=sys.stderr)  # noqa: E731

    if args.sanity_n > 0:
        rep = run_sanity(args.model, n=args.sanity_n, steps=25, guidance_scale=args.guidance, seed=0,
                         save=out / "sanity" / "grid.png")
        (out / "sanity").mkdir(parents=True, exist_ok=True)
        (out / "sanity" / "sanity.json").write_text(json.dumps(rep, indent=2))
        lines = ["| prompts | success | object accuracy | both present | misbinding | leakage | neglect |",
                 "|---|---:|---:|---:|---:|---:|---:|"]
        for kind, r in rep["kinds"].items():
            lines.append(f"| {kind} | {r['success_rate']:.1%} | {r['object_accuracy']:.1%} | {r['both_present']:.1%} | "
                         f"{r['misbinding_rate']:.1%} | {r['leakage_rate']:.1%} | {r['neglect_rate']:.1%} |")
        (out / "sanity" / "sanity.md").write_text("\n".join(lines) + "\n")
        log("\n".join(lines))

    d = run_binding_bench(args.model, out / "defaults", prompts=args.prompts, seeds=seeds, methods=METHODS, sweep=[],
                          steps=args.steps, guidance_scale=args.guidance, n_boot=args.n_boot, runs_root=runs, log=log)
    log((out / "defaults" / "binding.md").read_text())
    if sweep and args.sweep_prompts > 0:
        s = run_binding_bench(args.model, out / "sweep", prompts=min(args.sweep_prompts, args.prompts), seeds=seeds,
                              methods=METHODS, sweep=sweep, steps=args.steps, guidance_scale=args.guidance,
                              n_boot=args.n_boot, runs_root=runs, analyse=False, log=log)
        log((out / "sweep" / "binding.md").read_text())
        log(f"sweep: {s.recorded} recorded, {s.reused} reused")
    log(f"done in {(time.perf_counter() - t0) / 60:.1f} min: {out}")


if __name__ == "__main__":
    main()
