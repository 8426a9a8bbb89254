"""``attnlens sweep SPEC --out ROOT`` and ``attnlens sweep status ROOT``: many runs from one spec."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import BadOption
from ._app import CommandInterrupted, app
from ._output import FORMAT, JSON, err_console, report, resolve_format

EXAMPLES = """
Examples:

  attnlens sweep sweep.toml --out sweeps/first              # 2 local worker processes

  attnlens sweep sweep.toml --out sweeps/first --workers 4 --threads 1

  attnlens sweep sweep.toml --out sweeps/first --executor ray --address 127.0.0.1:6379

  attnlens sweep sweep.toml --out s3://bucket/sweeps/first    # runs published to an object store

  attnlens sweep status sweeps/first

A spec (TOML) names the model, the prompts (a list, a file or a named set such as CC-500), the seeds, the
methods with their hyperparameter grids, the recording options and the scorers; docs/sweep.md has a full one.
Each (variant, prompt, seed) cell is one run at ROOT/<prompt-slug>/<variant>-seed<N>. ROOT/sweep.json pins the
protocol (model and its digest, scheduler, steps, guidance, prompt-set hash, seeds) and lists every cell's state.
Rerun the same command to resume: complete runs are reused, incomplete ones recorded again.
ROOT may be an fsspec URL (s3://, gs://, ...; for S3 the AWS variables, AWS_ENDPOINT_URL for MinIO or moto): each
cell is recorded in the worker's cache, then published with its manifest last; sweep.json is one object at ROOT.
"""


def _status_rows(root: str) -> list[dict]:
    from ..sweeps import cell_states

    return [{k: c.get(k) for k in ("id", "state", "variant", "prompt", "seed", "attempts", "error", "scores",
                                   "run_status")} for c in cell_states(root)]


def _status_text(root: str, rows: list[dict]) -> str:
    from ..sweeps import summary

    s = summary(rows)
    head = (f"{root}: {s['cells']} cells, {s['complete'] + s['reused']} done ({s['reused']} reused), "
            f"{s['pending']} pending, {s['failed']} failed")
    lines = [head] + [f"{r['state']:<9} {r['variant']:<28} seed={r['seed']:<4} {r['prompt'][:50]}"
                      + (f"  error: {r['error']}" if r.get("error") else "") for r in rows if r["state"] != "complete"]
    if s["pending"] or s["failed"]:
        lines.append("resume with the same 'attnlens sweep SPEC --out ROOT' command")
    return "\n".join(lines)


@app.command(epilog=EXAMPLES)
def sweep(
    spec: str = typer.Argument(..., help="The spec file (TOML), or 'status' to report on ROOT."),
    root: Optional[str] = typer.Argument(None, help="With 'status': the sweep's root folder or URL."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Root folder or URL (s3://bucket/root) of the sweep's runs."),
    executor: str = typer.Option("local", "--executor", help="local (worker processes here) | ray (a Ray cluster)."),
    workers: int = typer.Option(2, "--workers", "-w", help="Local worker processes (each loads the model once)."),
    threads: Optional[int] = typer.Option(None, "--threads",
                                          help="Torch threads per local worker (default: cores / workers)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster HOST:PORT (with --executor ray)."),
    fmt: str = FORMAT,
    as_json: bool = JSON,
) -> None:
    """Run every (method variant, prompt, seed) of a spec, or report a sweep's state (sweep status ROOT)."""
    fmt = resolve_format(fmt, as_json)
    if spec == "status":
        if root is None and out is None:
            raise BadOption("'attnlens sweep status' needs the sweep's root", hint="attnlens sweep status ROOT")
        where = root or out
        rows = _status_rows(where)
        report(fmt, rows, lambda: _status_text(where, rows))
        return
    if root is not None:
        raise BadOption(f"unexpected argument '{root}'", hint="attnlens sweep SPEC --out ROOT")
    if out is None:
        raise BadOption("no --out given", hint=f"attnlens sweep {spec} --out sweeps/NAME")
    if executor != "ray" and address:
        raise BadOption("--address is for --executor ray", hint=f"attnlens sweep {spec} --out {out} --executor ray "
                                                                  f"--address {address}")
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    from ..methods import available_methods
    from ..scoring import get_scorer
    from ..sweeps import load_spec, run_sweep

    s = load_spec(spec, method_names=set(available_methods()))
    for name in s.scorers:
        get_scorer(name)
    bar = Progress(TextColumn("cells"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"),
                   TimeRemainingColumn(), console=err_console, transient=False)
    task = bar.add_task("cells", total=None)

    def progress(done: int, total: int) -> None:  # the bar appears once the plan is made (a refused spec: no bar)
        if not bar.live.is_started:
            bar.start()
        bar.update(task, completed=done, total=total)

    try:
        result = run_sweep(s, out, executor=executor, workers=workers, threads=threads, address=address,
                           progress=progress)
    except KeyboardInterrupt:
        raise CommandInterrupted(f"interrupted: finished cells are kept in {out}/sweep.json; rerun the same command "
                                 f"to resume (attnlens sweep status {out})") from None
    finally:
        if bar.live.is_started:  # a bar never started prints nothing (stop would print an empty line)
            bar.stop()
    report(fmt, result, lambda: (f"{result['cells']} cells under {out}: {result['ran']} run now, "
                                 f"{result['complete'] + result['reused']} done ({result['reused']} reused), "
                                 f"{result['failed']} failed ({result['seconds']:.1f} s); "
                                 f"next: attnlens sweep status {out}"))
    if result["failed"]:
        err_console.print(f"some cells failed; see 'attnlens sweep status {out}'", markup=False)
        raise typer.Exit(1)
