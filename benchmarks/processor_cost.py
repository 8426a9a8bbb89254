"""What recording adds to one cross-attention call: the original processor against the recording one, interleaved.

For each attn2 layer of the model (or the ``--layer`` given), calls the layer's original processor and the
recorder's ``RecordingProcessor`` on the same inputs (a CFG batch of two, the conditional half recorded, as in
sampling), alternately, and prints the median time of each and the difference. The recorded maps are handed to the
recorder as in a real run and then dropped, so the writer and the disk are not measured here (see
``record_overhead.py`` for the whole run). ``--kernel softmax`` forces the second-softmax path instead of SDPA's
log-sum-exp, to compare the two.

    python benchmarks/processor_cost.py [--model attnlens-shapes] [--threads 2] [--calls 400] [--kernel lse|softmax]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import attnlens
from attnlens import recorder as R


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=attnlens.DEFAULT_MODEL)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--layer", default=None, help="one attn2 layer (default: one layer per resolution)")
    ap.add_argument("--kernel", choices=("lse", "softmax"), default="lse")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.kernel == "softmax":
        R._FLASH_CPU = None
    pipe = attnlens.load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    prompt = "a red crown and a golden strawberry on a wooden table"
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        rec = attnlens.record(pipe, Path(tmp) / "r", prompts=[prompt], seeds=[0])
        with rec:
            pipe(prompt, num_inference_steps=1, output_type="latent")  # sets the latent size, tokens, layers
            res = rec.resolutions()
            names = [args.layer] if args.layer else list({res[n]: n for n in rec.layers}.values())
            rec.step, rec.phase, rec._cfg, rec._batch = 1, "sample", True, 1
            for name in names:
                attn = rec.attn2[name]
                proc, orig = attn.processor, attn.processor.original
                h, w = res[name]
                hs = torch.randn(2, h * w, attn.to_q.in_features)
                enc = torch.randn(2, 77, attn.to_k.in_features)
                t_orig, t_rec = [], []
                for _ in range(args.calls):
                    t = time.perf_counter()
                    orig(attn, hs, enc)
                    t_orig.append(time.perf_counter() - t)
                    t = time.perf_counter()
                    proc(attn, hs, enc)
                    t_rec.append(time.perf_counter() - t)
                    rec._pending.clear()  # drop the queued map: the writer is not measured here
                a, b = statistics.median(t_orig), statistics.median(t_rec)
                print(f"{name:58s} {h}x{w}: original {a * 1e6:7.0f} us, recording {b * 1e6:7.0f} us, "
                      f"added {(b - a) * 1e6:6.0f} us  ({args.kernel}, {args.threads} threads)")


if __name__ == "__main__":
    main()
