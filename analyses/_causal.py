"""Shared plumbing of the causal experiments (06_swap_steps, 07_ideal_attention): held-out two-object scenes of the
shapes testbed, runs recorded with interventions (complete runs reused), outcomes scored by the testbed evaluator,
the binding table per model and a bar figure.

Not a public API. Every run's manifest gets a prompt-independent ``label`` (``none + swap(colours; steps 0:5)``), so
``attnlens compare``/``analyze`` and the dashboard group the runs of one intervention across prompts.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
MODELS = ("attnlens-shapes", "attnlens-shapes-bow")
#: the outcome columns reported (evaluator flags; ``bound``: every object drawn, none in another's colour;
#: ``flipped``: the colour binding is the other one than in the same (prompt, seed) without intervention — bound
#: there and swapped here, or swapped there and bound here)
OUTCOMES = ("swapped", "flipped", "misbinding", "bound", "success", "object_accuracy")


@dataclass(frozen=True)
class Condition:
    """One experimental condition: a prompt-independent label and the interventions it applies to a scene."""

    label: str
    specs: Callable[[object], list[str]]  # Scene -> intervention texts (empty: no intervention)


def parser(description: str, out: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "out" / "analyses" / out, help="output folder")
    p.add_argument("--runs", type=Path, default=None,
                   help="runs root (default OUT/runs; 06 and 07 share their 'none' runs when given the same root)")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated models (default {','.join(MODELS)})")
    p.add_argument("--prompts", type=int, default=6, help="held-out two-object prompts (default 6)")
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds (default 0,1)")
    p.add_argument("--n-steps", dest="steps", type=int, default=25, help="denoising steps (default 25)")
    p.add_argument("--guidance-scale", dest="guidance", type=float, default=7.5)
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples for the tables")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    return p


def heldout_scenes(n: int, seed: int = 0, limit: int = 20000) -> list:
    """The first ``n`` distinct two-object scenes of the renderer's ``test`` split (``and`` / ``next to``, no size
    words) whose two objects differ in colour and in shape, so a colour swap is visible to the evaluator."""
    from attnlens.testbed.render import scene_at

    out, seen = [], set()
    for i in range(limit):
        s = scene_at(seed, i, "test")
        if len(s.objects) != 2 or s.template not in ("and", "next_to") or any(o.size_word for o in s.objects):
            continue
        a, b = s.objects
        if a.colour == b.colour or a.shape == b.shape or s.caption in seen:
            continue
        seen.add(s.caption)
        out.append(s)
        if len(out) == n:
            return out
    raise SystemExit(f"only {len(out)} suitable held-out scenes found")


def run_conditions(model: str, scenes: Sequence, seeds: Sequence[int], conditions: Sequence[Condition], root: Path,
                   steps: int, guidance: float, log=print):
    """Record (or reuse) every (condition, scene, seed) on ``model`` and score it; returns the outcome DataFrame."""
    import pandas as pd

    import attnlens
    from attnlens.sweep import reusable, run_name, run_path
    from attnlens.testbed.bench import score_run

    pipe = None
    rows, recorded, reused, t0 = [], 0, 0, time.perf_counter()
    total = len(conditions) * len(scenes) * len(seeds)
    for cond in conditions:
        for scene in scenes:
            specs = cond.specs(scene)
            for seed in seeds:
                path = run_path(root, scene.caption, run_name("none", label=cond.label), seed)
                settings = {"label": cond.label, "guidance_scale": guidance, "model_id": model}
                if not reusable(path, prompt=scene.caption, seed=seed, method="none", steps=steps, settings=settings):
                    if pipe is None:
                        pipe = attnlens.load_pipeline(model)
                    attnlens.sample(pipe, scene.caption, seed=seed, out=path, num_inference_steps=steps,
                                    guidance_scale=guidance, overwrite=True, interventions=specs or None,
                                    manifest={"label": cond.label, "model_id": model, "scene": scene.to_dict()})
                    recorded += 1
                else:
                    reused += 1
                row = score_run(path)
                row.update(model=model, condition=cond.label)
                rows.append(row)
                done = recorded + reused
                if recorded and done % 5 == 0:
                    el = time.perf_counter() - t0
                    log(f"  {model}: {done}/{total} runs ({recorded} recorded, {reused} reused), {el:.0f} s")
    log(f"{model}: {recorded} recorded, {reused} reused in {time.perf_counter() - t0:.0f} s")
    return pd.DataFrame(rows)


def add_flipped(outcomes):
    """``flipped`` per run: its colour binding is the opposite of the unedited run's (same model, prompt, seed)."""
    key = ["model", "prompt", "seed"]
    base = outcomes[outcomes["condition"] == "none"].set_index(key)[["swapped", "bound"]]
    b = base.reindex(outcomes.set_index(key).index)
    bs, bb = b["swapped"].fillna(False).to_numpy(bool), b["bound"].fillna(False).to_numpy(bool)
    s, bd = outcomes["swapped"].to_numpy(bool), outcomes["bound"].to_numpy(bool)
    return outcomes.assign(flipped=(bb & s) | (bs & bd & ~s))


def summary_table(outcomes, conditions: Sequence[str]):
    """Rates per (model, condition): n and the mean of every outcome."""
    df = outcomes.copy()
    for c in OUTCOMES:
        df[c] = df[c].astype(float)
    t = df.groupby(["model", "condition"], sort=False)[list(OUTCOMES)].mean()
    t.insert(0, "n", df.groupby(["model", "condition"], sort=False).size())
    order = {c: i for i, c in enumerate(conditions)}
    return t.sort_index(key=lambda ix: ix.map(lambda v: order.get(v, v) if isinstance(v, str) and v in order else v))


def paired_tables(outcomes, out: Path, n_boot: int, log=print) -> list[Path]:
    """Per model: the testbed's paired bootstrap comparison of every condition with ``none`` (Markdown/CSV/LaTeX)."""
    sys.path.insert(0, str(REPO / "analyses"))
    from _common import write_tables

    from attnlens.testbed.bench import binding_comparison

    paths = []
    for model, df in outcomes.groupby("model", sort=False):
        c = binding_comparison(df.assign(variant=df["condition"]), n_boot=n_boot)
        paths += write_tables(c, out, name=f"paired-{model}")
    return paths


def bar_figure(table, metric: str, title: str):
    """One panel per model: ``metric`` per condition as bars (a rate in [0, 1])."""
    from attnlens.figures import OKABE_ITO
    from attnlens.figures.style import _new_figure

    models = list(dict.fromkeys(table.index.get_level_values(0)))
    fig = _new_figure("page", 2.4 + 0.12 * len(table) / max(len(models), 1))
    axes = fig.subplots(1, len(models), sharey=True, squeeze=False)[0]
    for ax, model in zip(axes, models):
        sub = table.loc[model]
        ax.barh(range(len(sub)), sub[metric].values, color=OKABE_ITO[1])
        ax.set_yticks(range(len(sub)), [str(c) for c in sub.index], fontsize=6)
        if ax is axes[0]:  # the axes share y: invert once (first condition on top)
            ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel(f"{metric} (fraction of images)")
        ax.set_title(model, fontsize=8)
        for i, v in enumerate(sub[metric].values):
            ax.text(min(v + 0.02, 0.9), i, f"{v:.2f}", va="center", fontsize=6)
    fig.suptitle(title, fontsize=8)
    return fig


def run_experiment(args, conditions: Sequence[Condition], name: str, metric: str, title: str) -> None:
    """The whole of one experiment script after its arguments: record/reuse and score every (model, condition,
    scene, seed), then OUT/outcomes.csv, OUT/NAME.md (rates), OUT/paired-MODEL.* and the figure OUT/NAME.{pdf,png}
    of ``metric``; prints the files written."""
    import pandas as pd
    import torch

    sys.path.insert(0, str(REPO / "analyses"))
    from _common import markdown_table, write_figure

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    root = args.runs or out / "runs"
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    scenes = heldout_scenes(args.prompts)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    frames = [run_conditions(m, scenes, seeds, conditions, root / m, args.steps, args.guidance, log=log)
              for m in args.models.split(",") if m]
    outcomes = add_flipped(pd.concat(frames, ignore_index=True))
    outcomes.to_csv(out / "outcomes.csv", index=False)
    table = summary_table(outcomes, [c.label for c in conditions])
    shown = table.astype({"n": str})  # a count, not a rate
    (out / f"{name}.md").write_text(markdown_table(shown, ".3f"))
    files = paired_tables(outcomes, out, args.n_boot)
    files += write_figure(bar_figure(table, metric, title), out, name)
    log(markdown_table(shown, ".3f"))
    log(f"done in {(time.perf_counter() - t0) / 60:.1f} min: {out}")
    for f in files:
        print(f)
