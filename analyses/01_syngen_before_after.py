"""(1) SynGen on "a red apple and a green banana": maps before and after the intervention, per step.

At every guided step SynGen runs a separate forward on the current latent (phase ``guidance``: the maps *before*
the update), takes a gradient step, then the ordinary sampling forward (phase ``sample``: the maps *after*). The
figure shows, for one seed, both phases of the SynGen run and the unguided (``none``) run from the same seed:
rows = (phase, word), columns = steps. The table gives, per step and over all seeds, the binding metrics before
and after the update and for ``none`` (layer ``all``), and the paired SynGen − none comparison.

    python analyses/01_syngen_before_after.py --out out/analyses/01
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

PROMPT = "a red apple and a green banana"
METRICS = [("jsd", "bound"), ("jsd", "unbound"), ("leak_in", "modifier"), ("otsu_iou", "entities")]


def main() -> None:
    args = C.parser(__doc__, "01", steps=10, seeds="0,1").parse_args()
    t0, out, seeds, rec = C.setup(args)
    import attnlens
    from attnlens.compare import compare
    from attnlens.figures import maps_figure

    runs = {}
    for seed in seeds:
        runs[("none", seed)] = rec.run(PROMPT, seed, "none")
        runs[("syngen", seed)] = rec.run(PROMPT, seed, "syngen")
    df = C.analyse(rec.root, out, layers=["all"], metrics=sorted({m for m, _ in METRICS}))

    # table 1: per step, before (guidance) / after (sample) / none
    import pandas as pd

    keep = pd.Series(False, index=df.index)
    for m, r in METRICS:
        keep |= (df["metric"] == m) & (df["role"] == r)
    d = df[keep & (df["layer"] == "all") & (df["iteration"] == 0)].copy()
    d["column"] = d["method"].astype(str) + ":" + d["phase"].astype(str)
    d["column"] = d["column"].map({"syngen:guidance": "before", "syngen:sample": "after",
                                   "none:sample": "none"})
    d = d.dropna(subset=["column"])
    d["metric"] = d["metric"].astype(str) + " [" + d["role"].astype(str) + "]"
    per_unit = d.groupby(["metric", "step", "column", "prompt", "seed"], observed=True)["value"].mean()
    per_step = per_unit.groupby(["metric", "step", "column"], observed=True).mean().unstack("column")
    per_step = per_step.reindex(columns=["before", "after", "none"])
    out.mkdir(parents=True, exist_ok=True)
    per_step.to_csv(out / "before_after.csv", float_format="%.6g")
    (out / "before_after.md").write_text(
        f"# {PROMPT!r}: SynGen before / after the update, and none (layer all, mean over seeds {seeds})\n\n"
        + C.markdown_table(per_step))

    # table 2: paired SynGen − none on exactly the (metric, role) pairs above
    c = compare(df[keep], by="method", metrics=sorted({m for m, _ in METRICS}), n_boot=args.n_boot)
    paths = C.write_tables(c, out) + [out / "before_after.md", out / "before_after.csv"]

    seed = seeds[0]
    syn, none = attnlens.open_run(runs[("syngen", seed)]), attnlens.open_run(runs[("none", seed)])
    guided = syn.recorded_steps(phase="guidance")
    steps = [s for s in guided][:: max(1, len(guided) // 5)][:5] or syn.recorded_steps()[:5]
    fig = maps_figure([syn, syn, none], tokens=["red", "apple"], steps=steps, layer="res16",
                      phase=["guidance", "sample", "sample"],
                      labels=["SynGen before", "SynGen after", "none"], width="page")
    paths += C.write_figure(fig, out)
    C.done(out, paths, t0, rec)


if __name__ == "__main__":
    main()
