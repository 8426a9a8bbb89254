"""``attnlens info``, ``attnlens ls`` and ``attnlens parse``: look at runs and prompts."""

from __future__ import annotations

import json

from pathlib import Path
from typing import Any, Optional

import typer

from ._app import app
from ._output import FORMAT, JSON, human_bytes, report, resolve_format


def run_summary(path: str | Path) -> dict[str, Any]:
    """Everything ``info`` shows, as a JSON-ready dict (``attnlens.store.Run.summary``)."""
    from ..store import open_run

    return open_run(path).summary()


INFO_EXAMPLES = """
Examples:

  attnlens info runs/a-red-crown/syngen-seed1

  attnlens info runs/a-red-crown/syngen-seed1 --format json | jq .layers

  attnlens info runs/a-red-crown/syngen-seed1 --check      # read every chunk: is the run intact?
"""


@app.command(epilog=INFO_EXAMPLES)
def info(
    run: str = typer.Argument(..., help="A run folder or URL (s3://bucket/root/prompt/run)."),
    check: bool = typer.Option(False, "--check", help="Read every map chunk and the images; exit 2 if any is "
                               "missing or damaged (names the layer, phase and step)."),
    fmt: str = FORMAT,
    as_json: bool = JSON,
) -> None:
    """Show a run: prompt, tokens, method, status, layers with resolution and shapes, phases, size on disk."""
    from ..errors import StoreError
    from ..store import open_run
    from ..store.verify import verify_run

    fmt = resolve_format(fmt, as_json)
    s = run_summary(run)
    if check:
        v = verify_run(open_run(run))
        s["check"] = {"chunks": v["chunks"], "problems": v["problems"]}
        if v["problems"]:
            more = f" (and {len(v['problems']) - 1} more problem(s))" if len(v["problems"]) > 1 else ""
            raise StoreError(v["problems"][0] + more, hint="record the run again (attnlens record ... --overwrite)")
    report(fmt, s, lambda: _info_text(s))


def _info_text(s: dict[str, Any]) -> str:
    status = s["status"] if s["status"] == "complete" else f"{s['status'].upper()} (incomplete: not used as a result)"
    lines = [
        f"run        {s['path']}",
        f"status     {status}",
        f"prompt     {s['prompt']}",
        f"method     {s['method']}  {s['hyperparameters'] or ''}",
    ] + [
        f"intervene  {json.dumps(spec, sort_keys=True)}" for spec in s.get("interventions") or []
    ] + [
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
    if "check" in s:
        lines.append(f"check      {s['check']['chunks']} map chunks read, no damage found")
    if s["error"]:
        lines.append(f"error      {s['error']}")
    return "\n".join(lines)


@app.command(name="ls")
def ls(
    root: str = typer.Argument("runs", help="Folder or URL (s3://bucket/root) holding runs."),
    fmt: str = FORMAT,
    as_json: bool = JSON,
) -> None:
    """List the runs under ROOT, one line each (status, method, seed, prompt, path)."""
    from ..store import find_runs, listing

    fmt = resolve_format(fmt, as_json)
    rows = [listing(path) for path in find_runs(root)]

    def text() -> str:
        if not rows:
            return f"no runs under {root} (record one: attnlens record \"a red crown\" --out {root})"
        return "\n".join(f"{r['status']:<9} {str(r['method']):<15} seed={str(r['seed']):<5} "
                         f"{str(r['prompt'])[:50]:<50}  {r['path']}" for r in rows)

    report(fmt, rows, text)


@app.command(name="parse")
def parse_cmd(
    prompt: str = typer.Argument(..., help="The prompt to parse."),
    spacy_model: Optional[str] = typer.Option(None, "--spacy-model", help="spaCy pipeline (default: first installed)."),
    include_entities: bool = typer.Option(False, "--include-entities", help="Add entity-only sets (rule D)."),
    bind: list[str] = typer.Option([], "--bind", help='Manual binding "MOD[,MOD]>NOUN" (repeatable).'),
    copula: str = typer.Option("released", "--copula", help="Copula sets (\"the car is shiny\"): released (the "
                               "released order: shiny in the noun's place) | noun-last (shiny binds to car)."),
    fmt: str = FORMAT,
    as_json: bool = JSON,
) -> None:
    """Print the dependency tree, SynGen's (modifiers, noun) sets and their token positions with word pieces.

    Example: attnlens parse "a red crown and a golden strawberry"
    """
    from ..parse import format_parse, parse_prompt
    from ..tokens import check_prompt
    from ..tokenizer import clip_tokenizer
    from ._output import warn

    fmt = resolve_format(fmt, as_json)
    info = check_prompt(prompt, clip_tokenizer())
    for w in info.warnings:
        warn(w)
    p = parse_prompt(prompt, spacy_model=spacy_model, include_entities=include_entities, bind=list(bind) or None,
                     copula=copula)
    report(fmt, p.to_dict(), lambda: format_parse(p))
