"""``attnlens testbed render|evaluate|train|ship``: the shapes testbed's tools (``docs/testbed.md``).

``python -m attnlens.testbed.render`` (and ``.evaluate``, ``.train``, ``.ship``) still work: each module's ``main``
runs the same command through this app.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import BadOption, ConfigError, ModelNotFound
from ._app import app
from ._output import FORMAT, JSON, err_console, report, resolve_format

testbed_app = typer.Typer(
    name="testbed",
    help="The shapes testbed: render its scenes, evaluate images against the ground truth, train and ship the "
         "attnlens-shapes model (docs/testbed.md).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(testbed_app, name="testbed")

RENDER_EXAMPLES = """
Examples:

  attnlens testbed render --out out/shapes --n 16

  attnlens testbed render --out out/shapes-test --n 64 --split test --seed 1

Writes OUT/<split>-<index>.png (64x64, 1-3 coloured shapes) and OUT/scenes.jsonl (caption and ground truth of
each image). The stream is seeded: the same --seed and --split give the same images.
"""

EVALUATE_EXAMPLES = """
Examples:

  attnlens testbed evaluate --validate --n 1000                  # detector vs the renderer's ground truth

  attnlens testbed evaluate --validate --n 500 --blur 1 --noise 8 --vae runs/testbed/pipeline

  attnlens testbed evaluate --model runs/testbed/pipeline --split test --n 64 --save grid.png

  attnlens testbed evaluate image1.png image2.png --prompt "a red circle and a blue square"

Each object of the prompt is scored correct, misbound (right shape, wrong colour), leaked (its colour on another
object) or neglected (missing); an image succeeds when every object is correct and nothing extra is drawn.
"""

TRAIN_EXAMPLES = """
Examples:

  attnlens testbed train --out runs/testbed                           # VAE, then UNet + text encoder

  attnlens testbed train --out runs/testbed --resume                  # continue from the latest checkpoint

  attnlens testbed train --out runs/testbed --resume --unet-steps 9000   # train longer (total, not additional)

  attnlens testbed train --benchmark --threads 2                      # time a few steps of each phase

  attnlens testbed train --out /tmp/t --preset tiny --vae-steps 2 --unet-steps 3   # smoke test, seconds
  attnlens testbed train --out runs/bow --text-layers 0 --init-from attnlens-shapes --name attnlens-shapes-bow
      # the bag-of-words testbed: fine-tuned from attnlens-shapes with a text encoder that mixes no words

Writes OUT/checkpoints, OUT/log.jsonl, OUT/samples/ and, unless --no-export, OUT/pipeline (fp16 safetensors);
'attnlens testbed ship OUT/pipeline' makes it the embedded attnlens-shapes model.
"""

SHIP_EXAMPLES = """
Examples:

  attnlens testbed ship runs/testbed/pipeline

  attnlens testbed ship runs/testbed/pipeline --dest /tmp/shapes-assets

Copies the weights and configs into attnlens/assets/shapes/ (without tokenizer files) and writes
attnlens_model.json with the SHA-256 of every file, which attnlens checks before building the model.
"""


def _split_option(default: str) -> str:
    return typer.Option(default, "--split", help="train | test (held-out colour-shape pairs) | any.")


def _check_split(split: str, choices: tuple[str, ...]) -> None:
    if split not in choices:
        raise BadOption(f"unknown --split '{split}'", hint=f"choose one of: {', '.join(choices)}")


@testbed_app.command("render", epilog=RENDER_EXAMPLES)
def render_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the images and scenes.jsonl."),
    n: int = typer.Option(16, "--n", help="How many images."),
    seed: int = typer.Option(0, "--seed", help="Seed of the scene stream."),
    split: str = _split_option("train"),
    fmt: str = FORMAT,
    as_json: bool = JSON,
) -> None:
    """Write a sample of the renderer's dataset: images and their ground truth."""
    from ..testbed.render import SPLITS, write_dataset

    fmt = resolve_format(fmt, as_json)
    _check_split(split, SPLITS)
    if n < 1:
        raise BadOption("--n must be at least 1", hint="e.g. --n 16")
    path = write_dataset(out, n, seed, split)
    report(fmt, {"out": str(path), "n": n, "seed": seed, "split": split},
           f"wrote {n} images and scenes.jsonl to {path}")


@testbed_app.command("evaluate", epilog=EVALUATE_EXAMPLES)
def evaluate_cmd(
    images: list[Path] = typer.Argument(None, help="Image files to score against --prompt."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="A testbed caption (for image files)."),
    validate: bool = typer.Option(False, "--validate", help="Measure agreement with the renderer's ground truth."),
    n: int = typer.Option(1000, "--n", help="Images to validate on, or to generate with --model."),
    seed: int = typer.Option(0, "--seed", help="Seed of the caption/scene stream."),
    split: str = _split_option("any"),
    blur: float = typer.Option(0.0, "--blur", help="--validate on images blurred with this sigma (pixels)."),
    noise: float = typer.Option(0.0, "--noise", help="... and with Gaussian noise of this sigma (0-255)."),
    vae: Optional[Path] = typer.Option(None, "--vae", help="--validate on reconstructions by this AutoencoderKL "
                                                           "(folder with config.json, or a pipeline folder)."),
    model: Optional[Path] = typer.Option(None, "--model", help="Generate with this pipeline folder and score: the "
                                                               "binding benchmark on --split."),
    n_steps: int = typer.Option(25, "--n-steps", help="Sampling steps for --model."),
    guidance: float = typer.Option(5.0, "--guidance-scale", "--guidance",
                                   help="Classifier-free guidance for --model (--guidance is an alias)."),
    save: Optional[Path] = typer.Option(None, "--save", help="With --model: save the generated images as one PNG "
                                                             "grid here."),
    fmt: str = FORMAT,
    as_json: bool = JSON,
) -> None:
    """Validate the evaluator on rendered images, benchmark a pipeline, or score image files against a prompt."""
    import numpy as np

    from ..testbed import evaluate as E

    fmt = resolve_format(fmt, as_json)
    _check_split(split, ("train", "test", "any"))
    if n < 1:
        raise BadOption("--n must be at least 1", hint="e.g. --n 1000")
    if model is not None:
        if not (model / "model_index.json").is_file():
            raise ModelNotFound(f"'{model}' is not a diffusers pipeline folder (no model_index.json)",
                                hint="pass OUT/pipeline of 'attnlens testbed train'")
        if n_steps < 1:
            raise BadOption("--n-steps must be at least 1", hint="e.g. --n-steps 25")
        import torch
        from diffusers import StableDiffusionPipeline

        from ._app import quiet_model_loading

        torch.set_num_threads(2)
        with quiet_model_loading():
            pipe = StableDiffusionPipeline.from_pretrained(model, torch_dtype=torch.float32, safety_checker=None)
        pipe.set_progress_bar_config(disable=True)
        results, imgs = E.evaluate_pipeline(pipe, n, split, seed, n_steps, guidance, progress=True)
        agg = E.aggregate(results)
        if save:
            from PIL import Image

            Image.fromarray(E.image_grid(imgs)).save(save)
        data = {"model": str(model), "split": split, "steps": n_steps, "guidance": guidance, **agg}
        report(fmt, data, lambda: json.dumps(data, indent=2))
        return
    if validate:
        image_fn = None
        if vae is not None:
            import torch
            from diffusers import AutoencoderKL

            where = vae / "vae" if (vae / "vae").is_dir() else vae
            if not (where / "config.json").is_file():
                raise ModelNotFound(f"no AutoencoderKL in '{vae}' (no config.json)",
                                    hint="pass a VAE folder or a pipeline folder with vae/")
            image_fn = E.vae_roundtrip(AutoencoderKL.from_pretrained(where, torch_dtype=torch.float32).eval())
        rep = E.validate(n, seed, split, progress=True, blur=blur, noise=noise, image_fn=image_fn)

        def text() -> str:
            lines = [f"images: {rep.n_images}  (seed {seed}, split {split}, blur {blur}, noise {noise})",
                     f"detection agreement (image level): {rep.detection_agreement:.2%}",
                     f"object agreement:                  {rep.object_agreement:.2%}  ({rep.objects} objects)",
                     f"scoring agreement (known answers): {rep.scoring_agreement:.2%}"]
            lines += [f"  {k:16s} {a}/{t}  {a / max(t, 1):.2%}" for k, (a, t) in rep.cases.items()]
            lines += [f"  failure: {f}" for f in rep.failures[:10]]
            return "\n".join(lines)

        report(fmt, {**rep.summary(), "failures": rep.failures}, text)
        return
    if not images or not prompt:
        raise BadOption("nothing to evaluate", hint="give --validate, --model PIPELINE, or image files and --prompt")
    from PIL import Image

    results = []
    for path in images:
        if not path.is_file():
            raise BadOption(f"image '{path}' not found", hint="pass PNG/JPEG files")
        try:
            results.append((path, E.score(np.asarray(Image.open(path).convert("RGB")), prompt)))
        except ValueError as exc:
            raise ConfigError(f"cannot score against '{prompt}': {exc}",
                              hint='use a testbed caption, e.g. "a red circle and a blue square"') from None

    def text() -> str:
        lines = []
        for path, res in results:
            objs = ", ".join(f"{o.expected.colour} {o.expected.shape}: {o.status}" for o in res.objects)
            lines.append(f"{path}: success={res.success} misbinding={res.misbinding} leakage={res.leakage} "
                         f"neglect={res.neglect} extra={len(res.extra)} | {objs}")
        if len(results) > 1:
            lines.append(json.dumps(E.aggregate([r for _, r in results]), indent=2))
        return "\n".join(lines)

    report(fmt, {"prompt": prompt, "results": [{"file": str(p), **r.to_dict()} for p, r in results],
                 "aggregate": E.aggregate([r for _, r in results])}, text)


@testbed_app.command("train", epilog=TRAIN_EXAMPLES)
def train_cmd(
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (checkpoints, log.jsonl, samples/, "
                                                                 "pipeline/)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint in --out."),
    preset: str = typer.Option("default", "--preset", help="Model and schedule sizes: default | tiny | ..."),
    unet_steps: Optional[int] = typer.Option(None, "--unet-steps", help="UNet steps (total, not additional)."),
    vae_steps: Optional[int] = typer.Option(None, "--vae-steps", help="VAE steps (total)."),
    batch: Optional[int] = typer.Option(None, "--batch", help="UNet batch size."),
    vae_batch: Optional[int] = typer.Option(None, "--vae-batch", help="VAE batch size."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate."),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", help="Checkpoint every N steps."),
    sample_every: Optional[int] = typer.Option(None, "--sample-every", help="Sample grid + scores every N UNet "
                                                                            "steps (0: never)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads (default 2)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Training seed."),
    text_layers: Optional[int] = typer.Option(None, "--text-layers", min=0, help="Transformer layers of the text "
                                              "encoder; 0 = bag of words (token + position embedding, no mixing)."),
    init_from: Optional[str] = typer.Option(None, "--init-from", help="Start from a trained pipeline (name or "
                                            "folder): its VAE (no VAE phase), UNet and text embeddings."),
    name: Optional[str] = typer.Option(None, "--name", help="Model name written into the exported pipeline."),
    no_export: bool = typer.Option(False, "--no-export", help="Do not write OUT/pipeline at the end."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    benchmark: bool = typer.Option(False, "--benchmark", help="Time a few steps of each phase, write nothing."),
    fmt: str = FORMAT,
    as_json: bool = JSON,
) -> None:
    """Train the shapes-testbed SD model (VAE, then UNet + text encoder) on the renderer's stream."""
    from dataclasses import replace

    from ..testbed import train as T

    fmt = resolve_format(fmt, as_json)
    if preset not in T.PRESETS:
        raise BadOption(f"unknown --preset '{preset}'", hint=f"choose one of: {', '.join(sorted(T.PRESETS))}")
    if out is None and not benchmark:
        raise BadOption("--out is required", hint="e.g. --out runs/testbed (or --benchmark)")
    overrides = {"steps": unet_steps, "vae_steps": vae_steps, "batch": batch, "vae_batch": vae_batch, "lr": lr,
                 "checkpoint_every": checkpoint_every, "sample_every": sample_every, "threads": threads, "seed": seed,
                 "text_layers": text_layers, "init_from": init_from, "name": name}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    cfg = replace(T.TrainConfig(**T.PRESETS[preset]), **overrides)
    if benchmark:
        res = T.benchmark(cfg)
        report(fmt, res, lambda: "\n".join(
            f"{phase}: {r['wall_s_per_step']:.2f} s/step wall, {r['cpu_s_per_step']:.2f} s/step CPU "
            f"(batch {r['batch']}, {r['threads']} threads)" for phase, r in res.items()))
        return
    if resume and (out / "config.json").exists():
        cfg = replace(T.TrainConfig.from_dict(json.loads((out / "config.json").read_text())), **overrides)
    try:
        result = T.train(out, cfg, resume=resume, export=not no_export, progress=not quiet and fmt == "text")
    except ValueError as exc:
        raise ConfigError(str(exc), hint="pass --resume to continue, or another --out") from None
    if no_export:
        report(fmt, {"out": str(out), "checkpoints": str(result / "checkpoints"), "pipeline": None},
               f"checkpoints in {result / 'checkpoints'}")
    else:
        size = T.pipeline_size_mb(result)
        report(fmt, {"out": str(out), "checkpoints": str(out / "checkpoints"), "pipeline": str(result),
                     "pipeline_mb": size}, f"pipeline: {result}  ({size:.1f} MB of fp16 safetensors)")


@testbed_app.command("ship", epilog=SHIP_EXAMPLES)
def ship_cmd(
    pipeline: Path = typer.Argument(..., help="Exported pipeline folder (OUT/pipeline of 'attnlens testbed train')."),
    dest: Optional[Path] = typer.Option(None, "--dest", help="Destination (default: the package's assets/<name>, "
                                        "e.g. assets/shapes)."),
    fmt: str = FORMAT,
    as_json: bool = JSON,
) -> None:
    """Ship a trained testbed pipeline inside the package, where attnlens-shapes (the embedded default) finds it."""
    from ..testbed import ship as S

    fmt = resolve_format(fmt, as_json)
    missing = [f for f in S.FILES if not (pipeline / f).is_file()]
    if missing:
        raise ModelNotFound(f"{pipeline} is not an exported testbed pipeline (missing {missing[0]})",
                            hint="pass OUT/pipeline of 'attnlens testbed train'")
    m = S.ship(pipeline, dest)
    target = dest or S.asset_dir_for(m["name"])
    total = sum(v["bytes"] for v in m["files"].values()) / 1e6
    report(fmt, {"pipeline": str(pipeline), "dest": str(target), "version": m["version"], "mb": total}, None)
    err_console.print(f"shipped {pipeline} -> {target}: {total:.1f} MB, version {m['version']}", markup=False)
