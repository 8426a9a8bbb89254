"""``attnlens score``: the scores papers report (CLIPScore, Attend-and-Excite's CLIP similarities, T2I-CompBench's
BLIP-VQA, GenEval's rules) on the images of recorded runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import BadOption
from ._app import app, quiet_model_loading
from ._output import FORMAT, JSON, note, report, resolve_format

SCORE_EXAMPLES = """
Examples:

  attnlens score runs/ --scorer geneval                       # the shapes evaluator as GenEval's detector

  attnlens score runs/ --scorer clip --model-id openai/clip-vit-large-patch14

  attnlens score runs/ --scorer ae-clip --model-id openai/clip-vit-base-patch16

  attnlens score runs/ --scorer ae-text-text --caption-model-id Salesforce/blip-image-captioning-base

  attnlens score runs/ --scorer compbench-vqa --model-id Salesforce/blip-vqa-capfilt-large -O spacy_model=en_core_web_sm

  attnlens score runs/ --scorer clip --model-id attnlens-tiny-clip     # offline: tiny random weights (tests)

  attnlens score --list

--model-id takes a hub id (weights from your Hugging Face cache), a folder written by save_pretrained, or a tiny
model (attnlens-tiny-clip, attnlens-tiny-blip-caption, attnlens-tiny-blip-vqa). Each run's scores go into its
scores.json; the table (one row per run image, the columns of the binding bench's outcomes.csv) into ROOT/scores.csv;
'attnlens analyze' lists them as metrics score/<key> (role image). A run already scored with the same scorer and
options is skipped (--rescore scores it again). Formulas and model ids: docs/scoring.md.
"""


def _options(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise BadOption(f"-O '{pair}' is not key=value", hint="e.g. -O spacy_model=en_core_web_sm -O weight=2.5")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


@app.command(epilog=SCORE_EXAMPLES)
def score(
    paths: list[Path] = typer.Argument(None, help="Run folders and/or folders holding runs."),
    scorer: Optional[str] = typer.Option(None, "--scorer", "-s",
                                         help="Scorer name (see --list), optionally with options: name:key=value,..."),
    model_id: Optional[str] = typer.Option(None, "--model-id",
                                           help="The scorer's model: hub id, save_pretrained folder or tiny model."),
    caption_model_id: Optional[str] = typer.Option(None, "--caption-model-id",
                                                   help="ae-text-text: the BLIP captioning model."),
    option: list[str] = typer.Option([], "--option", "-O", help="Further scorer option key=value (repeatable)."),
    device: Optional[str] = typer.Option(None, "--device", help="cuda | cpu (default: cuda when available)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="fp16 | bf16 | fp32 (default: fp16 on cuda)."),
    rescore: bool = typer.Option(False, "--rescore", help="Score runs already scored with the same options again."),
    table: Optional[Path] = typer.Option(None, "--table", help="Where to write the table (default ROOT/scores.csv)."),
    list_scorers: bool = typer.Option(False, "--list", help="List the scorers and the models they publish with."),
    fmt: str = FORMAT,
    as_json: bool = JSON,
) -> None:
    """Score the images of recorded runs: CLIPScore, Attend-and-Excite, T2I-CompBench BLIP-VQA, GenEval rules."""
    from ..scoring import available_scorers, score_runs, scorer_info
    from ..scoring.registry import parse_scorer_spec

    fmt = resolve_format(fmt, as_json)
    if list_scorers:
        infos = [scorer_info(n) for n in available_scorers()]
        report(fmt, [{"name": i.name, "description": i.description, "models": dict(i.models)} for i in infos],
               lambda: "\n".join(f"{i.name:14s} {i.description}" + "".join(f"\n{'':14s}   --{o.replace('_', '-')} {m}"
                                                                            for o, m in i.models) for i in infos))
        return
    if not paths:
        raise BadOption("no run or root given", hint="attnlens score runs/ --scorer clip (attnlens score --list)")
    if not scorer:
        raise BadOption("no --scorer given", hint=f"choose one of: {', '.join(available_scorers())}")
    scorer_info(parse_scorer_spec(scorer)[0])  # an unknown name fails before any model loads
    opts = _options(option)
    given = {"model_id": model_id, "caption_model_id": caption_model_id, "device": device, "dtype": dtype}
    opts.update({k: v for k, v in given.items() if v is not None})
    with quiet_model_loading():
        result = score_runs(paths, scorer, opts, rescore=rescore, table=table, log=note)
    keys = [c for c in result.table.columns if c not in ("run", "method", "variant", "prompt", "seed", "sample")]

    def text() -> str:
        lines = [f"scored {result.scored} run(s), {result.reused} already scored"
                 + (f" -> {result.files[0]}" if result.files else "")]
        if keys:
            means = result.table[keys].mean(numeric_only=True)
            lines += [f"  {k:18s} mean {means[k]:.4f} over {int(result.table[k].notna().sum())} image(s)"
                      for k in keys if k in means]
        return "\n".join(lines)

    report(fmt, {"scored": result.scored, "reused": result.reused, "files": [str(f) for f in result.files],
                 "notes": result.notes, "rows": json.loads(result.table.to_json(orient="records"))}, text)
