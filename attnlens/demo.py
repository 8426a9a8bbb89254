"""``make demo``: one prompt, the unguided model, an intervention on its attention and a guidance method — with the
images scored, the maps drawn and the variants compared, in about two minutes on a laptop CPU.

Runs the same ``attnlens`` commands a user would type (each printed before it runs), on the embedded bag-of-words
testbed model, whose colours reach the right shapes only through cross-attention (docs/testbed.md)::

    python -m attnlens.demo [--out out/demo] [--n-steps 25] [--seeds 1 2] [--model attnlens-shapes-bow]

1. ``none``: the model alone. Its first image and maps figure are on disk within the first minute.
2. ``none`` with the maps of "red" and "blue" swapped at every step and layer (``--intervene "swap red blue"``):
   does moving attention move the colours? This is the causal question the guidance methods rely on.
3. on the shapes models, ``none`` with each object's words kept inside its ground-truth box (``--intervene
   mask-gt``): perfect attention, the upper bound of what a guidance loss on the maps can buy (on the bag-of-words
   model it takes held-out misbinding from 80 % to 6 %, docs/testbed.md).
4. ``syngen``: the guidance method the field started from, at its released settings.

Then every image is scored by the testbed's evaluator (which colour landed on which shape), the maps are analysed
and compared, and the figures are drawn. The demo ends by saying what is on screen and what to open next.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from .cli import main as cli_main
from .cli._output import err_console

#: the guidance method the demo records beside ``none`` (at its released settings; Attend-and-Excite's refinement
#: would double the demo's time: `attnlens record ... --method attend-excite` adds it)
METHODS = ["none", "syngen"]
#: the bag-of-words testbed: binding happens only in cross-attention (so an edit of the maps can move colours)
MODEL = "attnlens-shapes-bow"
#: a colour–shape pair never seen in training (red circle) beside one that was (blue square)
PROMPT = "a red circle and a blue square"
#: for models that know the world (SD) or nothing (attnlens-tiny): SynGen's running example
PROMPT_OPEN = "a red crown and a golden strawberry"
SHAPES_MODELS = ("attnlens-shapes", "attnlens-shapes-bow")
#: the two modifiers whose maps the intervention swaps, for the demo's prompts (--swap A B for any other prompt)
SWAP = {PROMPT: ("red", "blue"), PROMPT_OPEN: ("red", "golden")}


def variants(swap: tuple[str, str] | None, mask: bool = False) -> list[tuple[str, list[str]]]:
    """(label, ``attnlens record`` arguments) of every variant the demo records, in the order it records them;
    ``mask``: add the ground-truth-box edit (testbed captions only)."""
    out = [("none", ["--method", "none"])]
    if swap:
        out.append((f"none + swap({swap[0]},{swap[1]})", ["--method", "none", "--intervene", f"swap {swap[0]} {swap[1]}"]))
    if mask:
        out.append(("none + mask-gt", ["--method", "none", "--intervene", "mask-gt"]))
    return out + [(m, ["--method", m]) for m in METHODS[1:]]


def is_testbed_caption(prompt: str) -> bool:
    """Whether ``prompt`` has a testbed scene (so ``mask-gt`` knows its objects' boxes)."""
    from .errors import BadOption
    from .testbed.scene_edits import scene_of

    try:
        scene_of(prompt)
    except BadOption:
        return False
    return True


def _run(args: list[str], t0: float) -> None:
    err_console.print(f"\n[{time.perf_counter() - t0:5.1f} s] $ attnlens {shlex.join(args)}", markup=False,
                      style="bold")
    code = cli_main(args)
    if code != 0:
        raise SystemExit(code)


def _scores(runs: Path, prompt: str) -> list[str]:
    """One line per run: what the testbed's evaluator sees in its image (which colour is on which shape)."""
    import numpy as np

    import attnlens
    from .analysis.runs import variant_label
    from .testbed import score

    lines = []
    for path in sorted(attnlens.find_runs(runs)):
        run = attnlens.open_run(path)
        image = run.image()
        if image is None or not run.complete:
            continue
        result = score(np.asarray(image), prompt)
        seen = []
        for o in result.objects:
            want = f"{o.expected.colour} {o.expected.shape}"
            if o.status == "correct":
                seen.append(f"{want} ✓")
            elif o.status == "missing":
                seen.append(f"{want}: missing")
            else:
                seen.append(f"{want}: drawn as {o.colour} {o.shape}")
        verdict = ("colours swapped" if result.swapped else "misbound" if result.misbinding else
                   "correct" if result.success else "objects wrong")
        label = variant_label(run.manifest)
        lines.append(f"  {label:<24} seed {run.info.seed}:  {verdict:<16} ({'; '.join(seen)})")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m attnlens.demo", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("out/demo"))
    ap.add_argument("--prompt", default=None, help=f"default: '{PROMPT}' on the shapes models, else '{PROMPT_OPEN}'")
    ap.add_argument("--n-steps", dest="steps", type=int, default=25, help="denoising steps per run (default 25)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--swap", nargs=2, metavar=("WORD", "WORD"), default=None,
                    help="the two words whose maps the intervention swaps (default: the prompt's two colours)")
    args = ap.parse_args(argv)
    shapes = args.model in SHAPES_MODELS
    if args.prompt is None:
        args.prompt = PROMPT if shapes else PROMPT_OPEN
    todo = variants(tuple(args.swap) if args.swap else SWAP.get(args.prompt),
                    mask=shapes and is_testbed_caption(args.prompt))
    runs, figures = args.out / "runs", args.out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    seeds = [a for s in args.seeds for a in ("--seed", str(s))]
    common = ["--n-steps", str(args.steps), "--model", args.model, "--out", str(runs), "--overwrite"]
    t0 = time.perf_counter()

    # 1. the model alone, and its maps at once: the first figure on disk
    _run(["record", args.prompt, *todo[0][1], *seeds, *common], t0)
    first = sorted(p.parent for p in runs.rglob("manifest.json"))
    words = list(args.swap or SWAP.get(args.prompt) or [])
    tokens = [a for w in words for a in ("--token", w)]
    _run(["figure", "maps", *map(str, first), *tokens, "--out", str(figures / "first_maps.png")], t0)
    first_at = time.perf_counter() - t0
    err_console.print(f"first image and map figure after {first_at:.0f} s: {figures / 'first_maps.png'}", markup=False)

    # 2.-3. the interventions and 4. the guidance method
    for _, extra in todo[1:]:
        _run(["record", args.prompt, *extra, *seeds, *common], t0)
    _run(["ls", str(runs)], t0)

    # what landed where: the evaluator on every image (the shapes models only: it knows their world)
    if shapes:
        lines = _scores(runs, args.prompt)
        err_console.print("\nwhat the evaluator sees in each image:\n" + "\n".join(lines), markup=False)
        (args.out / "scores.txt").write_text("\n".join(lines) + "\n")

    table = args.out / "metrics.parquet"
    _run(["analyze", str(runs), "--out", str(table)], t0)
    # the binding question: how far apart are each modifier's and its noun's maps (JSD, bound pairs) and how much of
    # a modifier's attention lies on the other object
    focus = ["--metric", "jsd", "--metric", "leak_in", "--layers", "all"]
    _run(["compare", str(table), "--by", "variant", "--baseline", "none", *focus, "--format", "markdown",
          "--out", str(args.out / "comparison.md")], t0)
    seed = args.seeds[0]
    def rank(folder: Path) -> int:  # none, the intervention, then the methods in the order they were recorded
        base = folder.name.rsplit("-seed", 1)[0]
        return 1 if "+" in base else 0 if base == "none" else 2 + (METHODS.index(base) if base in METHODS else 99)

    map_runs = [str(d) for d in sorted((p.parent for p in runs.rglob("manifest.json")
                                        if p.parent.name.endswith(f"-seed{seed}")), key=rank)]
    _run(["figure", "maps", *map_runs, *tokens, "--out", str(figures / "maps.pdf")], t0)
    _run(["figure", "curves", str(table), "--by", "variant", "--metric", "jsd", "--role", "bound",
          "--out", str(figures / "curves.pdf")], t0)
    _run(["figure", "losses", str(runs), "--out", str(figures / "losses.pdf")], t0)
    seconds = time.perf_counter() - t0
    shown = " and ".join(map(repr, words)) or "the prompt's words"
    err_console.print(
        f"\ndone in {seconds / 60:.1f} min (first figure after {first_at:.0f} s).\n"
        f"You are looking at one prompt, {args.prompt!r}, on {args.model} with seeds {', '.join(map(str, args.seeds))}:\n"
        f"  {figures / 'maps.pdf'}      each variant's final image and where {shown} attend, step by step;\n"
        + (f"  {args.out / 'scores.txt'}      which colour the evaluator found on which shape (which edit of the "
           "maps moves them, and does SynGen?);\n" if shapes else "") +
        f"  {args.out / 'comparison.md'}   each variant against none, paired on seed, with bootstrap intervals;\n"
        f"  {figures / 'curves.pdf'}, {figures / 'losses.pdf'}   binding divergence and the guidance losses per step.\n"
        f"Next: open the dashboard on these runs:  .venv/bin/attnlens dashboard {runs}   (then http://127.0.0.1:8501)\n"
        f"      and read docs/testbed.md for what the interventions show at scale.",
        markup=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
