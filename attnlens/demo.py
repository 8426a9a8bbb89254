"""``make demo``: record the loss variants on one prompt and a few seeds, analyse, compare, draw the figures.

Runs the same ``attnlens`` commands a user would type (printed before each one), on the embedded default model::

    python -m attnlens.demo [--out out/demo] [--n-steps 50] [--seeds 1 2 3] [--prompt "..."]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from .cli import main as cli_main
from .cli._output import err_console
from .models import DEFAULT_MODEL

METHODS = ["none", "syngen", "syngen-entropy", "attend-excite", "divide-bind"]
#: on the shapes model: a colour-shape pair it never saw in training (red circle) beside one it did (blue square)
PROMPT = "a red circle and a blue square"
#: for models that know the world (SD) or nothing (attnlens-tiny): SynGen's running example
PROMPT_OPEN = "a red crown and a golden strawberry"


def _run(args: list[str]) -> None:
    err_console.print(f"\n$ attnlens {shlex.join(args)}", markup=False, style="bold")
    code = cli_main(args)
    if code != 0:
        raise SystemExit(code)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m attnlens.demo", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("out/demo"))
    ap.add_argument("--prompt", default=None, help=f"default: '{PROMPT}' on attnlens-shapes, else '{PROMPT_OPEN}'")
    ap.add_argument("--n-steps", dest="steps", type=int, default=50, help="denoising steps per run")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    args = ap.parse_args(argv)
    if args.prompt is None:
        args.prompt = PROMPT if args.model == "attnlens-shapes" else PROMPT_OPEN
    runs, figures = args.out / "runs", args.out / "figures"
    seeds = [a for s in args.seeds for a in ("--seed", str(s))]
    t0 = time.perf_counter()
    for method in METHODS:
        _run(["record", args.prompt, "--method", method, *seeds, "--n-steps", str(args.steps), "--model", args.model,
              "--out", str(runs), "--overwrite"])
    _run(["ls", str(runs)])
    table = args.out / "metrics.parquet"
    _run(["analyze", str(runs), "--out", str(table)])
    # the binding question: how far apart are each modifier's and its noun's maps (JSD, bound pairs), and how much
    # of a modifier's attention leaks onto other entities, on the 16×16 layers, over the guided steps
    focus = ["--metric", "jsd", "--metric", "leak_in", "--metric", "leak_out", "--layers", "res16", "--steps", "0:25"]
    _run(["compare", str(table), "--by", "method", "--baseline", "none", *focus])
    _run(["compare", str(table), "--by", "method", "--baseline", "none", *focus, "--format", "markdown",
          "--out", str(args.out / "comparison.md")])
    first = sorted(p for p in runs.rglob("manifest.json"))
    seed = args.seeds[0]
    map_runs = [str(p.parent) for m in METHODS for p in first if p.parent.name == f"{m}-seed{seed}"]
    figures.mkdir(parents=True, exist_ok=True)
    _run(["figure", "maps", *map_runs, "--out", str(figures / "maps.pdf")])
    _run(["figure", "curves", str(table), "--metric", "jsd", "--role", "bound", "--out", str(figures / "curves.pdf")])
    _run(["figure", "layers", str(table), "--metric", "entropy", "--role", "noun", "--out", str(figures / "layers.png")])
    _run(["figure", "losses", str(runs), "--out", str(figures / "losses.pdf")])
    minutes = (time.perf_counter() - t0) / 60
    err_console.print(
        f"\ndone in {minutes:.1f} min: runs in {runs}, table {table}, figures in {figures}.\n"
        f"Open the dashboard with:  .venv/bin/attnlens dashboard {runs}   (then http://127.0.0.1:8501)",
        markup=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
