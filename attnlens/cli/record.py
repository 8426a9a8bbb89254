"""``attnlens record``: one recorded run per (prompt, seed)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Optional

import typer

from ..errors import BadOption, RunExists
from ._app import CommandInterrupted, app
from ._output import FORMAT, JSON, err_console, report, resolve_format, warn

EXAMPLES = """
Examples:

  attnlens record "a red crown and a golden strawberry"

  attnlens record "a red crown and a golden strawberry" --method syngen --seed 1 --seed 2

  attnlens record --prompts-file prompts.txt --method attend-excite --seed 0 --out runs/ae

  attnlens record "a red apple" --method syngen -O step_size=10 -O distance=jsd --bind "red>apple"

  attnlens record "a cat" --n-steps 30 --layers "up_blocks.*" --steps 0:25 --heads all

  attnlens record "a red crown" --model CompVis/stable-diffusion-v1-4      # on a GPU

  attnlens record "a red crown" --model stabilityai/stable-diffusion-3.5-medium --method syngen --guide-text both

Interventions (docs/interventions.md) edit the cross-attention probabilities the layers use and record:

  attnlens record "a red circle and a blue square" --intervene "swap red blue steps=0:10 layers=res16"

  attnlens record "a red circle and a blue square" --intervene "ablate red" --intervene "scale blue 2 layers=up_blocks.*"

  attnlens record "a red circle and a blue square" --intervene "mask red box=0,0,0.5,0.5" --intervene-file more.toml

  attnlens record "a red circle and a blue square" --intervene "patch runs/a-red-circle-and-a-blue-square/none-seed0"

On a testbed caption (attnlens bench binding's held-out prompts), an edit can be named and is made against that
caption's own scene: mask-gt (each object's colour and shape words kept inside its ground-truth box), copy-noun,
swap-colours, with steps=/layers=/phases= after the name (docs/testbed.md):

  attnlens record "a red circle and a blue square" --model attnlens-shapes-bow --intervene mask-gt

Grammar: OP TOKEN... [steps=SEL] [layers=L,...] [phases=sample,guidance]; OP is ablate WORD..., scale WORD... K,
swap A B, copy SOURCE TARGET, mask WORD... box=r0,c0,r1,c1 (fractions or pixels), patch RUN. A run with
interventions is written to OUT/<prompt-slug>/<method>+<interventions>-seed<N>.

Each run is written to OUT/<prompt-slug>/<method>-seed<N> (<method>+text-<T>-seed<N> with --guide-text T);
`attnlens ls OUT` lists them. --n-steps is how many
denoising steps to run; --steps (as in analyze, compare and figure) selects which of them are recorded.
"""


def parse_option(text: str) -> tuple[str, object]:
    """``key=value`` with the value read as JSON when possible (numbers, true/false, lists), else as a string."""
    if "=" not in text:
        raise BadOption(f"method option '{text}' is not KEY=VALUE", hint="e.g. -O step_size=10")
    key, _, raw = text.partition("=")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip().replace("-", "_"), value


def read_prompts(prompts: list[str], prompts_file: Optional[Path]) -> list[str]:
    out = list(prompts)
    if prompts_file is not None:
        if not prompts_file.is_file():
            raise BadOption(f"prompts file '{prompts_file}' not found", hint="pass a text file with one prompt per line")
        try:
            text = prompts_file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise BadOption(f"prompts file '{prompts_file}' is not UTF-8 text",
                            hint="pass a text file with one prompt per line") from None
        if "\x00" in text:
            raise BadOption(f"prompts file '{prompts_file}' holds binary data (NUL bytes)",
                            hint="pass a text file with one prompt per line")
        out += [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if not out:
        raise BadOption("no prompt given", hint='attnlens record "a red crown" or --prompts-file FILE')
    return out


def interrupted_message(targets: list[tuple[str, int, Path]], n_done: int) -> str:
    """The one line ``record`` prints on Ctrl-C: the run it stopped (marked interrupted, when it had begun) and the
    prompt/seed runs that were not recorded."""
    from ..store import is_run, read_manifest
    from ..store.layout import STATUS_INTERRUPTED

    if n_done >= len(targets):
        return f"interrupted after the last run; all {n_done} run(s) complete"
    _, _, path = targets[n_done]
    try:
        begun = is_run(path) and read_manifest(path).get("status") == STATUS_INTERRUPTED
    except Exception:  # noqa: BLE001  (an unreadable manifest: say only that the run was stopped)
        begun = False
    rest = targets[n_done + 1:]
    line = f"interrupted: '{path}' " + ("is marked interrupted" if begun else "was not recorded")
    line += f"; {len(rest)} remaining prompt/seed run(s) not recorded" if rest else ""
    if rest:
        named = ", ".join(f"seed {s} of '{p[:30]}'" for p, s, _ in rest[:3])
        line += f" ({named}{', ...' if len(rest) > 3 else ''})"
    return line + (f"; {n_done} run(s) complete" if n_done else "")


#: ``attnlens.models.DEFAULT_MODEL``, spelled out: importing the models here would load torch for ``--help``
#: (tests/integration/test_cli_format.py keeps the two equal)
DEFAULT_MODEL = "attnlens-shapes"


@app.command(epilog=EXAMPLES)
def record(
    prompt: list[str] = typer.Argument(None, help="Prompt(s) to record. Quote each prompt."),
    model: str = typer.Option(DEFAULT_MODEL, "--model",
                              help="Embedded model (attnlens-shapes: trained on coloured shapes; attnlens-tiny: "
                                   "random weights), hub id (CompVis/stable-diffusion-v1-4) or local diffusers folder."),
    method: str = typer.Option("none", "--method",
                               help="none | syngen | syngen-entropy | attend-excite | divide-bind | conform | ebama | "
                                    "a-star | predicated | initno | structured | path/to/file.py:function "
                                    "(docs/methods.md)"),
    method_option: list[str] = typer.Option([], "--method-option", "-O", help="Method hyperparameter KEY=VALUE (repeatable)."),
    guide_text: Optional[str] = typer.Option(None, "--guide-text",
                                             help="SD3 only: the text positions a method's words map to: clip "
                                                  "(default) | t5 | both (the mean of a word's CLIP and T5 maps)."),
    seed: list[int] = typer.Option([], "--seed", "-s", help="Seed (repeatable); default 0."),
    prompts_file: Optional[Path] = typer.Option(None, "--prompts-file", help="Text file with one prompt per line."),
    n_steps: int = typer.Option(50, "--n-steps", help="Number of denoising steps."),
    guidance_scale: float = typer.Option(7.5, "--guidance-scale", help="Classifier-free guidance scale."),
    height: Optional[int] = typer.Option(None, "--height", help="Image height (default: the model's native size)."),
    width: Optional[int] = typer.Option(None, "--width", help="Image width (default: the model's native size)."),
    out: str = typer.Option("runs", "--out", "-o", help="Root folder for the runs, or a URL (s3://bucket/root: "
                                                       "each run is recorded locally, then uploaded)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace runs that are already complete."),
    bind: list[str] = typer.Option([], "--bind", help='Manual binding "MOD[,MOD]>NOUN" overriding the parse (repeatable).'),
    spacy_model: Optional[str] = typer.Option(None, "--spacy-model", help="spaCy pipeline for the parse."),
    include_entities: bool = typer.Option(False, "--include-entities", help="Add SynGen's entity-only sets (rule D)."),
    heads: str = typer.Option("mean", "--heads", help="mean | all"),
    tokens: str = typer.Option("prompt", "--tokens", help="prompt (<sot>..<eot>) | all (77 positions)"),
    layers: list[str] = typer.Option([], "--layers", help="Layer name, glob or resolution (e.g. 16); repeatable."),
    steps: Optional[str] = typer.Option(None, "--steps", "--record-steps",
                                        help="Steps to record: 0:25, ::5, 0,10,20 (default: all; --record-steps is "
                                             "an alias). The number of steps is --n-steps."),
    dtype: str = typer.Option("fp16", "--dtype", help="Storage precision of the maps: fp16 | fp32."),
    uncond: bool = typer.Option(False, "--uncond", help="Also record the unconditional CFG half."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu | cuda (default: cuda if available)."),
    model_dtype: Optional[str] = typer.Option(None, "--model-dtype", help="fp16 | fp32 (default: fp16 on cuda, fp32 on cpu)."),
    intervene: list[str] = typer.Option([], "--intervene", "-I",
                                        help='Edit the attention, e.g. "swap red blue steps=0:10 layers=res16", '
                                             "or on a testbed caption mask-gt | copy-noun | swap-colours "
                                             "(repeatable; applied in order; see the examples below)."),
    intervene_file: Optional[Path] = typer.Option(None, "--intervene-file",
                                                  help="JSON or TOML file of interventions (a list of specs, or "
                                                       "[[intervention]] tables), applied after --intervene."),
    fmt: str = FORMAT,
    as_json: bool = JSON,
) -> None:
    """Record every cross-attention map of every step and layer, one run per (prompt, seed)."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    from ..adapters import pipeline_family
    from ..live_text_maps import check_guide_text
    from ..models import load_pipeline
    from ..sweep import complete_run, run_name, sweep_paths
    from ..recording import RecordingConfig
    from ..selection import parse_steps
    from ..cost import LargeRunWarning, available_memory, check_run_cost, free_disk, native_size, run_cost
    from ..sampler import check_method_family, check_sampling_options, sample
    from ..tokens import check_prompt
    from ._app import quiet_model_loading

    fmt = resolve_format(fmt, as_json)
    prompts = read_prompts(prompt or [], prompts_file)
    seeds = list(seed) or [0]
    options = dict(parse_option(o) for o in method_option)
    layer_spec = [int(x) if x.isdigit() else x for x in layers] or None
    config = RecordingConfig(heads=heads, tokens=tokens, layers=layer_spec, steps=parse_steps(steps),
                             dtype=dtype, uncond=uncond)
    if n_steps < 1:
        raise BadOption(f"--n-steps must be at least 1, got {n_steps}", hint="e.g. --n-steps 50")
    if steps is not None and steps.strip().isdigit():
        warn(f"--steps {steps.strip()} records only step {steps.strip()} of {n_steps}; "
             f"for {steps.strip()} denoising steps use --n-steps {steps.strip()}")
    from ..interventions import label_of, parse_intervention, read_spec_file
    from ..methods import get_method
    from ..sweep import slugify

    get_method(method, **options)  # validate before loading a model
    if guide_text is not None and guide_text not in ("clip", "t5", "both"):
        raise BadOption(f"unknown --guide-text '{guide_text}'", hint="choose one of: clip, t5, both (SD3 only)")
    from ..testbed.scene_edits import check_edit, edit_texts, is_named, scene_of

    file_edits = read_spec_file(intervene_file) if intervene_file else []
    named = [t for t in intervene if is_named(t)]
    if named:  # testbed edits (mask-gt, copy-noun, swap-colours): made against each prompt's own testbed scene
        for t in intervene:
            check_edit(t)
        per_prompt = {p: [parse_intervention(x) for t in intervene
                          for x in edit_texts(t, scene_of(p) if is_named(t) else None)] + file_edits
                      for p in prompts}  # a prompt that is no testbed caption is refused here, before any run
        parts = [" ".join(t.split()) if is_named(t) else label_of([parse_intervention(t)]) for t in intervene]
        edit_label = " + ".join(parts + ([label_of(file_edits)] if file_edits else []))
        edits = per_prompt[prompts[0]]
    else:
        edits = [parse_intervention(t) for t in intervene] + file_edits
        per_prompt, edit_label = {p: edits for p in prompts}, label_of(edits) if edits else ""
    name = run_name(method) + (f"+text-{guide_text}" if guide_text else "") + \
        (f"+{slugify(edit_label, limit=60)}" if edits else "")
    from ..store import prepare_run_dir
    from ..store.remote import cache_path, is_url, join, publish_run

    remote = is_url(out)
    # on an object store, each run is recorded into its local copy's folder and published when it ends
    targets = sweep_paths(Path(".") if remote else Path(out), prompts, seeds, name)
    urls = {path: join(out, path.as_posix()) for _, _, path in targets} if remote else {}
    if remote:
        targets = [(p, s, cache_path(urls[path])) for p, s, path in targets]
        urls = {cache_path(u): u for u in urls.values()}
    for _, _, path in targets:  # refuse early, before any sampling, when an output is a complete run
        if not overwrite and complete_run(urls.get(path, path)):
            if remote:
                raise RunExists(f"'{urls[path]}' already holds a complete run",
                                hint="pass --overwrite to replace it, or choose another --out")
            prepare_run_dir(path, overwrite=False)

    for s in seeds:  # values no sampler can use are refused before the model is loaded
        check_sampling_options(seed=s, num_inference_steps=n_steps, guidance_scale=guidance_scale, height=height,
                               width=width)
    with err_console.status(f"loading {model} ..."), quiet_model_loading():
        pipe = load_pipeline(model, device=device, dtype=model_dtype)
    family = pipeline_family(pipe)  # refused before any run folder is made: a UNet-only method, --guide-text
    check_method_family(get_method(method, **options), family)
    check_guide_text(family, guide_text)
    for p in prompts:
        for w in check_prompt(p, pipe.tokenizer).warnings:
            warn(w)

    manifest = {"model_id": model}
    if named:  # one label for every prompt (the boxes differ per prompt): `compare --by variant` groups them
        from ..analysis.runs import variant_label

        base = variant_label({"method": {"name": method, "hyperparameters": options, "guide_text": guide_text}})
        manifest["label"] = f"{base} + {edit_label}"
    native = native_size(pipe)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("eta"), TimeRemainingColumn(), console=err_console, transient=False)
    done = []
    try:
        with progress:
            for p, s, path in targets:
                if (height or native) and (width or native):  # what the run will cost, before it starts
                    cost = run_cost(pipe, height=height or native, width=width or native, n_steps=n_steps,
                                    config=config, n_tokens=len(check_prompt(p, pipe.tokenizer).pieces) + 2,
                                    cfg=guidance_scale > 1)
                    for note in check_run_cost(cost, memory=available_memory(pipe.device), disk=free_disk(path)):
                        progress.console.print(f"warning: {note}", markup=False)
                task = progress.add_task(f"{method} seed {s}: {p[:40]}", total=None)

                def tick(i: int, n: int, task=task) -> None:
                    progress.update(task, completed=i, total=n)

                try:
                    with warnings.catch_warnings(record=True) as caught:  # library warnings as the CLI's own lines
                        warnings.simplefilter("always", UserWarning)
                        run = sample(pipe, p, method=method, method_options=options, seed=s, out=path,
                                     num_inference_steps=n_steps, guidance_scale=guidance_scale, height=height,
                                     width=width, spacy_model=spacy_model, bind=list(bind) or None,
                                     include_entities=include_entities, recording=config,
                                     overwrite=overwrite or remote, progress=tick, manifest=manifest,
                                     interventions=per_prompt[p] or None, guide_text=guide_text)
                except BaseException:
                    progress.remove_task(task)  # a refused or failed run leaves its error line, not an empty bar
                    raise
                if remote:
                    publish_run(path, urls[path])
                for w in dict.fromkeys(str(c.message) for c in caught if issubclass(c.category, UserWarning)
                                       and not issubclass(c.category, LargeRunWarning)):  # shown before the run
                    warn(w)
                done.append(run)
    except KeyboardInterrupt:
        raise CommandInterrupted(interrupted_message(targets, len(done))) from None
    shown = [urls.get(run.path, str(run.path)) for run in done]
    report(fmt, [{"path": where, "prompt": p, "seed": s, "method": method, "model": model}
                 for where, (p, s, _) in zip(shown, targets)],
           lambda: "\n".join(shown))
    err_console.print(f"recorded {len(done)} run(s) under {out}; next: attnlens ls {out}", markup=False)
