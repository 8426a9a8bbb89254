"""Structured Diffusion against its released attention layer: the same weights, queries and encodings both ways.

    python benchmarks/structured_released_check.py --released /path/to/Structured-Diffusion-Guidance \
        [--extra-path folder-with-einops] [--trials 20]

``--released`` is a checkout of weixi-feng/Structured-Diffusion-Guidance (its ``structured_stable_diffusion``
package; ``einops`` must be importable). For random weights, a random [unconditional, conditional] batch and random
encodings of the prompt and of two noun phrases, the released ``CrossAttention`` (``struct_attn=True``, one key,
several values: the demo's default path, values aligned as its ``align_sequence`` does) and a diffusers ``Attention``
with the same weights under ``StructuredProcessor`` compute the layer; prints the largest absolute difference of the
outputs (the conditional and unconditional rows) as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from attnlens.methods.structured import StructuredProcessor, structured_values


def aligned(main: torch.Tensor, seq: torch.Tensor, span: tuple[int, int]) -> torch.Tensor:
    """The released ``multi_align`` on ``(1, 77, D)`` sequences, ``span`` 0-based without ``<sot>`` (end exclusive)."""
    out = main.clone()
    start, end = span[0] + 1, span[1] + 1
    out[:, start:end] = seq[:, 1 : 1 + end - start]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--released", type=Path, required=True)
    ap.add_argument("--extra-path", type=Path, action="append", default=[])
    ap.add_argument("--trials", type=int, default=20)
    args = ap.parse_args()
    sys.path[:0] = [str(args.released), *map(str, args.extra_path)]
    from structured_stable_diffusion.modules.attention import CrossAttention  # noqa: E402  (a script, by path)

    torch.manual_seed(0)
    worst = {"cond": 0.0, "uncond": 0.0}
    for _ in range(args.trials):
        dim, ctx, heads, dh, n = 32, 16, 4, 8, 64
        theirs = CrossAttention(dim, ctx, heads=heads, dim_head=dh, struct_attn=True).eval()
        mine = Attention(dim, cross_attention_dim=ctx, heads=heads, dim_head=dh, bias=False, out_bias=True).eval()
        with torch.no_grad():
            for name in ("to_q", "to_k", "to_v"):
                getattr(mine, name).weight.copy_(getattr(theirs, name).weight)
            mine.to_out[0].weight.copy_(theirs.to_out[0].weight)
            mine.to_out[0].bias.copy_(theirs.to_out[0].bias)
        x = torch.randn(2, n, dim)
        uc, c0, c1, c2 = (torch.randn(1, 77, ctx) for _ in range(4))
        spans = [(0, 3), (4, 7)]  # 0-based word-piece spans, end exclusive (the released convention)
        values = [c0] + [aligned(c0, c, s) for c, s in zip((c1, c2), spans)]
        with torch.no_grad():
            ref = theirs(x, context=[uc, {"k": [c0], "v": values}])
            vals = structured_values(c0[0], [c1[0], c2[0]], [(s + 1, e) for s, e in spans])
            assert all(torch.equal(v[0], w) for v, w in zip(values, vals))
            proc = StructuredProcessor(AttnProcessor2_0(), c0[0], vals)
            got = proc(mine, x, encoder_hidden_states=torch.cat([uc, c0]))
        worst["uncond"] = max(worst["uncond"], float((got[0] - ref[0]).abs().max()))
        worst["cond"] = max(worst["cond"], float((got[1] - ref[1]).abs().max()))
    print(json.dumps({"trials": args.trials, "max_abs_diff": worst, "output_scale": float(ref.abs().mean())}))


if __name__ == "__main__":
    main()
