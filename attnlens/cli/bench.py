"""``attnlens bench binding`` and ``attnlens bench sanity``: ground-truth binding on the shapes testbed model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import BadOption
from ._app import app
from ._output import FORMAT, JSON, console, err_console, report, resolve_format, show_progress

bench_app = typer.Typer(
    name="bench",
    help="Benchmarks with a ground truth: the shapes testbed model scored by its evaluator (docs/testbed.md).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(bench_app, name="bench")

BINDING_EXAMPLES = """
Examples:

  attnlens bench binding --out out/bench-binding

  attnlens bench binding --prompts 24 --seeds 0,1,2,3 --out out/bench-binding

  attnlens bench binding --method none --method syngen --sweep 0.25,4 --n-steps 50

  attnlens bench binding --sweep "" --no-analyse          # released defaults only, no AUC

  attnlens bench binding --model attnlens-shapes-bow --intervene mask-gt --sweep ""   # + the ground-truth upper bound

Writes OUT/runs (one recorded run per variant, prompt and seed; complete runs are reused, so an interrupted
benchmark resumes), OUT/outcomes.csv (the evaluator's verdict per run), OUT/binding.{md,csv,tex} (success,
misbinding, leakage, neglect, object accuracy per variant with 95 % paired bootstrap intervals and differences to
none) and, unless --no-analyse, OUT/metrics.parquet, OUT/auc.{md,csv,tex,pdf,png}: how well each attention metric
at each layer and step predicts per-run success (ROC AUC, DeLong interval; auc_none.* on the unguided runs only;
auc_fixed.{md,csv} at the point fixed in advance: all layers, last step).
Prompts are two-object captions of the held-out split (colour-shape pairs never seen in training).
On a terminal a progress bar on stderr counts the runs still to record, with an ETA (none with --format json).
"""

SANITY_EXAMPLES = """
Examples:

  attnlens bench sanity

  attnlens bench sanity --n 200 --save out/sanity.png

  attnlens bench sanity --n 16 --format json | jq .kinds

Generates one image per caption of the renderer's stream (generator seed = caption index) without guidance and
scores it: single-object prompts (train split) should be drawn right at least 90 % of the time; two-object prompts
(train and held-out test split) show how often the unguided model binds, misbinds, leaks and neglects.
"""


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise BadOption(f"cannot read '{text}' as comma-separated numbers", hint="e.g. --sweep 0.25,4") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise BadOption(f"cannot read '{text}' as comma-separated integers", hint="e.g. --seeds 0,1,2") from None


CALIBRATE_EXAMPLES = """
Examples:

  attnlens bench calibrate --model attnlens-shapes-bow --method syngen --out out/calibrate

  attnlens bench calibrate --method syngen --method attend-excite --factors 0.25,1,4,16,64 --prompts 24 --seeds 0,1

  attnlens bench binding --split test --calibration out/calibrate/calibration.json --method none --method syngen

Runs each method with its step size (SynGen's step_size, A&E's and D&B's scale_factor) x every factor on the
validation prompts (a fixed quarter of the held-out captions; the test split is never touched), scores every image,
and picks the factor with the highest --objective (default bound), then success, then the factor closest to 1.
Writes OUT/calibration.json (the choice, for bench binding --calibration) and OUT/calibration.md; complete runs
are reused, so an interrupted calibration resumes.
"""

POWER_EXAMPLES = """
Examples:

  attnlens bench power --delta 0.1 --discordant 0.25

  attnlens bench power --delta 0.1 --pilot out/bench-binding/outcomes.csv --metric misbinding --variant syngen

Units (prompt, seed) needed to detect a paired difference DELTA in a binary outcome with a two-sided McNemar test
(Connor 1987): n = (z(1-alpha/2) sqrt(psi) + z(power) sqrt(psi - delta^2))^2 / delta^2, where psi is the chance
that the two variants disagree on a unit: assumed (--discordant) or measured on a pilot outcomes table.
"""


def _model_default() -> str:
    from ..models import DEFAULT_MODEL

    return DEFAULT_MODEL


@bench_app.command("binding", epilog=BINDING_EXAMPLES)
def binding(
    out: Path = typer.Option(Path("out/bench-binding"), "--out", "-o", help="Output folder (runs, tables, figures)."),
    model: Optional[str] = typer.Option(None, "--model", help="Shapes model: embedded default or a pipeline folder."),
    prompts: int = typer.Option(12, "--prompts", help="How many held-out two-object prompts."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Comma-separated seeds."),
    method: list[str] = typer.Option([], "--method", help="Method (repeatable): none, syngen, syngen-entropy, attend-excite, divide-bind, initno, structured (the default set), or conform, ebama, a-star, predicated, a user loss."),
    sweep: str = typer.Option("0.25,4", "--sweep", help="Step-size factors for the sweep (\"\" for none)."),
    n_steps: int = typer.Option(50, "--n-steps", help="Denoising steps (the methods' schedules assume 50)."),
    guidance: float = typer.Option(7.5, "--guidance-scale", "--guidance",
                                   help="Classifier-free guidance scale (--guidance is an alias)."),
    refinement: Optional[int] = typer.Option(None, "--refinement", help="Cap A&E / D&B refinement passes per "
                                                                        "threshold step (default: released)."),
    analyse: bool = typer.Option(True, "--analyse/--no-analyse", help="Analyse the maps and compute the AUCs."),
    n_boot: int = typer.Option(2000, "--n-boot", help="Bootstrap resamples."),
    rerecord: bool = typer.Option(False, "--rerecord", help="Record again even when a complete run exists."),
    threads: int = typer.Option(0, "--threads", help="torch threads (0: torch's default)."),
    runs: Optional[Path] = typer.Option(None, "--runs", help="Where runs are recorded (default OUT/runs); share it "
                                                             "between benchmarks to reuse runs."),
    split: str = typer.Option("all", "--split", help="Held-out prompts: all, val (for choosing step sizes) or test "
                                                    "(for reporting); docs/testbed.md."),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="calibration.json from `attnlens bench "
                                               "calibrate`: adds each method at its calibrated step size."),
    skip_prompts: int = typer.Option(0, "--skip-prompts", help="Start after this many prompts of the split (leave out "
                                                               "prompts already used, e.g. by a pilot)."),
    intervene: list[str] = typer.Option([], "--intervene", help="Add the unguided model with these attention edits "
                                        "as a variant (repeatable): mask-gt (each object's words restricted to its "
                                        "ground-truth box: the upper bound), copy-noun, swap-colours, optionally "
                                        "with steps=/layers=/phases=, or any `record --intervene` text."),
    fmt: str = FORMAT,
    as_json: bool = JSON,
) -> None:
    """Methods x held-out prompts x seeds on the shapes model, scored against the ground truth."""
    import torch

    from ..compare import to_rich
    from ..testbed.bench import METHODS, run_binding_bench
    from ..testbed.protocol import check_split, read_calibration
    from ..testbed.scene_edits import check_edit

    fmt = resolve_format(fmt, as_json)
    check_split(split)
    calibrated = read_calibration(calibration) if calibration is not None else None
    if prompts < 1:
        raise BadOption("--prompts must be at least 1", hint="e.g. --prompts 12")
    if n_steps < 1:
        raise BadOption("--n-steps must be at least 1", hint="e.g. --n-steps 50")
    if skip_prompts < 0:
        raise BadOption("--skip-prompts cannot be negative", hint="e.g. --skip-prompts 8")
    for text in intervene:
        check_edit(text)
    if threads > 0:
        torch.set_num_threads(threads)
    overrides = {}
    if refinement is not None:
        overrides = {"attend-excite": {"max_refinement_steps": refinement},
                     "divide-bind": {"max_refinement_steps": refinement,
                                     "max_refinement_steps_init_step": refinement}}
    from ._app import quiet_model_loading

    with quiet_model_loading():
        res = run_binding_bench(model or _model_default(), out, prompts=prompts, seeds=_ints(seeds),
                                methods=method or METHODS, sweep=_floats(sweep), steps=n_steps,
                                guidance_scale=guidance, overrides=overrides, analyse=analyse, n_boot=n_boot,
                                rerecord=rerecord, runs_root=runs, split=split, calibrated=calibrated,
                                skip_prompts=skip_prompts, interventions=intervene, progress=show_progress(fmt),
                                log=lambda s: err_console.print(s, markup=False, highlight=False))
    if fmt == "json":
        report(fmt, {"out": str(res.out), "recorded": res.recorded, "reused": res.reused,
                     "binding": res.comparison.table.to_dict(orient="records"),
                     "auc_best": None if res.best is None else res.best.to_dict(orient="records")})
        return
    report(fmt, None, to_rich(res.comparison))
    if res.best is not None:
        console.print(f"\nattention metrics that best predict '{res.label}' (post hoc best layer/step; "
                      "'AUC all, last step' is the pre-registered point):", markup=False)
        console.print((res.out / "auc.md").read_text(), markup=False, highlight=False)
    err_console.print(f"{res.recorded} run(s) recorded, {res.reused} reused, {res.seconds:.0f} s; "
                      f"files in {res.out}", markup=False)


@bench_app.command("sanity", epilog=SANITY_EXAMPLES)
def sanity(
    model: Optional[str] = typer.Option(None, "--model", help="Shapes model: embedded default or a pipeline folder."),
    n: int = typer.Option(64, "--n", help="Images per prompt kind."),
    n_steps: int = typer.Option(25, "--n-steps", help="Denoising steps."),
    guidance: float = typer.Option(7.5, "--guidance-scale", "--guidance",
                                   help="Classifier-free guidance scale (--guidance is an alias)."),
    seed: int = typer.Option(0, "--seed", help="Caption stream seed (image i uses generator seed seed + i)."),
    save: Optional[Path] = typer.Option(None, "--save", help="Save the images as PNG grids (one per kind)."),
    fmt: str = FORMAT,
    as_json: bool = JSON,
) -> None:
    """Single- and two-object accuracy of the unguided shapes model."""
    from ..testbed.sanity import run_sanity

    fmt = resolve_format(fmt, as_json)
    if n < 1:
        raise BadOption("--n must be at least 1", hint="e.g. --n 64")
    if n_steps < 1:
        raise BadOption("--n-steps must be at least 1", hint="e.g. --n-steps 25")
    from ._app import quiet_model_loading

    with quiet_model_loading():
        result = run_sanity(model or _model_default(), n=n, steps=n_steps, guidance_scale=guidance, seed=seed,
                            save=save)
    if fmt == "json":
        report(fmt, result)
        return
    from rich.table import Table

    t = Table(title=f"unguided {result['model']} ({n_steps} steps, guidance {guidance}, n={n} per kind)")
    for c in ("prompts", "success", "object accuracy", "misbinding", "leakage", "neglect", "extra"):
        t.add_column(c, justify="left" if c == "prompts" else "right")
    for kind, r in result["kinds"].items():
        t.add_row(kind, *(f"{r[k]:.1%}" for k in ("success_rate", "object_accuracy", "misbinding_rate",
                                                   "leakage_rate", "neglect_rate", "extra_rate")))
    report(fmt, result, t)
    err_console.print(json.dumps({k: round(v["success_rate"], 4) for k, v in result["kinds"].items()}), markup=False)


@bench_app.command("calibrate", epilog=CALIBRATE_EXAMPLES)
def calibrate(
    out: Path = typer.Option(Path("out/bench-calibrate"), "--out", "-o", help="Output folder (runs, calibration.json)."),
    model: Optional[str] = typer.Option(None, "--model", help="Shapes model: embedded default or a pipeline folder."),
    method: list[str] = typer.Option([], "--method", help="Method to calibrate (repeatable). Default: syngen."),
    factors: str = typer.Option("0.25,1,4,16", "--factors", help="Step-size factors to try (× the released value)."),
    prompts: int = typer.Option(24, "--prompts", help="How many validation prompts."),
    seeds: str = typer.Option("0,1", "--seeds", help="Comma-separated seeds."),
    n_steps: int = typer.Option(50, "--n-steps", help="Denoising steps (the methods' schedules assume 50)."),
    guidance: float = typer.Option(7.5, "--guidance-scale", "--guidance", help="Classifier-free guidance scale."),
    objective: str = typer.Option("bound", "--objective", help="Outcome to maximise: bound, success, object_accuracy."),
    threads: int = typer.Option(0, "--threads", help="torch threads (0: torch's default)."),
    runs: Optional[Path] = typer.Option(None, "--runs", help="Where runs are recorded (default OUT/runs)."),
    fmt: str = FORMAT,
    as_json: bool = JSON,
) -> None:
    """Choose each method's step size on the validation prompts (the test split stays untouched)."""
    import torch

    from ..testbed.calibrate import run_calibration

    fmt = resolve_format(fmt, as_json)
    if prompts < 1:
        raise BadOption("--prompts must be at least 1", hint="e.g. --prompts 24")
    if n_steps < 1:
        raise BadOption("--n-steps must be at least 1", hint="e.g. --n-steps 50")
    if objective in ("misbinding", "swapped", "leakage", "neglect"):
        raise BadOption(f"--objective {objective} is an outcome to minimise", hint="maximise bound (= no misbinding "
                        "and no neglect), success or object_accuracy")
    if threads > 0:
        torch.set_num_threads(threads)
    from ._app import quiet_model_loading

    with quiet_model_loading():
        doc = run_calibration(model or _model_default(), out, methods=method or ["syngen"], factors=_floats(factors),
                              prompts=prompts, seeds=_ints(seeds), steps=n_steps, guidance_scale=guidance,
                              objective=objective, runs_root=runs, progress=show_progress(fmt),
                              log=lambda s: err_console.print(s, markup=False, highlight=False))
    if fmt == "json":
        report(fmt, doc)
        return
    console.print((out / "calibration.md").read_text(), markup=False, highlight=False)
    picks = ", ".join(f"{m} x{c['factor']:g} ({c['param']}={c['value']:g})" for m, c in doc["chosen"].items())
    err_console.print(f"chosen: {picks}; use: attnlens bench binding --split test --calibration "
                      f"{out / 'calibration.json'}",
                      markup=False, highlight=False)


@bench_app.command("power", epilog=POWER_EXAMPLES)
def power(
    delta: float = typer.Option(0.1, "--delta", help="The paired difference in a rate to detect (0.1 = 10 points)."),
    discordant: Optional[float] = typer.Option(None, "--discordant", help="Assumed chance that two variants disagree "
                                               "on a unit (default: 0.25, or measured with --pilot)."),
    pilot: Optional[Path] = typer.Option(None, "--pilot", help="A pilot outcomes.csv (bench binding) to measure it."),
    metric: str = typer.Option("misbinding", "--metric", help="Outcome of the pilot (with --pilot)."),
    variant: Optional[str] = typer.Option(None, "--variant", help="Pilot variant compared with none (default: "
                                          "the first that is not none)."),
    alpha: float = typer.Option(0.05, "--alpha", help="Two-sided test level."),
    power_: float = typer.Option(0.8, "--power", help="Power."),
    fmt: str = FORMAT,
    as_json: bool = JSON,
) -> None:
    """How many (prompt, seed) units a paired comparison needs to see a difference."""
    from ..testbed.protocol import discordance, paired_units

    fmt = resolve_format(fmt, as_json)
    result: dict = {"delta": delta, "alpha": alpha, "power": power_}
    psi = discordant
    if pilot is not None:
        import pandas as pd

        from ..errors import ConfigError

        try:
            o = pd.read_csv(pilot)
        except FileNotFoundError:
            raise BadOption(f"no pilot table at '{pilot}'", hint="pass OUT/outcomes.csv of `attnlens bench binding`") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read '{pilot}' as a CSV table: {exc}", hint="pass OUT/outcomes.csv") from None
        if not {"variant", "prompt", "seed", metric} <= set(o.columns):
            raise BadOption(f"'{pilot}' has no '{metric}' outcomes per variant",
                            hint="pass OUT/outcomes.csv of `attnlens bench binding` and an outcome it holds")
        other = variant or next((v for v in o["variant"].unique() if v != "none"), None)
        if other is None:
            raise BadOption(f"'{pilot}' holds no variant besides none", hint="run a pilot with a method")
        d = discordance(o, metric, "none", other)
        result["pilot"] = {"file": str(pilot), "metric": metric, "variant": other, **d}
        if psi is None:
            psi = max(d["discordant"], abs(delta))
            if d["discordant"] < abs(delta):
                err_console.print(f"the pilot's variants disagree on {d['discordant']:.3g} of its units, less than "
                                  f"the difference to detect: using {abs(delta):g}, the smallest rate that can show it",
                                  markup=False, highlight=False)
    psi = 0.25 if psi is None else psi
    result["discordant"] = psi
    result["units"] = paired_units(delta, psi, alpha=alpha, power=power_)
    text = (f"{result['units']} (prompt, seed) units detect a paired difference of {delta:g} with power {power_:g} "
            f"at alpha {alpha:g} (two-sided McNemar, discordant-pair rate {psi:.3g}"
            + (f", measured on {int(result['pilot']['n'])} pilot units of {result['pilot']['variant']} vs none"
               if pilot is not None else "") + ")")
    report(fmt, result, text)
