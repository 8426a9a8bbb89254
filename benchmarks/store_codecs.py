"""Which compressor for the stored maps: size and encode time of Blosc configurations on real recorded chunks.

Records one 50-step run of a model (default: the embedded default), takes every stored map chunk (one layer at one
step, fp16), and encodes each chunk with several Blosc configurations: the ratio to raw fp16 and the median
encode time per chunk. Because SD 1.5's store is dominated by 64×64 maps, which are smoother than a small model's
16×16 ones, the same chunks upsampled ×4 (bilinear) are measured too, as a proxy for large smooth maps.

    python benchmarks/store_codecs.py [--model attnlens-shapes] [--n-steps 50] [--json out.json]
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

CODECS = [("zstd", 5, "bit"), ("zstd", 9, "bit"), ("zstd", 3, "bit"), ("zstd", 1, "bit"), ("zstd", 5, "byte"), ("zstd", 1, "byte"),
          ("lz4", 5, "bit")]


def chunks_of(run, upsample: int = 1) -> list[np.ndarray]:
    out = []
    for layer in run.layers:
        a = np.asarray(run.array(layer)[:, 0, 0])  # (step, sample, head, token, y, x)
        if upsample > 1:
            t = torch.from_numpy(a.astype(np.float32))
            shape = t.shape
            t = torch.nn.functional.interpolate(t.reshape(-1, 1, *shape[-2:]), scale_factor=upsample, mode="bilinear",
                                                align_corners=False)
            a = t.reshape(*shape[:-2], *t.shape[-2:]).half().numpy()
        out.extend(np.ascontiguousarray(a[s], dtype="<f2").reshape(-1) for s in range(a.shape[0]))  # typesize 2, as stored
    return out


def measure(chunks: list[np.ndarray]) -> list[dict]:
    from numcodecs import Blosc

    Blosc.use_threads = False  # as in the recorder's writer thread
    raw = sum(c.nbytes for c in chunks)
    rows = []
    for cname, level, shuffle in CODECS:
        codec = Blosc(cname=cname, clevel=level, shuffle={"byte": Blosc.SHUFFLE, "bit": Blosc.BITSHUFFLE}[shuffle])
        times, size = [], 0
        for c in chunks:
            t = time.perf_counter()
            size += len(codec.encode(c))
            times.append(time.perf_counter() - t)
        rows.append({"codec": f"blosc {cname} {level} {shuffle}-shuffle", "ratio": round(size / raw, 3),
                     "encode_us_median": round(statistics.median(times) * 1e6, 1),
                     "encode_ms_total": round(sum(times) * 1e3, 1)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=attnlens.DEFAULT_MODEL)
    ap.add_argument("--n-steps", dest="steps", type=int, default=50, help="denoising steps")
    ap.add_argument("--prompt", default="a red crown and a golden strawberry on a wooden table")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    pipe = attnlens.load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    with tempfile.TemporaryDirectory() as tmp:
        with attnlens.record(pipe, Path(tmp) / "r", prompts=[args.prompt], seeds=[0]):
            pipe(args.prompt, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(0),
                 output_type="latent")
        run = attnlens.open_run(Path(tmp) / "r")
        result = {"model": args.model, "steps": args.steps, "prompt": args.prompt}
        for name, up in (("recorded", 1), ("upsampled_x4", 4)):
            chunks = chunks_of(run, up)
            result[name] = {"chunks": len(chunks), "mean_chunk_bytes": int(np.mean([c.nbytes for c in chunks])),
                            "codecs": measure(chunks)}
    for name in ("recorded", "upsampled_x4"):
        r = result[name]
        print(f"\n{name}: {r['chunks']} chunks of {r['mean_chunk_bytes']} bytes (mean)")
        for row in r["codecs"]:
            print(f"  {row['codec']:30s} ratio {row['ratio']:.3f}  {row['encode_us_median']:8.1f} us/chunk")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
