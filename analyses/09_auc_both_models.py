"""(9) Does the attention → binding AUC analysis of ``attnlens-shapes`` hold on ``attnlens-shapes-bow``?

For each model, every run of its protocol benchmarks (``attnlens bench calibrate`` on the validation prompts and
``attnlens bench binding --split test``, docs/testbed.md "The benchmark protocol") is analysed
(``attnlens.analysis``, sample phase) and every attention metric is scored by its ROC AUC for the evaluator's
per-run label at the point fixed before looking: the ``all`` layer aggregate at the last step
(:func:`attnlens.testbed.predictive.fixed_point`), over all runs and over the unguided (``none``) runs alone. The
table puts the models side by side; ``agree`` says whether both AUCs lie on the same side of 0.5. The intervals
resample (prompt, seed) units, not runs (``metric_auc(..., clusters=)``): the runs of one unit under different methods
are near copies, so DeLong's interval over runs would be too narrow (it is kept in the CSV as ``delong_low``/``_high``).

    python analyses/09_auc_both_models.py --model attnlens-shapes=out/protocol/shapes \\
        --model attnlens-shapes-bow=out/protocol/bow --out out/protocol/auc

Each ``NAME=DIR`` reads ``DIR/calibrate/outcomes.csv`` and ``DIR/test/outcomes.csv`` (those that exist); the maps
are read from the runs these tables name. Writes ``OUT/NAME/maps/*.parquet`` (the metrics of each run, reused by
a rerun), ``OUT/auc_fixed_models.{md,csv}`` and the figure ``OUT/auc_agreement.{pdf,png}`` (the first two models
against each other, one panel per label; SynGen's premise metrics labelled).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import pandas as pd

from attnlens.analysis import read_table, write_parquet
from attnlens.compare import fmt
from attnlens.testbed.predictive import auc_agreement_figure, fixed_point, metric_auc

LABELS = ("success", "bound")
#: the metrics of SynGen's two terms and of entity overlap, labelled on the figure
PREMISE = (("jsd", "unbound"), ("soft_iou", "bound"), ("soft_iou", "entities"))


def model_auc(name: str, folder: Path, out: Path, log) -> pd.DataFrame:
    """Fixed-point AUCs of one model's protocol runs: one row per (metric, role, label, runs)."""
    tables = [folder / sub / "outcomes.csv" for sub in ("calibrate", "test")]
    outcomes = pd.concat([pd.read_csv(t) for t in tables if t.exists()], ignore_index=True)
    outcomes = outcomes.drop_duplicates("run").reset_index(drop=True)
    runs = sorted(outcomes["run"])
    cache = out / name / "maps"  # one table per run, so a rerun analyses only the runs added since
    cache.mkdir(parents=True, exist_ok=True)
    parts = []
    for i, run in enumerate(runs):
        part = cache / f"{hashlib.sha256(str(Path(run).resolve()).encode()).hexdigest()[:16]}.parquet"
        if not part.exists():
            log(f"{name}: analysing run {i + 1}/{len(runs)}: {run}")
            write_parquet([run], part, phases=["sample"])
        parts.append(read_table(part))
    df = pd.concat(parts, ignore_index=True)
    df = df[df["run"].isin(runs)]
    # the fixed point only (layer `all`, trajectory metrics `latent`, last step): the unit bootstrap is per group
    df = df[df["layer"].isin(["all", "latent"])]
    df = df[df["step"] == df.groupby(["metric", "role"], observed=True)["step"].transform("max")]
    units = {r: f"{p}|{s}" for r, p, s in zip(outcomes["run"], outcomes["prompt"], outcomes["seed"])}
    none_runs = list(outcomes.loc[outcomes["variant"] == "none", "run"])
    frames = []
    for label in LABELS:
        for which, subset in (("all", None), ("none", none_runs)):
            o = outcomes if subset is None else outcomes[outcomes["run"].isin(subset)]
            if o[label].astype(bool).nunique() < 2:
                log(f"{name}: every {which} run has the same '{label}': no AUC")
                continue
            auc = metric_auc(df, outcomes, label=label, runs=subset, clusters=units)
            fx = fixed_point(auc).merge(auc[["metric", "role", "layer", "step", "delong_low", "delong_high",
                                             "n_clusters"]], on=["metric", "role", "layer", "step"])
            frames.append(fx.assign(model=name, label=label, runs=which, n=len(o)))
    return pd.concat(frames, ignore_index=True)


def side_by_side(t: pd.DataFrame, names: list[str]) -> str:
    """Markdown: one row per (metric, role), for each (label, runs) the models' AUCs [95 % unit-bootstrap interval]."""
    t = t.assign(cell=[f"{fmt(a)} [{fmt(lo)}, {fmt(hi)}]" for a, lo, hi in zip(t["auc"], t["low"], t["high"])])
    cols = [(lab, w) for lab in LABELS for w in ("all", "none") if ((t["label"] == lab) & (t["runs"] == w)).any()]
    head = ["metric [role]"]
    for lab, w in cols:
        for n in names:
            sub = t[(t["label"] == lab) & (t["runs"] == w) & (t["model"] == n)]
            counts = (f"{int(sub['n_pos'].iloc[0])}/{int(sub['n_neg'].iloc[0])} runs, {int(sub['n_clusters'].iloc[0])} units"
                      if len(sub) else "–")
            head.append(f"{n}: {lab}, {'all runs' if w == 'all' else 'unguided'} ({counts})")
        head.append("agree")
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---|" * (len(head) - 1)]
    first = t[t["model"] == names[0]]
    order = (first[(first["label"] == cols[0][0]) & (first["runs"] == cols[0][1])][["metric", "role"]]
             .drop_duplicates().itertuples(index=False)) if cols else []
    for metric, role in order:
        row = [f"{metric} [{role}]"]
        for lab, w in cols:
            aucs = []
            for n in names:
                sub = t[(t["metric"] == metric) & (t["role"] == role) & (t["label"] == lab) & (t["runs"] == w)
                        & (t["model"] == n)]
                row.append(sub["cell"].iloc[0] if len(sub) else "–")
                aucs.append(float(sub["auc"].iloc[0]) if len(sub) else float("nan"))
            known = [a for a in aucs if a == a]
            row.append("–" if len(known) < 2 else ("yes" if len({a > 0.5 for a in known}) == 1 else "no"))
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "AUC on all runs [95 % interval from resampling (prompt, seed) units, 2000 draws, seed 0]; counts: "
              "successes/failures among the runs, and the units they come from."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, help="NAME=DIR of a protocol run (repeatable)")
    p.add_argument("--out", type=Path, default=Path("out/protocol/auc"))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    pairs = [m.split("=", 1) for m in args.model]
    if any(len(x) != 2 for x in pairs):
        p.error("--model takes NAME=DIR, e.g. --model attnlens-shapes-bow=out/protocol/bow")
    t = pd.concat([model_auc(n, Path(d), args.out, log) for n, d in pairs], ignore_index=True)
    args.out.mkdir(parents=True, exist_ok=True)
    t.to_csv(args.out / "auc_fixed_models.csv", index=False)
    md = side_by_side(t, [n for n, _ in pairs])
    (args.out / "auc_fixed_models.md").write_text(md)
    if len(pairs) >= 2:
        from attnlens.figures import save_figure

        fig = auc_agreement_figure(t, pairs[0][0], pairs[1][0], highlight=PREMISE)
        for suffix in ("pdf", "png"):
            save_figure(fig, args.out / f"auc_agreement.{suffix}")
    print(md)


if __name__ == "__main__":
    main()
