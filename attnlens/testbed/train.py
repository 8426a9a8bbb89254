"""Train the testbed model: a small Stable Diffusion (VAE, UNet, CLIP text encoder) on the shapes renderer.

One command, two phases, checkpoints and resume::

    python -m attnlens.testbed.train --out runs/testbed                # default sizes
    python -m attnlens.testbed.train --out runs/testbed --resume       # continue from the latest checkpoint
    python -m attnlens.testbed.train --out /tmp/t --preset tiny --vae-steps 4 --unet-steps 6   # smoke test, seconds

1. **VAE** — ``AutoencoderKL`` 64×64×3 → 16×16×4 trained on rendered training images with L1 reconstruction +
   ``kl_weight``·KL; at the end the latent scale is measured and stored as ``scaling_factor`` (SD: 0.18215).
2. **UNet + text encoder** — ``UNet2DConditionModel`` (cross-attention at 16×16 and 8×8) and a ``CLIPTextModel``
   trained jointly from scratch (vocabulary 49,408 with the real CLIP BPE tokenizer), epsilon prediction, SD's
   noise schedule (scaled_linear 0.00085–0.012, 1000 steps), 10 % empty captions for classifier-free guidance,
   AdamW, min-SNR-γ loss weights, EMA weights. Data is rendered on the fly (an endless, deterministic stream of the
   ``train`` split: held-out colour–shape pairs never appear).

Every ``checkpoint_every`` steps ``OUT/checkpoints/<phase>-<step>/`` receives the weights, the EMA weights and the
AdamW state as safetensors and a ``state.json`` (nothing is pickled; resuming never unpickles). The data, noise,
timesteps and caption dropout of step *s* are functions of ``(seed, s)`` only, so a resumed run sees exactly the
batches an uninterrupted one would. At the end ``OUT/pipeline`` is a ``StableDiffusionPipeline`` folder (EMA
weights, fp16 safetensors, PNDM scheduler with ``skip_prk_steps``, no safety checker) that loads with
``StableDiffusionPipeline.from_pretrained``.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from attnlens.models import load_pipeline
from attnlens.tokenizer import clip_tokenizer

from .evaluate import aggregate, score, vae_roundtrip, validate
from .render import render_batch

PHASES = ("vae", "unet")
ARCH_FIELDS = (
    "vae_channels", "vae_norm_groups", "text_width", "text_layers", "text_heads", "unet_channels",
    "unet_layers_per_block", "unet_heads", "unet_norm_groups",
)
SAMPLE_PROMPTS = (
    "a red square",
    "a blue circle",
    "a green circle and a yellow cross",
    "a purple triangle next to a pink circle",
    "a small yellow triangle and a big blue square",
    "a red triangle, a green square and a blue circle",
    "a red circle and a blue square",  # red circle is held out
    "a green triangle next to a yellow square",  # both held out
)


@dataclass
class TrainConfig:
    """Everything a run depends on; stored in ``OUT/config.json``. Architecture fields cannot change on resume."""

    seed: int = 0
    split: str = "train"
    # VAE
    vae_channels: tuple[int, ...] = (16, 32, 64)
    vae_norm_groups: int = 16
    vae_steps: int = 2000
    vae_batch: int = 16
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6
    vae_fg_weight: float = 4.0  # extra L1 weight on object pixels (objects cover ~15 % of an image)
    # text encoder (trained jointly with the UNet); text_layers=0 is a bag of words: each output position is
    # LayerNorm(token embedding + position embedding), so no word's conditioning depends on the other words
    text_width: int = 64
    text_layers: int = 3
    text_heads: int = 4
    # UNet
    unet_channels: tuple[int, ...] = (64, 128)
    unet_layers_per_block: int = 1
    unet_heads: int = 8
    unet_norm_groups: int = 32
    steps: int = 6000
    batch: int = 32
    lr: float = 3e-4
    warmup: int = 200
    weight_decay: float = 0.01
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    min_snr_gamma: float = 5.0  # 0 disables
    # bookkeeping
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    sample_every: int = 1000  # 0 disables sample grids
    vae_check: int = 100  # after the VAE phase: evaluator agreement on this many reconstructed scenes (0: skip)
    threads: int = 2
    # start from a trained pipeline (embedded name or folder): its VAE (frozen; no VAE phase), UNet and the text
    # encoder's embeddings and final norm; the text encoder's layers (if any) start fresh
    init_from: str = ""
    name: str = "attnlens-shapes"  # the model name written into the exported pipeline

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known}
        return cls(**kw)


PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    # for tests and smoke runs: every component at its smallest, still the same code path
    "tiny": dict(
        vae_channels=(8, 8, 16), vae_norm_groups=8, vae_batch=2, text_width=32, text_layers=1, text_heads=2,
        unet_channels=(32, 32), unet_heads=4, unet_norm_groups=8, batch=2, warmup=2, checkpoint_every=2,
        sample_every=0, vae_check=0,
    ),
}


# ------------------------------------------------------------------------------------------------ components
def build_vae(cfg: TrainConfig):
    from diffusers import AutoencoderKL

    n = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=tuple(cfg.vae_channels),
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n, latent_channels=4,
        layers_per_block=1, norm_num_groups=cfg.vae_norm_groups, sample_size=64,
    )


def build_text_encoder(cfg: TrainConfig):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=cfg.text_width, intermediate_size=4 * cfg.text_width,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads, max_position_embeddings=77,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, projection_dim=cfg.text_width,
    ))


def build_unet(cfg: TrainConfig):
    """SD's UNet at small scale: cross-attention in every block (16×16 and 8×8 for a 16×16 latent) and the mid."""
    from diffusers import UNet2DConditionModel

    n = len(cfg.unet_channels)
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=tuple(cfg.unet_channels),
        layers_per_block=cfg.unet_layers_per_block, down_block_types=("CrossAttnDownBlock2D",) * n,
        up_block_types=("CrossAttnUpBlock2D",) * n, cross_attention_dim=cfg.text_width,
        attention_head_dim=cfg.unet_heads,  # diffusers' historical name: the number of heads in SD's UNet
        norm_num_groups=cfg.unet_norm_groups,
    )


def init_from_pipeline(source: str, vae, text_encoder, unet) -> float:
    """Load a trained pipeline's VAE and UNet into ``vae`` and ``unet`` and its text encoder's embeddings and final
    norm into ``text_encoder`` (layers the two encoders share by name and shape are copied too; the rest keeps its
    fresh initialisation). Returns the VAE's latent scaling factor. ``source``: an embedded name or a folder."""
    src = load_pipeline(source, dtype=torch.float32)
    vae.load_state_dict(src.vae.state_dict())
    unet.load_state_dict(src.unet.state_dict())
    own = text_encoder.state_dict()
    shared = {k: v for k, v in src.text_encoder.state_dict().items() if k in own and own[k].shape == v.shape}
    text_encoder.load_state_dict({**own, **shared})
    return float(src.vae.config.scaling_factor)


def noise_schedule():
    """SD's training schedule: DDPM, scaled_linear betas 0.00085–0.012, 1000 steps."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         num_train_timesteps=1000, clip_sample=False)


def sd_scheduler():
    """SD's inference scheduler: PNDM with ``skip_prk_steps``."""
    from diffusers import PNDMScheduler

    return PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                         skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)


# ------------------------------------------------------------------------------------------------ checkpoints
def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def optimizer_to_safe(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer ``state_dict`` into tensors (for safetensors) and JSON (everything else)."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{k}"] = v
            else:
                scalars[f"{idx}.{k}"] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_from_safe(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Inverse of :func:`optimizer_to_safe`."""
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    for key, v in meta["scalars"].items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    opt.load_state_dict({"state": state, "param_groups": groups})


def list_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (phase order, then step)."""
    root = Path(out) / "checkpoints"
    if not root.exists():
        return []
    found = []
    for d in root.iterdir():
        if d.is_dir() and (d / "state.json").exists() and "-" in d.name and not d.name.startswith("."):
            phase, step = d.name.rsplit("-", 1)
            if phase in PHASES and step.isdigit():
                found.append((PHASES.index(phase), int(step), d))
    return [d for *_, d in sorted(found)]


def _write_checkpoint(out: Path, name: str, files: dict[str, dict[str, torch.Tensor]], state: dict[str, Any],
                      keep: int) -> Path:
    root = out / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for fname, tensors in files.items():
        _save_tensors(tmp / fname, tensors)
    (tmp / "state.json").write_text(json.dumps(state, indent=2))
    final = root / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in list_checkpoints(out)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


# ------------------------------------------------------------------------------------------------ helpers
def _images_to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _generator(seed: int, phase: str, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + PHASES.index(phase) * 100_000_007 + int(step))


class EMA:
    """Exponential moving average of parameters with diffusers' warm-up: decay = min(d, (1+n)/(10+n))."""

    def __init__(self, modules: dict[str, torch.nn.Module], decay: float) -> None:
        self.decay = decay
        self.shadow = {f"{m}.{k}": p.detach().clone() for m, mod in modules.items() for k, p in mod.named_parameters()}

    @torch.no_grad()
    def update(self, modules: dict[str, torch.nn.Module], step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for m, mod in modules.items():
            for k, p in mod.named_parameters():
                self.shadow[f"{m}.{k}"].lerp_(p.detach(), 1.0 - d)

    def state_dict_for(self, name: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        """``module``'s state dict with its parameters replaced by their averages (buffers as they are)."""
        sd = dict(module.state_dict())
        for k in dict(module.named_parameters()):
            sd[k] = self.shadow[f"{name}.{k}"]
        return sd


def _lr_at(step: int, base: float, warmup: int) -> float:
    return base * min(1.0, (step + 1) / max(warmup, 1))


def _log(out: Path, record: dict[str, Any]) -> None:
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


@functools.lru_cache(maxsize=65536)
def _token_ids(caption: str) -> tuple[int, ...]:

    tok = clip_tokenizer()
    return tuple(tok(caption, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids)


def _tokenize(captions: Sequence[str]) -> torch.Tensor:
    """``(B, 77)`` token ids padded with ``<|endoftext|>``, exactly as SD's pipeline tokenises prompts."""
    return torch.tensor([_token_ids(c) for c in captions], dtype=torch.long)


# ------------------------------------------------------------------------------------------------ phases
def _train_vae(cfg: TrainConfig, out: Path, vae, start: int, opt_state, progress: bool,
               timings: list[tuple[float, float]] | None = None, final_checkpoint: bool = True) -> float:
    """Phase 1; returns the latent scaling factor. ``timings`` receives (wall, CPU) seconds of every step."""

    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0, foreach=True)
    if opt_state is not None:
        optimizer_from_safe(opt, *opt_state)
    bar = tqdm(range(start, cfg.vae_steps), initial=start, total=cfg.vae_steps, desc="vae", disable=not progress)
    t0, losses, scaling_factor = time.time(), [], None
    for step in bar:
        tw, tc = time.perf_counter(), time.process_time()
        g = _generator(cfg.seed, "vae", step)
        images, _ = render_batch(cfg.seed + 1, range(step * cfg.vae_batch, (step + 1) * cfg.vae_batch), cfg.split)
        x = _images_to_tensor(images)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        rec = vae.decode(z).sample
        fg = (x - x[:, :, :1, :1]).abs().amax(1, keepdim=True) > 0.02  # differs from the (plain) background
        w = 1.0 + cfg.vae_fg_weight * fg.float()
        rec_loss = ((rec - x).abs() * w).mean() / w.mean()
        kl = post.kl().mean() / post.mean[0].numel()
        loss = rec_loss + cfg.kl_weight * kl
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg.vae_lr, cfg.warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append((rec - x).abs().mean().item())
        bar.set_postfix(l1=f"{losses[-1]:.4f}")
        if timings is not None:
            timings.append((time.perf_counter() - tw, time.process_time() - tc))
        done = step + 1
        if done % cfg.checkpoint_every == 0 or (done == cfg.vae_steps and final_checkpoint):
            sec = (time.time() - t0) / max(len(losses), 1)
            _log(out, {"phase": "vae", "step": done, "l1": float(np.mean(losses)), "kl": kl.item(),
                       "sec_per_step": sec})
            losses, t0 = [], time.time()
            t, meta = optimizer_to_safe(opt)
            state = {"phase": "vae", "step": done, "optimizer": meta}
            if done == cfg.vae_steps:
                scaling_factor = state["scaling_factor"] = measure_scaling_factor(vae, cfg)
            files = {"vae.safetensors": vae.state_dict(), "optimizer.safetensors": t}
            _write_checkpoint(out, f"vae-{done:07d}", files, state, cfg.keep_checkpoints)
    vae.eval()
    if start < cfg.vae_steps and cfg.vae_check and final_checkpoint:

        rep = validate(cfg.vae_check, seed=cfg.seed + 3, split=cfg.split, image_fn=vae_roundtrip(vae))
        _log(out, {"phase": "vae_check", "step": cfg.vae_steps, **rep.summary()})
    return scaling_factor if scaling_factor is not None else measure_scaling_factor(vae, cfg)


@torch.no_grad()
def measure_scaling_factor(vae, cfg: TrainConfig, n: int = 256) -> float:
    """1 / std of the latents of ``n`` training images (SD's recipe for ``scaling_factor``)."""
    was_training = vae.training
    vae.eval()
    images, _ = render_batch(cfg.seed + 2, range(n), cfg.split)
    lat = torch.cat([vae.encode(_images_to_tensor(images[i : i + 64])).latent_dist.mean for i in range(0, n, 64)])
    vae.train(was_training)
    return float(1.0 / lat.std().clamp_min(1e-6))


def _train_unet(cfg: TrainConfig, out: Path, vae, scaling_factor: float, text_encoder, unet, start: int,
                resume_files: dict[str, Any] | None, progress: bool,
                timings: list[tuple[float, float]] | None = None, final_checkpoint: bool = True) -> EMA:
    """Phase 2; returns the EMA of UNet and text encoder. ``timings`` receives (wall, CPU) seconds per step."""

    sched = noise_schedule()
    alphas = sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    modules = {"unet": unet, "text_encoder": text_encoder}
    params = [p for m in modules.values() for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    ema = EMA(modules, cfg.ema_decay)
    if resume_files is not None:
        optimizer_from_safe(opt, resume_files["opt_tensors"], resume_files["opt_meta"])
        ema.shadow.update(resume_files["ema"])
    vae.eval().requires_grad_(False)
    unet.train()
    text_encoder.train()
    empty_ids = _tokenize([""])
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="unet", disable=not progress)
    t0, losses = time.time(), []
    for step in bar:
        tw, tc = time.perf_counter(), time.process_time()
        g = _generator(cfg.seed, "unet", step)
        images, captions = render_batch(cfg.seed, range(step * cfg.batch, (step + 1) * cfg.batch), cfg.split)
        with torch.no_grad():
            post = vae.encode(_images_to_tensor(images)).latent_dist
            x0 = (post.mean + post.std * torch.randn(post.mean.shape, generator=g)) * scaling_factor
        ids = _tokenize(captions)
        drop = torch.rand(len(captions), generator=g) < cfg.caption_dropout
        ids[drop] = empty_ids
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(captions),), generator=g)
        xt = sched.add_noise(x0, noise, t)
        enc = text_encoder(ids)[0]
        pred = unet(xt, t, enc).sample
        per = (pred - noise).pow(2).mean(dim=(1, 2, 3))
        w = (snr[t].clamp(max=cfg.min_snr_gamma) / snr[t]) if cfg.min_snr_gamma > 0 else torch.ones_like(per)
        loss = (w * per).mean()
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg.lr, cfg.warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update(modules, step)
        losses.append(per.mean().item())
        bar.set_postfix(mse=f"{per.mean().item():.4f}")
        if timings is not None:
            timings.append((time.perf_counter() - tw, time.process_time() - tc))
        done = step + 1
        if done % cfg.checkpoint_every == 0 or (done == cfg.steps and final_checkpoint):
            sec = (time.time() - t0) / max(len(losses), 1)
            _log(out, {"phase": "unet", "step": done, "mse": float(np.mean(losses)), "sec_per_step": sec})
            losses, t0 = [], time.time()
            tensors, meta = optimizer_to_safe(opt)
            ema_t = {k: v for k, v in ema.shadow.items()}
            _write_checkpoint(
                out, f"unet-{done:07d}",
                {"vae.safetensors": vae.state_dict(), "unet.safetensors": unet.state_dict(),
                 "text_encoder.safetensors": text_encoder.state_dict(), "ema.safetensors": ema_t,
                 "optimizer.safetensors": tensors},
                {"phase": "unet", "step": done, "scaling_factor": scaling_factor, "optimizer": meta},
                cfg.keep_checkpoints,
            )
        if cfg.sample_every and (done % cfg.sample_every == 0 or done == cfg.steps):
            write_samples(cfg, out, vae, scaling_factor, text_encoder, unet, ema, done)
            unet.train()
            text_encoder.train()
            t0 = time.time()  # sampling time is not training time
    return ema


# ------------------------------------------------------------------------------------------------ export
def build_pipeline(cfg: TrainConfig, vae, scaling_factor: float, text_encoder, unet, ema: EMA | None = None,
                   dtype: torch.dtype = torch.float32):
    """A ``StableDiffusionPipeline`` of fresh copies of the components (EMA weights for UNet and text encoder)."""
    from diffusers import StableDiffusionPipeline


    v, te, un = build_vae(cfg), build_text_encoder(cfg), build_unet(cfg)
    v.load_state_dict(vae.state_dict())
    v.register_to_config(scaling_factor=scaling_factor)
    te.load_state_dict(ema.state_dict_for("text_encoder", text_encoder) if ema else text_encoder.state_dict())
    un.load_state_dict(ema.state_dict_for("unet", unet) if ema else unet.state_dict())
    pipe = StableDiffusionPipeline(
        vae=v, text_encoder=te, tokenizer=clip_tokenizer(), unet=un, scheduler=sd_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    if dtype != torch.float32:  # for saving; diffusers warns that fp16 cannot run on CPU, which is known here
        from diffusers.utils import logging as dlog

        level = dlog.get_verbosity()
        dlog.set_verbosity_error()
        try:
            for module in (pipe.vae, pipe.text_encoder, pipe.unet):
                module.to(dtype=dtype)
        finally:
            dlog.set_verbosity(level)
    return pipe


def export_pipeline(cfg: TrainConfig, out: Path, vae, scaling_factor: float, text_encoder, unet, ema: EMA,
                    step: int) -> Path:
    """Write ``OUT/pipeline``: fp16 safetensors, loadable with ``StableDiffusionPipeline.from_pretrained``."""
    pipe = build_pipeline(cfg, vae, scaling_factor, text_encoder, unet, ema, dtype=torch.float16)
    target = out / "pipeline"
    tmp = out / ".pipeline-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    (tmp / "attnlens_testbed.json").write_text(json.dumps(
        {"name": cfg.name, "unet_steps": step, "scaling_factor": scaling_factor, "config": cfg.to_dict()},
        indent=2))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def pipeline_size_mb(path: str | Path) -> float:
    """Total size of the weight files (``*.safetensors``) in a pipeline folder, in MB (10^6 bytes)."""
    return sum(p.stat().st_size for p in Path(path).rglob("*.safetensors")) / 1e6


@torch.no_grad()
def write_samples(cfg: TrainConfig, out: Path, vae, scaling_factor: float, text_encoder, unet, ema: EMA | None,
                  step: int, prompts: Sequence[str] = SAMPLE_PROMPTS, steps: int = 25, guidance: float = 5.0) -> dict:
    """Sample :data:`SAMPLE_PROMPTS` with the EMA weights, save ``OUT/samples/unet-<step>.png``, log scores."""

    pipe = build_pipeline(cfg, vae, scaling_factor, text_encoder, unet, ema)
    pipe.set_progress_bar_config(disable=True)  # this pipeline is ours (training previews): no per-step bar
    g = torch.Generator().manual_seed(cfg.seed)
    images = pipe(list(prompts), num_inference_steps=steps, guidance_scale=guidance, generator=g,
                  output_type="np").images
    images = (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
    (out / "samples").mkdir(exist_ok=True)
    Image.fromarray(np.concatenate(list(images), axis=1)).save(out / "samples" / f"unet-{step:07d}.png")
    agg = aggregate(score(img, p) for img, p in zip(images, prompts))
    _log(out, {"phase": "samples", "step": step, **agg})
    return agg


# ------------------------------------------------------------------------------------------------ driver
def train(out: str | Path, config: TrainConfig | None = None, resume: bool = False, export: bool = True,
          progress: bool = False) -> Path:
    """Run (or continue) both phases into ``out``; returns ``out/pipeline`` (or ``out`` when ``export=False``).

    With ``resume=True`` the stored ``config.json`` is used, except that the step counts, batch sizes, learning
    rates and bookkeeping fields of ``config`` (when given) win — so ``--resume --steps N`` extends a run.

    Raises:
        ValueError: ``out`` already holds checkpoints and ``resume`` is False, or the architecture changed.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpts = list_checkpoints(out)
    stored = out / "config.json"
    if ckpts and not resume:
        raise ValueError(f"{out} already holds checkpoints; pass --resume to continue or choose another --out")
    if resume and stored.exists():
        old = TrainConfig.from_dict(json.loads(stored.read_text()))
        if config is not None:
            changed = [f for f in ARCH_FIELDS if getattr(old, f) != getattr(config, f)]
            if changed:
                raise ValueError(f"cannot resume with a different architecture ({', '.join(changed)})")
            old = replace(config, seed=old.seed, split=old.split)
        config = old
    config = config or TrainConfig()
    stored.write_text(json.dumps(config.to_dict(), indent=2))
    torch.set_num_threads(config.threads)

    torch.manual_seed(config.seed)  # deterministic initialisation (each component seeded as in diffusers' tests)
    vae = build_vae(config)
    torch.manual_seed(config.seed)
    text_encoder = build_text_encoder(config)
    torch.manual_seed(config.seed)
    unet = build_unet(config)
    latest = ckpts[-1] if (resume and ckpts) else None
    state = json.loads((latest / "state.json").read_text()) if latest else {"phase": "vae", "step": 0}
    if latest is not None:
        vae.load_state_dict(_load_tensors(latest / "vae.safetensors"))
    elif config.init_from:
        state = {"phase": "unet", "step": 0,
                 "scaling_factor": init_from_pipeline(config.init_from, vae, text_encoder, unet)}

    # phase 1: VAE
    if state["phase"] == "vae" and state["step"] < config.vae_steps:
        opt_state = (_load_tensors(latest / "optimizer.safetensors"), state["optimizer"]) if latest else None
        scaling_factor = _train_vae(config, out, vae, state["step"], opt_state, progress)
    elif state["phase"] == "vae":
        scaling_factor = state.get("scaling_factor") or measure_scaling_factor(vae, config)
    else:
        scaling_factor = float(state["scaling_factor"])
    vae.eval()

    # phase 2: UNet + text encoder
    start, resume_files = 0, None
    if state["phase"] == "unet" and latest is not None:
        start = state["step"]
        unet.load_state_dict(_load_tensors(latest / "unet.safetensors"))
        text_encoder.load_state_dict(_load_tensors(latest / "text_encoder.safetensors"))
        resume_files = {"opt_tensors": _load_tensors(latest / "optimizer.safetensors"),
                        "opt_meta": state["optimizer"], "ema": _load_tensors(latest / "ema.safetensors")}
    ema = _train_unet(config, out, vae, scaling_factor, text_encoder, unet, start, resume_files, progress)
    if not export:
        return out
    return export_pipeline(config, out, vae, scaling_factor, text_encoder, unet, ema, max(start, config.steps))


def benchmark(cfg: TrainConfig, steps: int = 6, warmup: int = 2) -> dict[str, dict[str, float]]:
    """Time ``steps`` training steps of each phase (after ``warmup`` untimed ones), writing nothing that stays.

    Returns ``{"vae": {...}, "unet": {...}}``: median wall and CPU (process) seconds per step, batch, threads.
    """

    torch.set_num_threads(cfg.threads)
    n = warmup + steps
    run = replace(cfg, vae_steps=n, steps=n, checkpoint_every=10**9, sample_every=0, vae_check=0)
    torch.manual_seed(cfg.seed)
    vae, te, unet = build_vae(cfg), build_text_encoder(cfg), build_unet(cfg)
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for phase in PHASES:
            times: list[tuple[float, float]] = []
            if phase == "vae":
                _train_vae(run, Path(tmp), vae, 0, None, False, timings=times, final_checkpoint=False)
            else:
                _train_unet(run, Path(tmp), vae, 1.0, te, unet, 0, None, False, timings=times,
                            final_checkpoint=False)
            walls, cpus = zip(*times[warmup:])
            out[phase] = {"wall_s_per_step": float(np.median(walls)), "cpu_s_per_step": float(np.median(cpus)),
                          "batch": cfg.vae_batch if phase == "vae" else cfg.batch, "threads": cfg.threads}
    return out


# ``python -m attnlens.testbed.train ARGS`` is ``attnlens testbed train ARGS`` (``--help`` lists the options)
if __name__ == "__main__":
    from attnlens.cli import run_module

    run_module("train", None)
