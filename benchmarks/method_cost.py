"""Cost of guidance: time per image of each method against ``none``, and one guidance step against a plain forward.

    python benchmarks/method_cost.py [--repeats 3] [--n-steps 50] [--threads 2] [--methods none,a-star]

Runs are interleaved (method order rotates every repeat) and recorded to a temporary store with the default
recording (all layers, head mean, prompt tokens), as ``attnlens record`` does.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

import attnlens
from attnlens.parse import parse_prompt
from attnlens.sampler import guidance_forward

METHODS = ["none", "syngen", "syngen-entropy", "attend-excite", "divide-bind", "conform", "ebama", "initno", "structured"]
METHODS += ["a-star", "predicated"]  # issue 17


def per_call_costs(pipe, prompt: str, repeats: int) -> dict[str, float]:
    """Median seconds of one plain CFG forward (batch 2, no grad) and of one guidance step (forward + backward)."""
    device = pipe.unet.device
    pipe.scheduler.set_timesteps(50)
    t = pipe.scheduler.timesteps[0]
    h = pipe.unet.config.sample_size
    z = torch.randn(1, pipe.unet.config.in_channels, h, h, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(prompt, device, 1, True)
    method = attnlens.get_method("syngen")
    parse = parse_prompt(prompt, tokenizer=pipe.tokenizer)
    plain, guided = [], []
    with attnlens.record(pipe, None) as rec:
        rec.latent_hw = (h, h)
        rec.need_live = set(method.layers(rec.resolutions()))
        rec.set_batch_layout(True)
        for _ in range(repeats * 5):
            t0 = time.perf_counter()
            with torch.no_grad(), rec.context(0, float(t), phase="sample"):
                pipe.unet(torch.cat([z, z]), t, encoder_hidden_states=torch.cat([uncond, cond]), return_dict=False)
            plain.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            leaf, out = guidance_forward(pipe, rec, method, parse, z, t, cond, step=0)
            torch.autograd.grad(out.loss, [leaf])
            guided.append(time.perf_counter() - t0)
    return {"plain_cfg_forward_s": statistics.median(plain), "guidance_step_s": statistics.median(guided),
            "guidance_step_over_plain_forward": statistics.median(guided) / statistics.median(plain)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-steps", dest="steps", type=int, default=50, help="denoising steps")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="attnlens-tiny")
    ap.add_argument("--prompt", default="a red crown and a golden strawberry")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--methods", default=",".join(METHODS),
                    help="comma-separated subset to time (none is always included, as the reference)")
    args = ap.parse_args()
    methods = ["none"] + [m for m in args.methods.split(",") if m and m != "none"]
    torch.set_num_threads(args.threads)
    pipe = attnlens.load_pipeline(args.model)
    tmp = Path(tempfile.mkdtemp(prefix="attnlens-methods-"))
    times: dict[str, list[float]] = {m: [] for m in methods}
    refinements: dict[str, float] = {}
    try:
        attnlens.sample(pipe, args.prompt, method="syngen", seed=0, num_inference_steps=2, out=tmp / "warm")
        for r in range(args.repeats):
            order = methods[r % len(methods):] + methods[: r % len(methods)]
            for m in order:
                t0 = time.perf_counter()
                run = attnlens.sample(pipe, args.prompt, method=m, seed=r, num_inference_steps=args.steps,
                                      out=tmp / f"{m}-{r}")
                times[m].append(time.perf_counter() - t0)
                sc = run.scalars().get("refinement_iterations")
                refinements[m] = float(sc[:, 0, 0][~torch.isnan(torch.from_numpy(sc[:, 0, 0])).numpy()].sum()) if sc is not None else 0.0
        result = {
            "model": args.model, "threads": args.threads, "steps": args.steps, "repeats": args.repeats,
            "median_s": {m: statistics.median(v) for m, v in times.items()},
            "ratio_to_none": {m: statistics.median(v) / statistics.median(times["none"]) for m, v in times.items()},
            "refinement_iterations_last_run": refinements,
            **per_call_costs(pipe, args.prompt, args.repeats),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=2))
    for m in methods:
        print(f"{m:16s} {result['median_s'][m]:7.2f} s/image   x{result['ratio_to_none'][m]:.2f} of none")
    print(f"one guidance step (forward + backward, cond only) = {result['guidance_step_over_plain_forward']:.2f} "
          f"plain CFG forwards")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
