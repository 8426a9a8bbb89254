"""InitNO against its released code on the embedded model: the same latents, the loss and its gradient both ways.

    python benchmarks/initno_released_check.py --released /path/to/initno [--model attnlens-tiny] [--threads 1]

``--released`` is a checkout of xiefan-guo/initno (its ``initno/`` and ``utils/`` folders); its imports need
``cv2`` (``pip install opencv-python-headless``; a folder with it can be given with ``--extra-path``). The released
``AttendExciteAttnProcessor`` is installed on every attention layer of the UNet (restored afterwards) and its
``fn_compute_loss`` (noise search) and ``fn_augmented_compute_losss`` (guided sampling, two calls so that the running
average is used) are called as methods of a stand-in object holding the attention store; attnlens runs the same
latents through ``guidance_forward`` with the live cross- and self-attention maps. Prints one JSON object: each
loss term both ways, and the relative difference of the gradients with respect to the latent.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

import attnlens
from attnlens.methods.initno import initno_guidance_loss, initno_search_loss, otsu_threshold, peak_component
from attnlens.parse import parse_prompt
from attnlens.sampler import guidance_forward


def released_losses(pipe, released, z, t, cond, indices):
    """(search joint, cross, self), grad; (guided joint, cross, clean, self) × 2 calls, grads — the released way."""
    ptp = sys.modules["utils.ptp_utils"]
    cls = released.StableDiffusionInitNOPipeline
    store = ptp.AttentionStore((16, 16))
    fake = SimpleNamespace(attention_store=store, _execution_device=z.device, cross_attention_maps_cache=None)
    originals = dict(pipe.unet.attn_processors)
    procs = {}
    for name in originals:
        place = "mid" if name.startswith("mid_block") else "up" if name.startswith("up_blocks") else "down"
        procs[name] = ptp.AttendExciteAttnProcessor(attnstore=store, place_in_unet=place)
    store.num_att_layers = len(procs)
    pipe.unet.set_attn_processor(procs)
    out = {}
    try:
        with torch.enable_grad():
            leaf = z.clone().requires_grad_(True)
            pipe.unet(leaf, t, encoder_hidden_states=cond)
            joint, cross, self_l = cls.fn_compute_loss(fake, indices=indices, K=1)
            out["search"] = {"loss": float(joint), "cross": float(cross), "self": float(self_l)}
            out["search_grad"] = torch.autograd.grad(joint.sum(), [leaf])[0]
            for k, zz in enumerate((z, z * 0.9)):
                leaf = zz.clone().requires_grad_(True)
                pipe.unet(leaf, t, encoder_hidden_states=cond)
                joint, cross, clean, self_l = cls.fn_augmented_compute_losss(fake, indices=indices, K=1)
                out[f"guided_{k}"] = {"loss": float(joint), "cross": float(cross), "clean": float(clean),
                                      "self": float(self_l)}
                out[f"guided_{k}_grad"] = torch.autograd.grad(joint, [leaf])[0]
    finally:
        pipe.unet.set_attn_processor(originals)
    return out


def attnlens_losses(pipe, z, t, cond, parse):
    method = attnlens.get_method("initno")
    indices = method.indices(parse)
    out = {}
    with attnlens.record(pipe, None) as rec:
        rec.latent_hw = tuple(z.shape[-2:])
        rec.need_live = set(method.layers(rec.resolutions()))
        rec.watch_self_attention(method.self_attention_layers(rec.resolutions()))
        leaf, _ = guidance_forward(pipe, rec, method, parse, z, t, cond, step=0)
        agg, self_agg = method.aggregates(rec.live_maps)
        loss, terms = initno_search_loss(agg, self_agg, indices)
        out["search"] = {"loss": float(loss), **{k: float(v) for k, v in terms.items()}}
        out["search_grad"] = torch.autograd.grad(loss, [leaf])[0]
        method._cache = None
        for k, zz in enumerate((z, z * 0.9)):
            leaf, lo = guidance_forward(pipe, rec, method, parse, zz, t, cond, step=0, iteration=k)
            out[f"guided_{k}"] = {"loss": float(lo.loss), **{n: float(lo.terms[n]) for n in ("cross", "clean", "self")}}
            out[f"guided_{k}_grad"] = torch.autograd.grad(lo.loss, [leaf])[0]
    return out, indices


def synthetic(released, n: int, seed: int = 0) -> dict[str, float]:
    """The released loss functions and attnlens's on random peaked maps (two layers, 8 heads, 16², 77 tokens), where
    the clean and self terms are active: the largest differences of each term and of the gradient w.r.t. the maps,
    and how often the Otsu threshold (cv2) and the cleaned mask differ."""
    ptp, au = sys.modules["utils.ptp_utils"], sys.modules["utils.attn_utils"]
    cls = released.StableDiffusionInitNOPipeline
    g = torch.Generator().manual_seed(seed)
    worst: dict[str, float] = {}
    otsu_diff = mask_diff = 0
    method = attnlens.get_method("initno")
    for _ in range(n):
        sharp = float(torch.empty(1).uniform_(1, 6, generator=g))
        cross = [torch.softmax(torch.randn(8, 256, 77, generator=g) * sharp, -1).requires_grad_(True) for _ in range(2)]
        selfs = [torch.softmax(torch.randn(8, 256, 256, generator=g) * sharp, -1).requires_grad_(True) for _ in range(2)]
        indices = sorted(torch.randperm(6, generator=g)[:3].add(1).tolist())
        store = ptp.AttentionStore((16, 16))
        store.attention_store = {**store.get_empty_store(), "down_cross": cross, "down_self": selfs}
        fake = SimpleNamespace(attention_store=store, _execution_device="cpu", cross_attention_maps_cache=None)
        maps = {f"l{k}.attn2": c.view(8, 16, 16, 77) for k, c in enumerate(cross)}
        maps.update({f"l{k}.attn1": s.view(8, 16, 16, 256) for k, s in enumerate(selfs)})
        agg, self_agg = method.aggregates(maps)
        for name, theirs_fn, mine_fn in (
                ("search", lambda: cls.fn_compute_loss(fake, indices=indices, K=1),
                 lambda: initno_search_loss(agg, self_agg, indices)),
                ("guided", lambda: cls.fn_augmented_compute_losss(fake, indices=indices, K=1),
                 lambda: initno_guidance_loss(agg, self_agg, indices)[:2])):
            theirs = theirs_fn()
            loss, terms = mine_fn()
            t_loss = theirs[0].sum()
            worst[f"{name}_loss"] = max(worst.get(f"{name}_loss", 0.0), abs(float(loss) - float(t_loss)))
            worst[f"{name}_cross"] = max(worst.get(f"{name}_cross", 0.0), abs(float(terms["cross"]) - float(theirs[1])))
            t_self = theirs[-1] if name == "guided" else theirs[2]
            worst[f"{name}_self"] = max(worst.get(f"{name}_self", 0.0), abs(float(terms["self"]) - float(t_self)))
            g1 = torch.autograd.grad(loss, cross + selfs, allow_unused=True, retain_graph=True)
            g2 = torch.autograd.grad(t_loss, cross + selfs, allow_unused=True, retain_graph=True)
            diff = max(float((a - b).abs().max()) if a is not None and b is not None else
                       float((a if a is not None else b).abs().max()) if (a is not None or b is not None) else 0.0
                       for a, b in zip(g1, g2))
            worst[f"{name}_grad_max_abs_diff"] = max(worst.get(f"{name}_grad_max_abs_diff", 0.0), diff)
            worst[f"{name}_clean_active"] = worst.get(f"{name}_clean_active", 0) + int(float(terms["clean"]) > 0)
        m = torch.softmax(100 * agg[..., 1:-1], -1)[..., indices[0] - 1]
        mask_t = au.fn_get_otsu_mask(m)
        mask_m = (m >= otsu_threshold(m)).to(m.dtype)
        otsu_diff += int(not torch.equal(mask_t, mask_m))
        r, c = divmod(int(m.reshape(-1).argmax()), 16)
        mask_diff += int(not torch.equal(au.fn_clean_mask(mask_t.clone(), r, c), peak_component(mask_m, r, c)))
    return {**worst, "maps": n, "otsu_mask_differs": otsu_diff, "clean_mask_differs": mask_diff}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--released", type=Path, required=True)
    ap.add_argument("--extra-path", type=Path, action="append", default=[])
    ap.add_argument("--model", default="attnlens-tiny")
    ap.add_argument("--prompt", default="a red crown and a golden strawberry")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--synthetic", type=int, default=50, help="random peaked map sets for the term-by-term check")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sys.path[:0] = [str(args.released), *map(str, args.extra_path)]
    import initno.pipelines.pipeline_sd_initno as released  # noqa: E402  (a script: the released code, by path)

    pipe = attnlens.load_pipeline(args.model)
    parse = parse_prompt(args.prompt, tokenizer=pipe.tokenizer)
    pipe.scheduler.set_timesteps(50)
    t = pipe.scheduler.timesteps[0]
    with torch.no_grad():
        cond, _ = pipe.encode_prompt(args.prompt, pipe.unet.device, 1, False)
    h = pipe.unet.config.sample_size
    report = []
    for seed in args.seeds:
        z = torch.randn(1, pipe.unet.config.in_channels, h, h, generator=torch.Generator().manual_seed(seed))
        mine, indices = attnlens_losses(pipe, z, t, cond, parse)
        theirs = released_losses(pipe, released, z, t, cond, indices)
        row = {"seed": seed, "indices": indices}
        for key in ("search", "guided_0", "guided_1"):
            row[key] = {n: {"attnlens": mine[key][n], "released": theirs[key][n]} for n in theirs[key]}
            g1, g2 = mine[f"{key}_grad"], theirs[f"{key}_grad"]
            row[key]["grad_rel_diff"] = float((g1 - g2).norm() / g2.norm().clamp_min(1e-30))
        report.append(row)
    print(json.dumps({"embedded_model": report, "synthetic": synthetic(released, args.synthetic)}, indent=1))


if __name__ == "__main__":
    main()
