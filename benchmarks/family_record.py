"""Recording on the model families (issue 15): overhead per family on the tiny configs, and store size per image at
each family's native resolution computed from the real layer shapes.

``overhead``: for each tiny model (``attnlens-tiny-sdxl``, ``-sd3``, ``-flux``, ``-pixart``, ``-sana``) the same
plain ``pipe(...)`` call with recording off and with the default recording (every site, every step, head mean,
prompt tokens, fp16, a fresh run store), interleaved pairs; median of the paired ratios with a 95 % bootstrap
interval. Results are appended per pair to ``--out`` (JSON lines), so an interrupted run loses nothing and a rerun
adds pairs.

``size``: every family's real denoiser is built on the ``meta`` device from its published config (no weights, no
memory), its sites are listed by attnlens's own rules and their map shape is the token grid at the native
resolution; bytes = sites × steps × h·w × recorded positions × 2 (fp16), for the default steps of the pipeline
and the text positions of ``--prompt`` under the default prompt-token selection and with every position.

    python benchmarks/family_record.py overhead --pairs 15 --steps 20 --threads 1 --out /tmp/family_overhead.jsonl
    python benchmarks/family_record.py size
    python benchmarks/family_record.py report --out /tmp/family_overhead.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import attnlens
from attnlens.models.families import t5_tokenizer
from attnlens.recording.dit import dit_sites
from attnlens.recording.recorder import cross_attention_layers
from attnlens.tokenizer import clip_tokenizer

PROMPT = "a red crown and a golden strawberry on a wooden table"
TINY = {
    "sdxl": ("attnlens-tiny-sdxl", dict(height=16, width=16)),
    "sd3": ("attnlens-tiny-sd3", dict(height=64, width=64, max_sequence_length=256)),
    "flux": ("attnlens-tiny-flux", dict(height=64, width=64, max_sequence_length=512)),
    "pixart": ("attnlens-tiny-pixart", dict(height=64, width=64, use_resolution_binning=False)),
    "sana": ("attnlens-tiny-sana", dict(height=64, width=64, use_resolution_binning=False)),
}

#: the published configs (the hub's config.json values that set the sites and the grid), default steps and text
REAL = {
    "SDXL base 1.0 (stabilityai/stable-diffusion-xl-base-1.0)": dict(
        family="sdxl", cls="UNet2DConditionModel", steps=50, side=1024, vae=8, patch=1, text=[("clip", 77)],
        config=dict(sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
                    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                    projection_class_embeddings_input_dim=2816)),
    "SD3.5 Medium (stabilityai/stable-diffusion-3.5-medium)": dict(
        family="sd3", cls="SD3Transformer2DModel", steps=28, side=1024, vae=8, patch=2,
        text=[("clip", 77), ("t5", 256)],
        config=dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                    num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                    pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384, qk_norm="rms_norm",
                    dual_attention_layers=tuple(range(13)))),
    "FLUX.1-dev (black-forest-labs/FLUX.1-dev)": dict(
        family="flux", cls="FluxTransformer2DModel", steps=28, side=1024, vae=8, patch=1, text=[("t5", 512)],
        config=dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                    guidance_embeds=True, axes_dims_rope=(16, 56, 56))),
    "PixArt-Σ XL 1024 (PixArt-alpha/PixArt-Sigma-XL-2-1024-MS)": dict(
        family="pixart", cls="PixArtTransformer2DModel", steps=20, side=1024, vae=8, patch=2, text=[("t5", 300)],
        config=dict(sample_size=128, num_layers=28, patch_size=2, attention_head_dim=72, num_attention_heads=16,
                    caption_channels=4096, in_channels=4, cross_attention_dim=1152, out_channels=8,
                    attention_bias=True, activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
                    norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
                    interpolation_scale=2)),
    "Sana 600M 1024 (Efficient-Large-Model/Sana_600M_1024px_diffusers)": dict(
        family="sana", cls="SanaTransformer2DModel", steps=20, side=1024, vae=32, patch=1, text=[("gemma", 300)],
        config=dict(in_channels=32, out_channels=32, num_attention_heads=36, attention_head_dim=32, num_layers=28,
                    num_cross_attention_heads=16, cross_attention_head_dim=72, cross_attention_dim=1152,
                    caption_channels=2304, sample_size=32, patch_size=1)),
}


def prompt_positions(encoder: str, prompt: str) -> int:
    """Positions the default selection keeps: CLIP <sot>…<eot>; T5 pieces + </s>; Gemma <bos> + pieces (counted
    with attnlens's own tokenizers: T5's and Gemma's real vocabularies split words a little less)."""
    if encoder == "clip":
        return len(clip_tokenizer()(prompt).input_ids)
    n = len(t5_tokenizer()(prompt).input_ids)
    return n  # T5: pieces + </s>; Gemma: <bos> + pieces (same count, its pieces are as fine as this T5's)


def store_size(prompt: str) -> list[dict]:
    import diffusers

    rows = []
    for label, spec in REAL.items():
        with torch.device("meta"):
            net = getattr(diffusers, spec["cls"])(**spec["config"])
        if spec["family"] == "sdxl":
            sites = cross_attention_layers(net)
            side = spec["side"] // spec["vae"]
            pixels = 0
            for name in sites:  # down_blocks.1 / up_blocks.1 at 1/2, down_blocks.2 / mid / up_blocks.0 at 1/4
                parts = name.split(".")
                f = {"down_blocks": lambda i: 2 ** i, "up_blocks": lambda i: 2 ** (2 - i)}.get(parts[0], lambda i: 4)(
                    int(parts[1]) if parts[1].isdigit() else 0)
                pixels += (side // f) ** 2
        else:
            sites = dit_sites(net, spec["family"])
            grid = spec["side"] // spec["vae"] // spec["patch"] // (2 if spec["family"] == "flux" else 1)
            pixels = len(sites) * grid * grid
        del net
        kept = sum(prompt_positions(enc, prompt) for enc, _ in spec["text"])
        every = sum(n for _, n in spec["text"])
        raw = lambda t: spec["steps"] * pixels * t * 2  # noqa: E731  (fp16, head mean, one sample)
        rows.append(dict(model=label, sites=len(sites), pixels_per_token_step=pixels, steps=spec["steps"],
                         positions_prompt=kept, positions_all=every, bytes_prompt=raw(kept), bytes_all=raw(every)))
    return rows


def _once(pipe, kw, out: Path | None) -> float:
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    if out is None:
        pipe(PROMPT, generator=gen, output_type="latent", **kw)
    else:
        with attnlens.record(pipe, out, prompts=[PROMPT], seeds=[0]):
            pipe(PROMPT, generator=gen, output_type="latent", **kw)
    return time.perf_counter() - t0


def overhead(pairs: int, steps: int, out: Path, families: list[str]) -> None:
    pipes = {f: attnlens.load_pipeline(TINY[f][0], device="cpu") for f in families}
    for p in pipes.values():
        p.set_progress_bar_config(disable=True)
    with tempfile.TemporaryDirectory() as tmp:
        for f in families:  # warm-up: first calls build caches and layer templates
            kw = dict(num_inference_steps=steps, **TINY[f][1])
            _once(pipes[f], kw, None), _once(pipes[f], kw, Path(tmp) / f"warm-{f}")
        for i in range(pairs):
            for f in families:  # interleaved: every family's pair in each round, off/on order alternating
                kw = dict(num_inference_steps=steps, **TINY[f][1])
                run = Path(tmp) / f"{f}-{i}"
                order = (None, run) if i % 2 == 0 else (run, None)
                t = {("on" if o is not None else "off"): _once(pipes[f], kw, o) for o in order}
                size = sum(p.stat().st_size for p in run.rglob("*") if p.is_file())
                with out.open("a") as fh:
                    fh.write(json.dumps({"family": f, "pair": i, "steps": steps, **t, "store_bytes": size}) + "\n")
                print(f, i, {k: round(v, 3) for k, v in t.items()}, flush=True)


def median_ci(values: list[float], n_boot: int = 5000, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    v = np.asarray(values)
    boots = np.median(rng.choice(v, size=(n_boot, len(v)), replace=True), axis=1)
    return [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]


def report(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    table = []
    for f in dict.fromkeys(r["family"] for r in rows):
        rs = [r for r in rows if r["family"] == f]
        ratios = [r["on"] / r["off"] for r in rs]
        table.append(dict(family=f, pairs=len(rs), steps=rs[0]["steps"], off=statistics.median(r["off"] for r in rs),
                          on=statistics.median(r["on"] for r in rs), ratio=statistics.median(ratios),
                          ci=median_ci(ratios), store_bytes=statistics.median(r["store_bytes"] for r in rs)))
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["overhead", "size", "report"])
    ap.add_argument("--pairs", type=int, default=15)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--families", default=",".join(TINY))
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--out", type=Path, default=Path("family_overhead.jsonl"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.what == "overhead":
        overhead(args.pairs, args.steps, args.out, args.families.split(","))
    elif args.what == "size":
        for r in store_size(args.prompt):
            print(json.dumps(r))
    else:
        for r in report(args.out):
            print(json.dumps(r))


if __name__ == "__main__":
    main()
