"""Recording overhead: the same sampling with recording off and with full recording, interleaved.

Full recording = every attn2 layer, every step, head mean, prompt tokens, fp16, written to a fresh run store.
Reports median wall times, their ratio (target ≤ 1.15 on 2 CPU cores with the embedded model), the bytes stored per
step and per run, and the store size of a 50-step SD 1.5 run at 512×512 computed from its layer shapes: map bytes at
the compression this model's map chunks get, plus the per-layer metadata and the latents at theirs (the
final PNG is not counted; latents in float16, as SD 1.5 runs on a GPU). ``benchmarks/store_codecs.py`` measures how much better large, smooth maps compress.

    python benchmarks/record_overhead.py [--repeats 31] [--n-steps 50] [--model attnlens-shapes|attnlens-tiny] [--device cpu]

On a GPU pass e.g. ``--sd15-shaped`` to build an SD 1.5-shaped UNet with random weights (no download needed).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from attnlens.store import data_path

import attnlens

SD15_LAYERS = {64: 5, 32: 5, 16: 5, 8: 1}  # attn2 layers of SD 1.x at 512×512 by map side (down 2+2+2, mid 1, up 3+3+3)


def sd15_shaped_pipe(device: str, dtype: torch.dtype):
    """The embedded pipeline with its UNet replaced by an SD 1.5-shaped one (random weights, 64×64 latent)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    pipe = attnlens.load_pipeline("attnlens-tiny", device="cpu", dtype=torch.float32)
    torch.manual_seed(0)
    pipe.unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # the SD 1.x default config
    torch.manual_seed(0)
    pipe.text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                     num_attention_heads=12, max_position_embeddings=77,
                                                     projection_dim=768))
    pipe.register_modules(unet=pipe.unet, text_encoder=pipe.text_encoder)
    return pipe.to(device=device, dtype=dtype)


def run_once(pipe, prompt: str, steps: int, out: Path | None, seed: int = 0) -> float:
    gen = torch.Generator(device=pipe.unet.device.type).manual_seed(seed)
    kwargs = dict(num_inference_steps=steps, generator=gen, output_type="latent")
    if pipe.unet.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    if out is None:
        pipe(prompt, **kwargs)
    else:
        with attnlens.record(pipe, out, prompts=[prompt], seeds=[seed]):
            pipe(prompt, **kwargs)
    if pipe.unet.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def median_ci(values: list[float], n_boot: int = 5000, seed: int = 0) -> list[float]:
    """95 % bootstrap interval of the median (the host's speed drifts by ±25 % here, so one ratio means little)."""
    rng = np.random.default_rng(seed)
    v = np.asarray(values)
    boots = np.median(rng.choice(v, (n_boot, len(v))), axis=1)
    return [float(x) for x in np.percentile(boots, [2.5, 97.5])]


def store_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in (data_path(path) / "attention").rglob("*") if f.is_file())


def map_chunk_bytes(path: Path) -> int:
    """Bytes of the map chunks alone (what grows with map area and token count)."""
    return sum(f.stat().st_size for f in (data_path(path) / "attention").glob("*/maps/c*") if f.is_file())


def fp16_ratio(latents: np.ndarray) -> float:
    """Compressed / raw size of ``latents`` as float16 chunks (one per step) under the store's codec."""
    from numcodecs import Blosc

    codec = Blosc(cname="zstd", clevel=5, shuffle=Blosc.BITSHUFFLE, typesize=2)
    half = latents.astype("<f2")
    return sum(len(codec.encode(np.ascontiguousarray(c))) for c in half) / half.nbytes


def upsampled_ratio(run) -> float:
    """Compressed / raw size of this run's map chunks upsampled ×4 (bilinear) under the store's codec: how large,
    smooth maps compress (``benchmarks/store_codecs.py`` compares codecs on the same proxy)."""
    from numcodecs import Blosc

    from store_codecs import chunks_of

    codec = Blosc(cname="zstd", clevel=5, shuffle=Blosc.BITSHUFFLE, typesize=2)
    chunks = chunks_of(run, upsample=4)
    return sum(len(codec.encode(c)) for c in chunks) / sum(c.nbytes for c in chunks)


def latent_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in (data_path(path) / "latents" / "latents").rglob("c*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=31,
                    help="interleaved pairs (default 31: this host's speed drifts, a few pairs mean little)")
    ap.add_argument("--n-steps", dest="steps", type=int, default=50, help="denoising steps")
    ap.add_argument("--model", default=attnlens.DEFAULT_MODEL, help="default: the embedded default model")
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sd15-shaped", action="store_true", help="SD 1.5-shaped UNet with random weights (for GPUs)")
    ap.add_argument("--prompt", default="a red crown and a golden strawberry on a wooden table")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device, dtype = attnlens.models.default_device_dtype(args.device, None)
    pipe = sd15_shaped_pipe(str(device), dtype) if args.sd15_shaped else attnlens.load_pipeline(args.model, device=device)
    pipe.set_progress_bar_config(disable=True)
    tmp = Path(tempfile.mkdtemp(prefix="attnlens-bench-"))
    try:
        run_once(pipe, args.prompt, 2, None)  # warm-up (allocator, kernels, lazy imports)
        run_once(pipe, args.prompt, 2, tmp / "warm")
        times: dict[str, list[float]] = {"off": [], "record": []}
        for r in range(args.repeats):
            order = ("off", "record") if r % 2 == 0 else ("record", "off")
            for mode in order:
                out = None if mode == "off" else tmp / f"r{r}"
                times[mode].append(run_once(pipe, args.prompt, args.steps, out))
        ratios = [b / a for a, b in zip(times["off"], times["record"])]
        run = attnlens.open_run(tmp / "r0")
        n_steps = len(run.timesteps())
        stored = store_bytes(tmp / "r0")
        raw = sum(int(np.prod(run.array(l).shape[3:])) * 2 for l in run.layers) * n_steps
        chunks = map_chunk_bytes(tmp / "r0")
        per_layer = (stored - chunks) / len(run.layers)  # metadata and coordinates: fixed per layer
        lat = run.latents()
        latent_ratio = latent_bytes(tmp / "r0") / lat.nbytes  # float32, as stored by this CPU run
        latent16_ratio = fp16_ratio(lat)  # SD 1.5 on a GPU runs (and stores its latents) in float16
        smooth_ratio = upsampled_ratio(run)  # proxy for SD's large, smooth 64×64 / 32×32 maps
        n_tokens = run.array(run.layers[0]).shape[5]
        px_sd15 = sum(n * s * s for s, n in SD15_LAYERS.items())
        sd15_raw = px_sd15 * n_tokens * 2 * 51
        sd15_latents_raw = 51 * 4 * 64 * 64 * 2  # float16 latent entering each step (the GPU default)
        sd15_fixed = per_layer * sum(SD15_LAYERS.values())
        result = {
            "device": str(device), "threads": args.threads, "model": "sd15-shaped" if args.sd15_shaped else args.model,
            "steps": args.steps, "timesteps": n_steps, "repeats": args.repeats, "prompt_tokens": n_tokens,
            "median_off_s": statistics.median(times["off"]), "median_record_s": statistics.median(times["record"]),
            "median_ratio": statistics.median(ratios),
            "ratio_quartiles": [float(q) for q in np.percentile(ratios, [25, 75])],
            "median_ratio_ci95": median_ci(ratios),
            "times_off_s": times["off"], "times_record_s": times["record"], "ratio_of_medians":
                statistics.median(times["record"]) / statistics.median(times["off"]),
            "stored_bytes_per_run": stored, "stored_bytes_per_step": stored / n_steps,
            "raw_bytes_per_run": raw, "compression": stored / raw, "map_chunk_compression": chunks / raw,
            "fixed_bytes_per_layer": per_layer, "latent_compression": latent_ratio,
            "latent_fp16_compression": latent16_ratio,
            "sd15_512_raw_bytes": sd15_raw, "sd15_512_estimated_map_bytes": sd15_raw * chunks / raw,
            "sd15_512_estimated_latent_bytes": sd15_latents_raw * latent16_ratio,
            "sd15_512_estimated_bytes": sd15_raw * chunks / raw + sd15_fixed + sd15_latents_raw * latent16_ratio,
            "upsampled_x4_map_compression": smooth_ratio,
            "sd15_512_estimated_bytes_smooth_maps": sd15_raw * smooth_ratio + sd15_fixed + sd15_latents_raw * latent16_ratio,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=2))
    q1, q3 = result["ratio_quartiles"]
    lo, hi = result["median_ratio_ci95"]
    print(f"\nrecording overhead: median ratio {result['median_ratio']:.3f} (95% CI {lo:.3f}-{hi:.3f}, quartiles "
          f"{q1:.3f}-{q3:.3f}; off "
          f"{result['median_off_s']:.2f} s, record {result['median_record_s']:.2f} s, {args.repeats} interleaved repeats)")
    print(f"stored: {stored / 1e6:.2f} MB per run, {stored / n_steps / 1e3:.1f} kB per step "
          f"(compression {stored / raw:.2f} of fp16 raw)")
    print(f"SD 1.5 512x512, 50 steps (51 timesteps), {n_tokens} tokens: maps {sd15_raw / 1e6:.1f} MB raw fp16, "
          f"~{result['sd15_512_estimated_map_bytes'] / 1e6:.1f} MB at this model's map compression "
          f"({chunks / raw:.3f}); with latents (~{result['sd15_512_estimated_latent_bytes'] / 1e6:.1f} MB) and "
          f"metadata: ~{result['sd15_512_estimated_bytes'] / 1e6:.1f} MB (image not counted); "
          f"~{result['sd15_512_estimated_bytes_smooth_maps'] / 1e6:.1f} MB if SD's maps compress like these maps "
          f"upsampled x4 ({smooth_ratio:.3f})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
