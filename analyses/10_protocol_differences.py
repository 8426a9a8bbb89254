"""(10) The protocol's test report as one figure: every variant's paired difference to ``none``, both models.

For each ``NAME=DIR`` (a protocol folder, docs/testbed.md "The benchmark protocol") the rows of
``DIR/test/binding.csv`` (the methods at their released and calibrated step sizes) and of
``DIR/test-mask/binding.csv`` (the ground-truth-box intervention, the upper bound of what attention can buy) are
drawn with :func:`attnlens.figures.differences_figure`: one panel per metric, one row per variant, one marker per
model, the bar the paired 95 % bootstrap interval over (prompt, seed) units.

    python analyses/10_protocol_differences.py --model attnlens-shapes-bow=out/protocol/bow \\
        --model attnlens-shapes=out/protocol/shapes --out out/protocol/differences

Writes ``OUT/differences.{pdf,png}`` and ``OUT/differences.csv`` (the rows drawn, with the model and its n).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from attnlens.figures import differences_figure, save_figure

METRICS = ("misbinding", "swapped", "bound", "object_accuracy")
PARTS = ("test", "test-mask")


def model_rows(folder: Path) -> pd.DataFrame:
    """The differences of one protocol folder: test variants, then the intervention rows (``none`` once)."""
    tables = [pd.read_csv(folder / part / "binding.csv") for part in PARTS if (folder / part / "binding.csv").exists()]
    if not tables:
        print(f"error: {folder} has no test/binding.csv: run `attnlens bench binding --split test "
              f"--out {folder}/test ...` first (docs/testbed.md)", file=sys.stderr)
        sys.exit(2)
    return pd.concat(tables, ignore_index=True).drop_duplicates(["metric", "role", "variant"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, help="NAME=DIR of a protocol run (repeatable)")
    p.add_argument("--metric", action="append", help=f"metric to draw (repeatable; default {', '.join(METRICS)})")
    p.add_argument("--out", type=Path, default=Path("out/protocol/differences"))
    args = p.parse_args()
    pairs = [m.split("=", 1) for m in args.model]
    if any(len(x) != 2 for x in pairs):
        p.error("--model takes NAME=DIR, e.g. --model attnlens-shapes-bow=out/protocol/bow")
    tables = {name: model_rows(Path(d)) for name, d in pairs}
    metrics = args.metric or [m for m in METRICS if any(m in set(t["metric"]) for t in tables.values())]
    variants = list(dict.fromkeys(v for t in tables.values() for v in t.loc[t["diff"].notna(), "variant"]))
    order = [v for v in variants if " + " not in v] + [v for v in variants if " + " in v]  # interventions last
    fig = differences_figure(tables, metrics, groups=order)
    args.out.mkdir(parents=True, exist_ok=True)
    for suffix in ("pdf", "png"):
        save_figure(fig, args.out / f"differences.{suffix}")
    rows = pd.concat([t[t["metric"].isin(metrics) & t["diff"].notna()].assign(model=n) for n, t in tables.items()])
    rows[["model", "metric", "variant", "n", "diff", "diff_low", "diff_high"]].to_csv(args.out / "differences.csv",
                                                                                      index=False)
    print(f"wrote {args.out / 'differences.pdf'} (and .png, .csv)", file=sys.stderr)


if __name__ == "__main__":
    main()
