"""``attnlens analyze``, ``attnlens compare`` and ``attnlens figure``: metric tables, paired comparisons, figures."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import AttnlensError
from . import app
from ._output import console, emit_json, err_console

ANALYZE_EXAMPLES = """
Examples:

  attnlens analyze runs/

  attnlens analyze runs/red-apple/syngen-seed1 runs/red-apple/none-seed1 --out out/metrics.parquet

  attnlens analyze runs/ --metric jsd --metric "leak_*" --layers all --steps 0:25

  attnlens analyze runs/ --metric "scalar/*" --phase guidance

  attnlens analyze runs/ --partial

The table has one row per (run, step, phase, iteration, layer, token or pair, metric); read it with
pandas.read_parquet. Layers: every recorded layer, res<h> (mean of the h×h layers) and all (mean of every layer,
resampled bilinearly to the largest resolution). Formulas: docs/metrics.md; choices: docs/analysis.md.
"""

COMPARE_EXAMPLES = """
Examples:

  attnlens compare runs/ --by method

  attnlens compare runs/ --by method --metric jsd --role bound --steps 0:25 --baseline none

  attnlens compare metrics.parquet --by variant --metric leak_in --format latex --out table.tex

  attnlens compare runs/ --metric otsu_iou --layers res16 --format markdown

Runs are paired on (prompt, seed): each unit's value is the mean over the selected steps, layers and tokens;
intervals are 95 % percentile bootstraps over units (2000 resamples, seed 0), differences are paired.
"""

FIGURE_EXAMPLES = """
Examples:

  attnlens figure maps runs/red-apple/none-seed0 runs/red-apple/syngen-seed0 --token red --token apple --out maps.pdf

  attnlens figure curves runs/ --metric jsd --role bound --out curves.pdf

  attnlens figure curves runs/ --metric jsd --role bound --baseline none --out delta.pdf

  attnlens figure layers metrics.parquet --metric entropy --role noun --out layers.png

  attnlens figure losses runs/ --out losses.svg --width page

SOURCES are run folders or roots (analysed on the fly with only what the figure needs) or a metrics.parquet
written by 'attnlens analyze' (maps needs run folders). Widths: column (3.25 in) or page (6.75 in).
"""


def _split(values: list[str]) -> list[str]:
    out = []
    for v in values:
        out += [x.strip() for x in v.split(",") if x.strip()]
    return out


@app.command(epilog=ANALYZE_EXAMPLES)
def analyze(
    paths: list[Path] = typer.Argument(..., help="Run folders and/or folders holding runs."),
    out: Path = typer.Option(Path("metrics.parquet"), "--out", "-o", help="Parquet file to write (replaced)."),
    partial: bool = typer.Option(False, "--partial", help="Analyse incomplete runs up to their last complete step."),
    metric: list[str] = typer.Option([], "--metric", "-m",
                                     help="Metric name or glob, or scalar/<name> (repeatable). Default: all."),
    layers: list[str] = typer.Option([], "--layers", "-l",
                                     help="Layer name, glob, resolution (16) or aggregate (all, res16); repeatable."),
    steps: Optional[str] = typer.Option(None, "--steps", help="Steps to analyse: 0:25, ::5, 0,10,20."),
    phase: list[str] = typer.Option([], "--phase", help="sample | guidance | sample_uncond (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Compute every metric of every run into a tidy Parquet table and print a summary per method."""
    from ..analysis import Analysis, format_summary, write_parquet

    if out.suffix.lower() != ".parquet":
        raise AttnlensError(f"--out '{out}' should end in .parquet", hint="e.g. --out metrics.parquet")
    analysis = Analysis(paths, partial=partial, metrics=_split(metric) or None, layers=_split(layers) or None,
                        steps=steps, phases=_split(phase) or None)
    with err_console.status(f"analysing {len(analysis.runs)} run(s) ..."):
        report = write_parquet(analysis, out)
    for note in report.notes:
        err_console.print(f"note: {note}", markup=False, highlight=False)
    if as_json:
        emit_json({"out": str(report.path), "rows": report.rows, "runs": report.runs, "notes": report.notes,
                   "summary": report.summary.to_dict(orient="records")})
        return
    console.print(f"{report.rows} rows from {report.runs} run(s) -> {report.path}", markup=False)
    if report.rows:
        console.print("summary (layer all, phase sample; means over steps, tokens and runs):", markup=False)
        console.print(format_summary(report.summary), markup=False, highlight=False)
    err_console.print(f"next: attnlens compare {report.path} --by method", markup=False)


def _load(sources: list[Path], partial: bool, **kwargs):
    from ..analysis import load_table

    notes: list[str] = []
    df = load_table(sources, partial=partial, notes=notes, **kwargs)
    for note in notes:
        err_console.print(f"note: {note}", markup=False, highlight=False)
    if not len(df):
        raise AttnlensError("no metric rows for this selection", hint="check --metric/--layers/--steps/--phase")
    return df


@app.command(epilog=COMPARE_EXAMPLES)
def compare(
    sources: list[Path] = typer.Argument(..., help="Root(s) holding runs, run folders, or metrics.parquet files."),
    by: str = typer.Option("method", "--by", help="Group column: method, or variant (method + its non-default "
                                                  "hyperparameters, or the run's label)."),
    metric: list[str] = typer.Option([], "--metric", "-m", help="Metric (repeatable). Default: the headline set."),
    role: list[str] = typer.Option([], "--role", help="bound | unbound | entities | modifier | noun | prompt | ..."),
    layers: list[str] = typer.Option([], "--layers", "-l", help="Layer or aggregate (default: all)."),
    steps: Optional[str] = typer.Option(None, "--steps", help="Steps averaged per unit: 0:25, ::5, 0,10,20."),
    phase: str = typer.Option("sample", "--phase", help="Phase of the map metrics."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="Group the differences are taken against "
                                                                    "(default: none if present)."),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="table | csv | markdown | latex "
                                                                   "(default: from --out's suffix, else table)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write to a file (.csv, .md, .tex, .txt)."),
    n_boot: int = typer.Option(2000, "--n-boot", help="Bootstrap resamples."),
    ci: float = typer.Option(0.95, "--ci", help="Interval coverage."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap RNG seed."),
    partial: bool = typer.Option(False, "--partial", help="Include incomplete runs up to their last complete step."),
) -> None:
    """Compare methods paired on (prompt, seed): mean and bootstrap interval per group and per difference."""
    from ..analysis import HEADLINE
    from ..compare import FORMATS, SUFFIXES, compare as run_compare, render, to_rich

    if fmt is None:
        fmt = SUFFIXES.get(out.suffix.lower(), "table") if out is not None else "table"
    if fmt not in FORMATS:
        raise AttnlensError(f"unknown format '{fmt}'", hint=f"choose one of: {', '.join(FORMATS)}")
    metrics = _split(metric) or None
    needed = metrics if metrics is not None else sorted({m for m, _ in HEADLINE})
    lay = _split(layers) or None
    df = _load(sources, partial, metrics=needed, layers=lay or ["all"], steps=steps, phases=[phase])
    c = run_compare(df, by=by, baseline=baseline, metrics=metrics, roles=_split(role) or None, layers=lay,
                    phase=phase, steps=steps, n_boot=n_boot, ci=ci, seed=seed)
    for note in c.notes:
        err_console.print(f"note: {note}", markup=False, highlight=False)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render(c, fmt))
        err_console.print(f"wrote {out}", markup=False)
    elif fmt == "table":
        console.print(to_rich(c))
    else:
        console.print(render(c, fmt), markup=False, highlight=False, end="")


def _steps_list(text: Optional[str], recorded: list[int]) -> Optional[list[int]]:
    if text is None:
        return None
    from ..selection import step_filter

    ok = step_filter(text)
    chosen = [s for s in recorded if ok(s)]
    if not chosen:
        raise AttnlensError(f"--steps {text} selects no recorded step",
                            hint=f"recorded: {recorded[0]}..{recorded[-1]}" if recorded else None)
    return chosen


@app.command(epilog=FIGURE_EXAMPLES)
def figure(
    kind: str = typer.Argument(..., help="maps | curves | layers | losses"),
    sources: list[Path] = typer.Argument(..., help="Run folders/roots, or a metrics.parquet (not for maps)."),
    out: Path = typer.Option(..., "--out", "-o", help="FILE.pdf (vector), FILE.svg or FILE.png (300 dpi)."),
    width: Optional[str] = typer.Option(None, "--width", help="column (3.25 in) | page (6.75 in) | inches. "
                                                              "Default: column for curves, page otherwise."),
    metric: list[str] = typer.Option([], "--metric", "-m", help="Metric (curves: repeatable; layers: one)."),
    role: Optional[str] = typer.Option(None, "--role", help="Role when the metric has several (e.g. bound)."),
    by: str = typer.Option("method", "--by", help="Group column: method or variant."),
    layer: Optional[str] = typer.Option(None, "--layer", help="Layer or aggregate (default: all)."),
    phase: str = typer.Option("sample", "--phase", help="sample | guidance | sample_uncond."),
    token: list[str] = typer.Option([], "--token", "-t", help="Word(s) to show (maps) or to keep (repeatable)."),
    steps: Optional[str] = typer.Option(None, "--steps", help="Steps: 0:25, ::5, 0,10,20 (maps: the columns)."),
    term: list[str] = typer.Option([], "--term", help="Loss term(s) for losses (default: all but bookkeeping)."),
    iteration: str = typer.Option("first", "--iteration", help="losses: first | last | mean refinement iteration."),
    group: list[str] = typer.Option([], "--group", help="layers: which groups get a panel (default: all)."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="curves: plot each group minus this one "
                                                                    "(paired on prompt, seed, step), e.g. none."),
    partial: bool = typer.Option(False, "--partial", help="Include incomplete runs up to their last complete step."),
) -> None:
    """Draw a paper figure (maps, curves, layers, losses) as PDF, SVG or PNG."""
    from .. import figures as F

    if kind not in F.KINDS:
        import difflib

        close = difflib.get_close_matches(kind, F.KINDS, n=1)
        raise AttnlensError(f"unknown figure kind '{kind}'",
                            hint=(f"did you mean {close[0]}? " if close else "") + f"kinds: {', '.join(F.KINDS)}")
    suffix = out.suffix.lower().lstrip(".")
    if suffix not in F.FORMATS:
        raise AttnlensError(f"cannot write '{out.name}': unknown figure format '{out.suffix}'",
                            hint="use .pdf, .svg or .png")
    w = width or ("column" if kind == "curves" else "page")
    F.figure_width(w)  # validate before any work
    metrics = _split(metric)
    tokens = _split(token) or None
    if kind == "maps":
        from ..analysis import discover_runs

        runs, notes = discover_runs(sources, partial=partial)
        for note in notes:
            err_console.print(f"note: {note}", markup=False, highlight=False)
        if len(runs) > 12:
            raise AttnlensError(f"{len(runs)} runs is too many rows for a maps figure",
                                hint="pass the run folders to show (one per method)")
        fig = F.maps_figure(runs, tokens=tokens, steps=_steps_list(steps, runs[0].recorded_steps(phase=phase)),
                            layer=layer or "all", phase=phase, width=w)
    elif kind == "curves":
        if not metrics:
            raise AttnlensError("curves needs --metric", hint="e.g. --metric jsd --role bound")
        df = _load(sources, partial, metrics=metrics, layers=[layer or "all"], steps=steps, phases=[phase])
        fig = F.curves_figure(df, metrics, role=role, by=by, layer=layer, phase=phase, tokens=tokens, width=w,
                              baseline=baseline)
    elif kind == "layers":
        if len(metrics) != 1:
            raise AttnlensError("layers needs exactly one --metric", hint="e.g. --metric entropy --role noun")
        df = _load(sources, partial, metrics=metrics, steps=steps, phases=[phase])
        fig = F.layers_figure(df, metrics[0], role=role, by=by, groups=_split(group) or None, phase=phase,
                              tokens=tokens, width=w)
    else:
        wanted = ["scalar/" + t.removeprefix("scalar/") for t in _split(term)] or ["scalar/*"]
        df = _load(sources, partial, metrics=wanted, steps=steps)
        fig = F.losses_figure(df, terms=_split(term) or None, by=by, iteration=iteration, width=w)
    F.save_figure(fig, out)
    size = fig.get_size_inches()
    console.print(str(out), markup=False)
    err_console.print(f"wrote {kind} figure: {F.panel_count(fig)} panel(s), {size[0]:.2f} × {size[1]:.2f} in",
                      markup=False)
