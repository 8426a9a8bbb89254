"""The binding benchmark: guidance methods × held-out prompts × seeds on the shapes model, scored by the evaluator.

``attnlens bench binding`` (CLI) / :func:`run_binding_bench` (library):

1. **Prompts**: two-object captions of the renderer's ``test`` split (every one contains a colour–shape pair that
   never appeared in training), without size words, distinct, in stream order (:func:`heldout_prompts`).
2. **Variants**: every method at its released defaults, plus a step-size sweep (SynGen's ``step_size``, A&E's and
   D&B's ``scale_factor``, multiplied by each ``sweep`` factor), because a step size tuned on SD's latent scale need
   not suit this model (:func:`bench_variants`).
3. **Runs**: ``attnlens.sample`` records each (variant, prompt, seed) into ``OUT/runs`` (a complete run with the
   same settings is reused, so an interrupted benchmark resumes), and the evaluator scores its image
   (:func:`score_run`): one row per run in ``OUT/outcomes.csv``.
4. **Table**: success, misbinding, leakage, neglect and object accuracy per variant, with bootstrap intervals and
   paired differences to ``none`` over (prompt, seed) units (:func:`binding_comparison`, ``attnlens.compare``).
5. **Does attention predict binding?** The runs are analysed (``attnlens.analysis``) and every metric at every
   (layer, step) is scored by its ROC AUC for per-run success (:mod:`attnlens.testbed.predictive`): a table of the
   most predictive (layer, step) per metric and a figure of AUC against the step.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..analysis import read_table, variant_label, write_parquet
from ..compare import compare, fmt, latex_escape, to_csv, to_latex, to_markdown
from ..errors import AttnlensError
from ..figures import save_figure
from ..methods import available_methods, get_method
from ..models import load_pipeline
from ..sampler import sample
from ..store import open_run
from ..sweep import reusable, run_name, run_path
from .evaluate import parse_caption, score
from .predictive import auc_figure, best_predictors, fixed_point, metric_auc, small_n_note
from .protocol import check_split, split_of
from .render import scene_at
from .scene_edits import check_edit, edit_texts, is_named, scene_of

METHODS = ("none", "syngen", "syngen-entropy", "attend-excite", "divide-bind", "initno", "structured")
#: the hyperparameter each method calls its step size (released default 20 for all four)
STEP_PARAM = {"syngen": "step_size", "syngen-entropy": "step_size", "attend-excite": "scale_factor",
              "divide-bind": "scale_factor", "initno": "scale_factor"}  # structured: no step size
STEP_PARAM.update({"a-star": "scale_factor", "predicated": "scale_factor"})  # issue 17 (not in the default METHODS)
OUTCOMES = ("success", "bound", "misbinding", "swapped", "leakage", "neglect", "object_accuracy")
#: which way is better, for the tables
HIGHER_IS = {"success": "better", "bound": "better", "misbinding": "worse", "swapped": "worse", "leakage": "worse",
             "neglect": "worse", "object_accuracy": "better"}
#: (metric, role) pairs drawn in the AUC figure (they also head the AUC table)
AUC_FIGURE_PAIRS = (("jsd", "bound"), ("jsd", "unbound"), ("leak_in", "modifier"), ("leak_out", "modifier"),
                    ("otsu_iou", "entities"), ("neglect_peak", "noun"), ("normalized_entropy", "noun"),
                    ("tv_paper", "noun"))


@dataclass(frozen=True)
class Variant:
    """One configuration of the benchmark: a method and its hyperparameter overrides."""

    label: str
    method: str
    options: dict[str, Any] = field(default_factory=dict)
    sweep: bool = False  # part of the step-size sweep (not the released defaults)
    calibrated: bool = False  # the step size chosen on the validation split (``attnlens bench calibrate``)
    #: attention edits (``attnlens.testbed.scene_edits``: a named edit such as ``mask-gt`` or an intervention text),
    #: resolved per prompt against its scene; the unguided model with these edits is one variant
    edits: tuple[str, ...] = ()


def heldout_prompts(n: int, seed: int = 0, sizes: bool = False, limit: int = 20000, split: str = "all",
                    skip: int = 0) -> list[str]:
    """The first ``n`` distinct two-object captions (``and`` / ``next to``) of the renderer's ``test`` split
    (scenes ``scene_at(seed, i, "test")``, i = 0, 1, …) after the first ``skip``; without size words unless
    ``sizes``. ``split``: ``all``, or only the protocol's ``val`` or ``test`` captions
    (:func:`attnlens.testbed.protocol.split_of`). ``skip`` leaves out captions already used elsewhere (the protocol's
    test report skips the test captions that the pre-protocol benchmarks had seen)."""

    check_split(split)
    out: list[str] = []
    seen: set[str] = set()
    for i in range(limit):
        scene = scene_at(seed, i, "test")
        if len(scene.objects) != 2 or scene.template not in ("and", "next_to"):
            continue
        if not sizes and any(o.size_word for o in scene.objects):
            continue
        if scene.caption not in seen and (split == "all" or split_of(scene.caption) == split):
            seen.add(scene.caption)
            out.append(scene.caption)
            if len(out) == n + skip:
                return out[skip:]
    where = "" if split == "all" else f" in the '{split}' split"
    raise AttnlensError(f"only {len(out)} distinct held-out prompts found{where}",
                        hint="ask for fewer prompts" + (" or skip fewer" if skip else ""))


def _fmt_factor(x: float) -> str:
    return f"{x:g}"


def bench_variants(methods: Sequence[str] = METHODS, sweep: Sequence[float] = (0.25, 4.0),
                   overrides: dict[str, dict[str, Any]] | None = None,
                   calibrated: dict[str, float] | None = None,
                   interventions: Sequence[str] = ()) -> list[Variant]:
    """Released defaults for every method, then each method's calibrated step size (``calibrated``: method →
    factor, from ``attnlens bench calibrate``), then, for each guided method, its step size × every ``sweep`` factor,
    then the unguided model with each of ``interventions`` (label ``none + TEXT``; :mod:`.scene_edits`).

    ``overrides`` (method → options) applies to every variant of that method (e.g. a refinement cap).
    Labels: ``syngen`` (defaults), ``syngen step_size=5`` (sweep or calibrated: the same value is the same run)."""

    known = set(available_methods())
    bad = [m for m in methods if m not in known]
    if bad:
        raise AttnlensError(f"unknown method '{bad[0]}'", hint=f"choose from: {', '.join(sorted(known))}")
    overrides = overrides or {}
    out: dict[str, Variant] = {}

    def add(m: str, f: float, **kind) -> None:
        """The variant of ``m`` with its step size × ``f`` (the released defaults when f = 1 or ``m`` has no step
        size); a label already there (the same settings) is one variant with both flags."""
        param = STEP_PARAM.get(m)
        if param is None or float(f) == 1.0:
            label, options = m, dict(overrides.get(m, {}))
        else:
            value = float(get_method(m).hyperparameters()[param]) * float(f)
            label, options = f"{m} {param}={value:g}", {**overrides.get(m, {}), param: value}
        old = out.get(label)
        flags = {k: bool(kind.get(k)) or bool(old is not None and getattr(old, k)) for k in ("sweep", "calibrated")}
        out[label] = Variant(label, m, options, **flags)

    for m in methods:
        add(m, 1.0)
    for m, f in (calibrated or {}).items():
        if m in methods:
            add(m, f, calibrated=True)
    for m in methods:
        if STEP_PARAM.get(m) is not None:
            for f in sweep:
                if float(f) != 1.0:
                    add(m, f, sweep=True)
    for text in interventions:
        check_edit(text)
        label = f"none + {' '.join(text.split())}"
        out[label] = Variant(label, "none", {}, edits=(text,))
    return list(out.values())


def score_run(path: str | Path) -> dict[str, Any]:
    """Score a recorded run's image against its prompt: one outcome row (run, method, variant, prompt, seed, the
    evaluator's flags, object accuracy and per-object statuses)."""

    run = open_run(path)
    m = run.manifest
    img = run.image(0)
    if img is None:
        raise AttnlensError(f"run '{run.path}' has no image to score", hint="record it again (it is incomplete)")
    image = np.asarray(img.convert("RGB"))
    res = score(image, m["prompt"])
    return {
        "run": str(run.path), "method": (m.get("method") or {}).get("name"), "variant": variant_label(m),
        "prompt": m["prompt"], "seed": int(m["seed"]), **{k: bool(v) for k, v in res.flags().items()},
        "object_accuracy": res.n_correct / max(len(res.objects), 1),
        # binding alone: every prompt object drawn, none wearing another prompt object's colour (shape errors and
        # stray colour patches allowed) — defined even when full successes are rare
        "bound": not res.misbinding and not res.neglect,
        "objects": json.dumps([o.status for o in res.objects]),
    }


def existing_run(root: Path, variant: Variant, prompt: str, seed: int, *, steps: int,
                 guidance_scale: float) -> tuple[Path, bool]:
    """Where (variant, prompt, seed) is recorded under ``root``, and whether a complete run with the same settings is
    already there (``attnlens.sweep.reusable``)."""

    path = run_path(root, prompt, run_name(variant.method, label=variant.label), seed)
    return path, reusable(path, prompt=prompt, seed=seed, method=variant.method, steps=steps,
                          settings={"guidance_scale": guidance_scale, **_bench_settings(variant)})


def _bench_settings(variant: Variant) -> dict[str, Any]:
    """What a benchmark run's manifest records of its variant (and what its reuse compares)."""
    settings = {"bench_options": json.loads(json.dumps(variant.options)), "label": variant.label}
    if variant.edits:  # only then: runs recorded before edits existed stay reusable
        settings["bench_edits"] = list(variant.edits)
    return settings


def record_variant(pipe, root: Path, variant: Variant, prompt: str, seed: int, *, steps: int, guidance_scale: float,
                   model_id: str, rerecord: bool = False) -> tuple[Path, bool]:
    """Record one (variant, prompt, seed) unless a complete run with the same settings exists (``attnlens.sweep``).
    Returns (path, recorded)."""

    path, done = existing_run(root, variant, prompt, seed, steps=steps, guidance_scale=guidance_scale)
    if done and not rerecord:
        return path, False
    edits = [t for text in variant.edits
             for t in edit_texts(text, scene_of(prompt) if is_named(text) else None)] or None
    sample(pipe, prompt, method=variant.method, method_options=variant.options, seed=seed, out=path,
           num_inference_steps=steps, guidance_scale=guidance_scale, overwrite=True, interventions=edits,
           manifest={**_bench_settings(variant), "model_id": model_id, "bench": "binding"})
    return path, True


@dataclass
class BenchResult:
    """What :func:`run_binding_bench` produced."""

    out: Path
    outcomes: Any  # DataFrame, one row per run
    comparison: Any  # attnlens.compare.Comparison over the outcome metrics
    auc: Any | None = None  # DataFrame of every (metric, role, layer, phase, step) group
    best: Any | None = None  # DataFrame: the most predictive (layer, step) per metric
    label: str = "success"  # the outcome the AUCs predict (``bound`` when no run is a full success)
    files: list[Path] = field(default_factory=list)
    recorded: int = 0
    reused: int = 0
    seconds: float = 0.0


def outcome_rows(outcomes):
    """The outcome table in the long format of ``attnlens analyze`` (layer ``-``, role ``image``), so
    ``attnlens.compare.compare`` pairs it on (prompt, seed) like any metric."""
    import pandas as pd

    rows = []
    for k in OUTCOMES:
        part = outcomes[["run", "method", "variant", "prompt", "seed", k]].rename(columns={k: "value"})
        part = part.assign(metric=k, role="image", layer="-", phase="sample", step=-1, iteration=0, token="",
                           sample=0, timestep=math.nan, resolution="")
        part["value"] = part["value"].astype(float)
        rows.append(part)
    return pd.concat(rows, ignore_index=True)


def binding_comparison(outcomes, n_boot: int = 2000, ci: float = 0.95, baseline: str = "none"):
    """Mean and ``ci`` bootstrap interval of every outcome per variant, and the paired difference to ``baseline``,
    over (prompt, seed) units (``attnlens.compare.compare``)."""

    df = outcome_rows(outcomes)
    base = baseline if baseline in set(df["variant"]) else None
    c = compare(df, by="variant", baseline=base, metrics=list(OUTCOMES), n_boot=n_boot, ci=ci)
    c.table["higher_is"] = c.table["metric"].map(HIGHER_IS).fillna("n/a")
    return c


def _order_table(c, variants: Sequence[Variant]):
    order = {v.label: i for i, v in enumerate(variants)}
    c.groups = sorted(c.groups, key=lambda g: order.get(g, len(order)))
    c.table = c.table.assign(_o=c.table["group"].map(order).fillna(len(order)),
                             _m=c.table["metric"].map({m: i for i, m in enumerate(OUTCOMES)}))
    c.table = c.table.sort_values(["_m", "_o"]).drop(columns=["_o", "_m"]).reset_index(drop=True)
    return c


def _auc_tables(best, out: Path, name: str = "auc") -> list[Path]:

    cols = ["metric", "role", "layer", "step", "AUC [95% CI]", "direction", "AUC all, last step", "n+ / n−"]
    lines = []
    for _, r in best.iterrows():
        lines.append([r["metric"], r["role"], str(r["layer"]), str(int(r["step"])),
                      f"{fmt(r['auc'])} [{fmt(r['low'])}, {fmt(r['high'])}]", r["direction"],
                      fmt(r["auc_final_all"]), f"{int(r['n_pos'])} / {int(r['n_neg'])}"])
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(x) + " |" for x in lines]
    note = small_n_note(int(best["n_pos"].min()), int(best["n_neg"].min())) if len(best) else None
    if note:
        md += ["", note]
    tex = ["\\begin{tabular}{" + "l" * 4 + "r" + "l" + "rr" + "}", "\\toprule", " & ".join(cols) + " \\\\",
           "\\midrule"]
    tex += [" & ".join(latex_escape(x) for x in line) + " \\\\" for line in lines]
    tex += ["\\bottomrule", "\\end{tabular}"]
    paths = [out / f"{name}.{s}" for s in ("md", "tex", "csv")]
    paths[0].write_text("\n".join(md) + "\n")
    paths[1].write_text("\n".join(tex) + "\n")
    best.to_csv(paths[2], index=False)
    return paths


def _fixed_tables(tables: Sequence[tuple[str, Any, Any]], out: Path) -> list[Path]:
    """``auc_fixed.{md,csv}``: every metric's AUC at the pre-fixed point (all layers, last step), over every run and
    over the unguided runs alone, for each ``(label, fixed, fixed_unguided)`` of ``tables`` (``fixed_unguided`` may
    be None)."""
    import pandas as pd


    def ci(r) -> str:
        return f"{fmt(r['auc'])} [{fmt(r['low'])}, {fmt(r['high'])}]"

    def counts(t) -> str:
        return f"{int(t['n_pos'].iloc[0])} / {int(t['n_neg'].iloc[0])}" if t is not None and len(t) else "–"

    lines, frames = [], []
    for label, fixed, fixed_none in tables:
        none = {} if fixed_none is None else {(r["metric"], r["role"]): r for _, r in fixed_none.iterrows()}
        lines += [f"### AUC for `{label}`", "",
                  "| metric | role | AUC, all runs [95% CI] | AUC, unguided runs [95% CI] | direction |",
                  "|---|---|---|---|---|"]
        for _, r in fixed.iterrows():
            u = none.get((r["metric"], r["role"]))
            lines.append(f"| {r['metric']} | {r['role']} | {ci(r)} | {'' if u is None else ci(u)} | {r['direction']} |")
        lines += ["", f"Layer aggregate `all` (trajectory metrics: `latent`), last step; positives / negatives: all runs "
                      f"{counts(fixed)}, unguided runs {counts(fixed_none)}. DeLong 95% intervals. AUC > 0.5: higher "
                      "values go with the label (direction `higher`); < 0.5: lower values do.", ""]
        for t in (fixed, fixed_none):
            note = small_n_note(int(t["n_pos"].min()), int(t["n_neg"].min())) if t is not None and len(t) else None
            if note:
                lines += [note, ""]
                break
        merged = fixed if fixed_none is None else fixed.merge(
            fixed_none[["metric", "role", "auc", "low", "high", "n_pos", "n_neg"]], on=["metric", "role"], how="left",
            suffixes=("", "_unguided"))
        frames.append(merged.assign(label=label))
    md, csv = out / "auc_fixed.md", out / "auc_fixed.csv"
    md.write_text("\n".join(lines))
    pd.concat(frames, ignore_index=True).to_csv(csv, index=False)
    return [md, csv]


def run_binding_bench(
    model: str | Any,
    out: str | Path,
    *,
    prompts: int | Sequence[str] = 12,
    seeds: Sequence[int] = (0, 1, 2),
    methods: Sequence[str] = METHODS,
    sweep: Sequence[float] = (0.25, 4.0),
    steps: int = 50,
    guidance_scale: float = 7.5,
    overrides: dict[str, dict[str, Any]] | None = None,
    analyse: bool = True,
    n_boot: int = 2000,
    rerecord: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    runs_root: str | Path | None = None,
    split: str = "all",
    calibrated: dict[str, float] | None = None,
    skip_prompts: int = 0,
    interventions: Sequence[str] = (),
) -> BenchResult:
    """Run the binding benchmark into ``out`` (see the module docstring); resumable.

    ``model`` is anything :func:`attnlens.load_pipeline` takes (default in the CLI: the embedded shapes model).
    Prompts must be testbed captions (the evaluator parses them): an int takes that many :func:`heldout_prompts`.
    ``runs_root`` (default ``out/runs``) lets several benchmarks share their recorded runs (e.g. one with the
    released defaults on many prompts and a step-size sweep on a subset). ``split``: which held-out prompts an int
    ``prompts`` takes (``all``, ``val``, ``test``: :mod:`attnlens.testbed.protocol`); ``calibrated`` (method →
    step-size factor, :func:`attnlens.testbed.protocol.read_calibration`) adds each method at its calibrated value;
    ``skip_prompts``: an int ``prompts`` starts after that many prompts of the split. ``interventions`` adds the
    unguided model with each attention edit as a variant (``mask-gt``, ``copy-noun``, ``swap-colours`` with
    options, or an intervention text: :mod:`attnlens.testbed.scene_edits`), e.g. the ground-truth-box upper bound.
    """
    import pandas as pd


    t0 = time.perf_counter()
    log = log or (lambda s: print(s, file=sys.stderr))
    out = Path(out)
    root = Path(runs_root) if runs_root is not None else out / "runs"
    prompt_list = heldout_prompts(prompts, split=split, skip=skip_prompts) if isinstance(prompts, int) else list(prompts)
    for p in prompt_list:
        try:
            parse_caption(p)
        except ValueError as exc:
            raise AttnlensError(f"the evaluator cannot score the prompt '{p}': {exc}",
                                hint="use testbed captions like 'a red circle and a blue square'") from None
    seeds = [int(s) for s in seeds]
    if not prompt_list or not seeds:
        raise AttnlensError("nothing to run: no prompts or no seeds")
    variants = bench_variants(methods, sweep, overrides, calibrated, interventions)
    if any(is_named(t) for v in variants for t in v.edits):
        for p in prompt_list:  # every prompt needs its scene (the boxes, the colours) before anything is recorded
            scene_of(p)
    model_id = model if isinstance(model, str) else getattr(getattr(model, "config", None), "_name_or_path", "pipe")
    pipe = load_pipeline(model) if isinstance(model, str) else model
    jobs = [(v, p, s) for p in prompt_list for s in seeds for v in variants]
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps({
        "model": str(model_id), "split": split if isinstance(prompts, int) else "given",
        "skip_prompts": skip_prompts if isinstance(prompts, int) else 0, "prompts": prompt_list,
        "seeds": seeds, "steps": steps, "calibrated": dict(calibrated or {}),
        "guidance_scale": guidance_scale, "variants": [vars(v) for v in variants]}, indent=2, default=str))
    rows, recorded, reused = [], 0, 0
    # the bar counts the runs still to record, so its rate and ETA are those of sampling (reused runs cost nothing)
    todo = len(jobs) if rerecord else sum(not existing_run(root, v, p, s, steps=steps,
                                                           guidance_scale=guidance_scale)[1] for v, p, s in jobs)
    bar = tqdm(total=todo, desc=f"binding bench ({len(jobs) - todo} of {len(jobs)} runs reused)", unit="run",
               disable=not progress, file=sys.stderr)
    for v, p, s in jobs:
        bar.set_postfix_str(f"{v.label} | {p} | seed {s}", refresh=False)
        path, fresh = record_variant(pipe, root, v, p, s, steps=steps, guidance_scale=guidance_scale,
                                     model_id=str(model_id), rerecord=rerecord)
        recorded += fresh
        reused += not fresh
        bar.update(int(fresh))
        rows.append({**score_run(path), "variant": v.label, "sweep": v.sweep, "calibrated": v.calibrated})
    bar.close()
    outcomes = pd.DataFrame(rows)
    files = [out / "outcomes.csv"]
    outcomes.to_csv(files[0], index=False)
    c = _order_table(binding_comparison(outcomes, n_boot=n_boot), variants)
    for suffix, text in (("md", to_markdown(c)), ("csv", to_csv(c)), ("tex", to_latex(c))):
        files.append(out / f"binding.{suffix}")
        files[-1].write_text(text)
    result = BenchResult(out=out, outcomes=outcomes, comparison=c, recorded=recorded, reused=reused)
    if analyse:

        log("analysing the runs ...")
        runs = sorted({r["run"] for r in rows})
        write_parquet(runs, out / "metrics.parquet", phases=["sample"])
        df = read_table(out / "metrics.parquet")
        df = df[df["run"].isin(runs)]
        label = "success" if outcomes["success"].nunique() == 2 else "bound"
        if label == "bound":
            log("every run has the same success outcome: the AUC is computed for 'bound' (no misbinding, no neglect)")
        if outcomes[label].nunique() < 2:
            log(f"every run has the same '{label}' outcome: the AUC is undefined, no AUC table")
        else:
            auc = metric_auc(df, outcomes, label=label)
            auc.to_parquet(out / "auc.parquet", index=False)
            best = best_predictors(auc)
            files += [out / "auc.parquet", *_auc_tables(best, out)]
            auc.to_csv(out / "auc_all.csv", index=False)
            files.append(out / "auc_all.csv")
            none_runs = list(outcomes.loc[outcomes["variant"] == "none", "run"])
            fixed = []
            for lab in dict.fromkeys([label, "bound"]):  # the table's label first, then `bound` (colours on the right objects)
                if outcomes[lab].nunique() < 2:
                    continue
                auc_lab = auc if lab == label else metric_auc(df, outcomes, label=lab)
                fixed_none = None
                if none_runs and outcomes.loc[outcomes["run"].isin(none_runs), lab].nunique() == 2:
                    # the unguided model alone: no method in the comparison, so no method confounds metric and outcome
                    auc_none = metric_auc(df, outcomes, label=lab, runs=none_runs)
                    if lab == label:
                        files += _auc_tables(best_predictors(auc_none), out, name="auc_none")
                    fixed_none = fixed_point(auc_none)
                fixed.append((lab, fixed_point(auc_lab), fixed_none))
            files += _fixed_tables(fixed, out)
            pairs = [p for p in AUC_FIGURE_PAIRS
                     if ((auc["metric"] == p[0]) & (auc["role"] == p[1])).any()]
            fig = auc_figure(auc, pairs, label=label,
                             title=f"{len(runs)} runs, {int(outcomes[label].sum())} with '{label}'")
            files += [save_figure(fig, out / f"auc.{s}") for s in ("pdf", "png")]
            result.auc, result.best, result.label = auc, best, label
    result.files, result.seconds = files, time.perf_counter() - t0
    return result


__all__ = ["AUC_FIGURE_PAIRS", "BenchResult", "METHODS", "OUTCOMES", "Variant", "bench_variants",
           "binding_comparison", "existing_run", "heldout_prompts", "outcome_rows", "record_variant", "run_binding_bench",
           "score_run"]
