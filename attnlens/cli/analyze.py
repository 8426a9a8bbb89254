"""``attnlens analyze``, ``attnlens compare`` and ``attnlens figure``: metric tables, paired comparisons, figures."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import BadOption, EmptySelection
from ._app import app
from ._output import FORMAT, JSON, console, err_console, note, report, resolve_format

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

  attnlens compare runs/ --format json | jq '.table[] | select(.metric == "jsd")'

Runs are paired on (prompt, seed): each unit's value is the mean over the selected steps, layers and tokens;
intervals are 95 % percentile bootstraps over units (2000 resamples, --boot-seed 0), differences are paired.
Formats: text (= table, the default), json (the table's rows), csv, markdown, latex.
"""

FIGURE_EXAMPLES = """
Examples:

  attnlens figure maps runs/red-apple/none-seed0 runs/red-apple/syngen-seed0 --token red --token apple --out maps.pdf

  attnlens figure curves runs/ --out headline.pdf              # the headline metrics, one panel each

  attnlens figure curves runs/ --metric jsd --role bound --steps 0:25 --out curves.pdf

  attnlens figure curves runs/ --metric jsd --role bound --baseline none --out delta.pdf

  attnlens figure layers metrics.parquet --metric entropy --role noun --out layers.png

  attnlens figure losses runs/ --out losses.svg --width page

SOURCES are run folders or roots (analysed on the fly with only what the figure needs) or a metrics.parquet
written by 'attnlens analyze' (maps needs run folders). Widths: column (3.25 in) or page (6.75 in). curves without
--metric draws the headline metrics (jsd bound/unbound, otsu_iou, leak_in/out, neglect_peak, token_entropy,
latent_drift_rel); with --role and no --metric, the headline metrics of that role.
"""


def _split(values: list[str]) -> list[str]:
    out = []
    for v in values:
        out += [x.strip() for x in v.split(",") if x.strip()]
    return out


@app.command(epilog=ANALYZE_EXAMPLES)
def analyze(
    paths: list[str] = typer.Argument(..., help="Run folders and/or folders holding runs (or their URLs, s3://...)."),
    out: Path = typer.Option(Path("metrics.parquet"), "--out", "-o", help="Parquet file to write (replaced)."),
    partial: bool = typer.Option(False, "--partial", help="Analyse incomplete runs up to their last complete step."),
    metric: list[str] = typer.Option([], "--metric", "-m",
                                     help="Metric name or glob, scalar/<name> or score/<key> (repeatable). Default: all."),
    layers: list[str] = typer.Option([], "--layers", "-l",
                                     help="Layer name, glob, resolution (16) or aggregate (all, res16); repeatable."),
    steps: Optional[str] = typer.Option(None, "--steps", help="Steps to analyse: 0:25, ::5, 0,10,20."),
    phase: list[str] = typer.Option([], "--phase", help="sample | guidance | sample_uncond (repeatable)."),
    executor: str = typer.Option("local", "--executor", help="local (this process) | ray (one task per prompt on "
                                                             "a Ray cluster; see attnlens sweep)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster HOST:PORT (with --executor ray)."),
    text: str = typer.Option("both", "--text", help="Transformer runs (SD3, Flux, PixArt, Sana): a word's map from "
                             "the positions of both encoders (their mean), or of one: clip | t5 | gemma."),
    renormalize_text: bool = typer.Option(False, "--renormalize-text", help="Divide each pixel's probabilities by "
                                          "their sum over the recorded text positions (joint attention's softmax "
                                          "also covers the image keys)."),
    fmt: str = FORMAT,
    as_json: bool = JSON,
) -> None:
    """Compute every metric of every run into a tidy Parquet table and print a summary per method."""
    from ..analysis import Analysis, format_summary, write_parquet

    fmt = resolve_format(fmt, as_json)
    if out.suffix.lower() != ".parquet":
        raise BadOption(f"--out '{out}' should end in .parquet", hint="e.g. --out metrics.parquet")
    if executor not in ("local", "ray"):
        raise BadOption(f"unknown executor '{executor}'", hint="choose one of: local, ray")
    if address and executor != "ray":
        raise BadOption("--address is for --executor ray", hint="add --executor ray")
    options = dict(partial=partial, metrics=_split(metric) or None, layers=_split(layers) or None, steps=steps,
                   phases=_split(phase) or None, text=text,
                   renormalize_text=renormalize_text)
    if executor == "ray":
        from ..sweeps.analyze import ClusterAnalysis

        analysis = ClusterAnalysis(paths, address=address, **options)
    else:
        analysis = Analysis(paths, **options)
    with err_console.status(f"analysing {len(analysis.runs)} run(s) ..."):
        result = write_parquet(analysis, out)
    for n in result.notes:
        note(n)

    def text() -> str:
        lines = [f"{result.rows} rows from {result.runs} run(s) -> {result.path}"]
        if result.rows:
            lines += ["summary (layer all, phase sample; means over steps, tokens and runs):",
                      format_summary(result.summary)]
        return "\n".join(lines)

    report(fmt, {"out": str(result.path), "rows": result.rows, "runs": result.runs, "notes": result.notes,
                 "summary": result.summary.to_dict(orient="records")}, text)
    if fmt == "text":
        err_console.print(f"next: attnlens compare {result.path} --by method", markup=False)


def _load(sources: list[str], partial: bool, **kwargs):
    from ..analysis import load_table

    notes: list[str] = []
    df = load_table(sources, partial=partial, notes=notes, **kwargs)
    for n in notes:
        note(n)
    if not len(df):
        raise EmptySelection("no metric rows for this selection", hint="check --metric/--layers/--steps/--phase")
    return df


#: compare's formats: the sink's text and json, and the table renderings of attnlens.compare
COMPARE_FORMATS = ("text", "json", "table", "csv", "markdown", "latex")


@app.command(epilog=COMPARE_EXAMPLES)
def compare(
    sources: list[str] = typer.Argument(..., help="Root(s) holding runs, run folders (or their URLs), or "
                                                  "metrics.parquet files."),
    by: str = typer.Option("method", "--by", help="Group column: method, or variant (method + its non-default "
                                                  "hyperparameters, or the run's label)."),
    metric: list[str] = typer.Option([], "--metric", "-m", help="Metric (repeatable). Default: the headline set."),
    role: list[str] = typer.Option([], "--role", help="bound | unbound | entities | modifier | noun | prompt | ..."),
    layers: list[str] = typer.Option([], "--layers", "-l", help="Layer or aggregate (default: all)."),
    steps: Optional[str] = typer.Option(None, "--steps", help="Steps averaged per unit: 0:25, ::5, 0,10,20."),
    phase: str = typer.Option("sample", "--phase", help="Phase of the map metrics."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="Group the differences are taken against "
                                                                    "(default: none if present)."),
    fmt: Optional[str] = typer.Option(None, "--format", "-f",
                                      help="text (= table) | json | csv | markdown | latex "
                                           "(default: from --out's suffix, else text)."),
    as_json: bool = JSON,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write to a file (.csv, .md, .tex, .txt, .json)."),
    n_boot: int = typer.Option(2000, "--n-boot", help="Bootstrap resamples."),
    ci: float = typer.Option(0.95, "--ci", help="Interval coverage."),
    boot_seed: int = typer.Option(0, "--boot-seed", help="Bootstrap RNG seed."),
    partial: bool = typer.Option(False, "--partial", help="Include incomplete runs up to their last complete step."),
) -> None:
    """Compare methods paired on (prompt, seed): mean and bootstrap interval per group and per difference."""
    import json

    from ..analysis import HEADLINE
    from ..compare import SUFFIXES, compare as run_compare, render, to_rich

    if fmt is None and not as_json:
        suffixes = {**SUFFIXES, ".json": "json"}
        if out is not None and out.suffix.lower() not in suffixes:
            raise BadOption(f"cannot tell the format of '{out.name}' from its suffix",
                            hint=f"end --out in one of {', '.join(sorted(suffixes))}, or pass --format")
        fmt = suffixes.get(out.suffix.lower(), "text") if out is not None else "text"
    fmt = resolve_format(fmt, as_json, choices=COMPARE_FORMATS)
    if fmt == "table":
        fmt = "text"
    metrics = _split(metric) or None
    needed = metrics if metrics is not None else sorted({m for m, _ in HEADLINE})
    lay = _split(layers) or None
    df = _load(sources, partial, metrics=needed, layers=lay or ["all"], steps=steps, phases=[phase])
    c = run_compare(df, by=by, baseline=baseline, metrics=metrics, roles=_split(role) or None, layers=lay,
                    phase=phase, steps=steps, n_boot=n_boot, ci=ci, seed=boot_seed)
    for n in c.notes:
        note(n)
    data = {"by": c.by, "baseline": c.baseline, "groups": c.groups, "n_boot": c.n_boot, "ci": c.ci,
            "boot_seed": c.seed, "selection": c.selection, "notes": c.notes,
            "table": json.loads(c.table.rename(columns={"group": c.by}).to_json(orient="records", double_precision=15))}
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "json":
            out.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
        else:
            out.write_text(render(c, "table" if fmt == "text" else fmt))
        err_console.print(f"wrote {out}", markup=False)
    elif fmt in ("text", "json"):
        report(fmt, data, lambda: to_rich(c))
    else:
        console.print(render(c, fmt), markup=False, highlight=False, end="")


@app.command(epilog=FIGURE_EXAMPLES)
def figure(
    kind: str = typer.Argument(..., help="maps | curves | layers | losses"),
    sources: list[str] = typer.Argument(..., help="Run folders/roots (or their URLs), or a metrics.parquet "
                                                  "(not for maps)."),
    out: Path = typer.Option(..., "--out", "-o", help="FILE.pdf (vector), FILE.svg or FILE.png (300 dpi)."),
    width: Optional[str] = typer.Option(None, "--width", help="column (3.25 in) | page (6.75 in) | inches. "
                                                              "Default: column for curves, page otherwise."),
    metric: list[str] = typer.Option([], "--metric", "-m", help="Metric (curves: repeatable, default the headline "
                                                                "metrics; layers: one)."),
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
    fmt: str = FORMAT,
    as_json: bool = JSON,
) -> None:
    """Draw a paper figure (maps, curves, layers, losses) as PDF, SVG or PNG."""
    from .. import figures as F

    fmt = resolve_format(fmt, as_json)
    spec = F.FigureSpec(kind=kind, sources=tuple(str(s) for s in sources), metrics=tuple(_split(metric)), role=role,
                        by=by, layer=layer, phase=phase, tokens=tuple(_split(token)), steps=steps, baseline=baseline,
                        terms=tuple(_split(term)), iteration=iteration, groups=tuple(_split(group)), width=width,
                        partial=partial).check()
    if out.suffix.lower().lstrip(".") not in F.FORMATS:
        raise BadOption(f"cannot write '{out.name}': unknown figure format '{out.suffix}'", hint="use .pdf, .svg or .png")
    notes: list[str] = []
    try:
        path, fig = F.render(spec, out, notes)
    finally:
        for n in notes:
            note(n)
    size = fig.get_size_inches()
    report(fmt, {"out": str(path), "kind": kind, "panels": F.panel_count(fig), "width_in": round(float(size[0]), 4),
                 "height_in": round(float(size[1]), 4), "notes": notes}, str(out))
    err_console.print(f"wrote {kind} figure: {F.panel_count(fig)} panel(s), {size[0]:.2f} × {size[1]:.2f} in",
                      markup=False)
