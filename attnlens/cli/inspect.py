"""``attnlens info``, ``attnlens ls`` and ``attnlens parse``: look at runs and prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from ..errors import AttnlensError
from . import app
from ._output import FORMAT, JSON, human_bytes, report, resolve_format


def run_summary(path: Path) -> dict[str, Any]:
    """Everything ``info`` shows, as a JSON-ready dict (also used by ``ls`` and the dashboard)."""
    from ..store import PHASES, open_run

    run = open_run(path)
    m = run.manifest
    layers = []
    for name in run.layers if run.status != "corrupted" else []:
        arr = run.array(name)
        layers.append({"name": name, "resolution": list(arr.shape[-2:]), "shape": list(arr.shape),
                       "dims": list(arr.metadata.dimension_names or ())})
    records = m.get("records", {})
    return {
        "path": str(path),
        "status": run.status,
        "prompt": m.get("prompt"),
        "seed": m.get("seed"),
        "method": (m.get("method") or {}).get("name"),
        "hyperparameters": (m.get("method") or {}).get("hyperparameters"),
        "model": (m.get("model") or {}).get("id"),
        "steps": m.get("steps"),
        "guidance_scale": m.get("guidance_scale"),
        "tokens": run.tokens,
        "layers": layers,
        "phases": {ph: {"steps": len(records.get(ph, {})),
                        "max_iteration": max((max(v) for v in records.get(ph, {}).values()), default=None)}
                   for ph in PHASES if ph in records},
        "scalars": m.get("scalars", []),
        "size_bytes": run.size_bytes(),
        "error": m.get("error"),
    }


INFO_EXAMPLES = """
Examples:

  attnlens info runs/a-red-crown/syngen-seed1

  attnlens info runs/a-red-crown/syngen-seed1 --format json | jq .layers
"""


@app.command(epilog=INFO_EXAMPLES)
def info(
    run: Path = typer.Argument(..., help="A run folder."),
    fmt: str = FORMAT,
    as_json: bool = JSON,
) -> None:
    """Show a run: prompt, tokens, method, status, layers with resolution and shapes, phases, size on disk."""
    fmt = resolve_format(fmt, as_json)
    s = run_summary(run)
    report(fmt, s, lambda: _info_text(s))


def _info_text(s: dict[str, Any]) -> str:
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
    return "\n".join(lines)


@app.command(name="ls")
def ls(
    root: Path = typer.Argument(Path("runs"), help="Folder holding runs."),
    fmt: str = FORMAT,
    as_json: bool = JSON,
) -> None:
    """List the runs under ROOT, one line each (status, method, seed, prompt, path)."""
    from ..store import find_runs, read_manifest

    fmt = resolve_format(fmt, as_json)
    rows = []
    for path in find_runs(root):
        try:
            m = read_manifest(path)
            rows.append({"path": str(path), "status": m.get("status", "unknown"), "method": (m.get("method") or {}).get("name"),
                         "seed": m.get("seed"), "prompt": m.get("prompt"), "model": (m.get("model") or {}).get("id")})
        except AttnlensError as exc:
            rows.append({"path": str(path), "status": "corrupted", "method": None, "seed": None, "prompt": str(exc)})
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
    p = parse_prompt(prompt, spacy_model=spacy_model, include_entities=include_entities, bind=list(bind) or None)
    report(fmt, p.to_dict(), lambda: format_parse(p))
