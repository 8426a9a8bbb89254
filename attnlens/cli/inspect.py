"""``attnlens info``, ``attnlens ls`` and ``attnlens parse``: look at runs and prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from . import app
from ._output import console, emit_json, human_bytes


def run_summary(path: Path) -> dict[str, Any]:
    """Everything ``info`` shows, as a JSON-ready dict (``attnlens.store.Run.summary``)."""
    from ..store import open_run

    return open_run(path).summary()


INFO_EXAMPLES = """
Examples:

  attnlens info runs/a-red-crown/syngen-seed1

  attnlens info runs/a-red-crown/syngen-seed1 --json | jq .layers
"""


@app.command(epilog=INFO_EXAMPLES)
def info(
    run: Path = typer.Argument(..., help="A run folder."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """Show a run: prompt, tokens, method, status, layers with resolution and shapes, phases, size on disk."""
    s = run_summary(run)
    if as_json:
        emit_json(s)
        return
    status = s["status"] if s["status"] == "complete" else f"{s['status'].upper()} (incomplete: not used as a result)"
    lines = [
        f"run        {s['path']}",
        f"status     {status}",
        f"prompt     {s['prompt']}",
        f"method     {s['method']}  {s['hyperparameters'] or ''}",
        f"model      {s['model']}",
        f"seed       {s['seed']}   steps {s['steps']}   guidance scale {s['guidance_scale']}",
    ]
    for i, toks in enumerate(s["tokens"]):
        lines.append(f"tokens[{i}]  " + " ".join(f"{j}:{t}" for j, t in enumerate(toks)))
    lines.append(f"layers     {len(s['layers'])} cross-attention layers")
    for layer in s["layers"]:
        res = "x".join(map(str, layer["resolution"]))
        lines.append(f"  {layer['name']:<60} {res:>7}  {tuple(layer['shape'])}")
    for ph, d in s["phases"].items():
        lines.append(f"phase      {ph}: {d['steps']} steps" + (f", iterations 0..{d['max_iteration']}" if d["max_iteration"] else ""))
    if s["scalars"]:
        lines.append(f"scalars    {', '.join(s['scalars'])}")
    lines.append(f"size       {human_bytes(s['size_bytes'])}")
    if s["error"]:
        lines.append(f"error      {s['error']}")
    console.print("\n".join(lines), markup=False)


@app.command(name="ls")
def ls(
    root: Path = typer.Argument(Path("runs"), help="Folder holding runs."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """List the runs under ROOT, one line each (status, method, seed, prompt, path)."""
    from ..store import find_runs, listing

    rows = [listing(path) for path in find_runs(root)]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        console.print(f"no runs under {root} (record one: attnlens record \"a red crown\" --out {root})", markup=False)
        return
    for r in rows:
        console.print(f"{r['status']:<9} {str(r['method']):<15} seed={str(r['seed']):<5} {str(r['prompt'])[:50]:<50}  {r['path']}",
                      markup=False)


@app.command(name="parse")
def parse_cmd(
    prompt: str = typer.Argument(..., help="The prompt to parse."),
    spacy_model: Optional[str] = typer.Option(None, "--spacy-model", help="spaCy pipeline (default: first installed)."),
    include_entities: bool = typer.Option(False, "--include-entities", help="Add entity-only sets (rule D)."),
    bind: list[str] = typer.Option([], "--bind", help='Manual binding "MOD[,MOD]>NOUN" (repeatable).'),
    as_json: bool = typer.Option(False, "--json", help="Print the parse as JSON."),
) -> None:
    """Print the dependency tree, SynGen's (modifiers, noun) sets and their token positions with word pieces.

    Example: attnlens parse "a red crown and a golden strawberry"
    """
    from ..parse import format_parse, parse_prompt
    from ..tokens import check_prompt
    from ..tokenizer import clip_tokenizer
    from ._output import warn

    info = check_prompt(prompt, clip_tokenizer())
    for w in info.warnings:
        warn(w)
    p = parse_prompt(prompt, spacy_model=spacy_model, include_entities=include_entities, bind=list(bind) or None)
    if as_json:
        emit_json(p.to_dict())
    else:
        console.print(format_parse(p), markup=False)
