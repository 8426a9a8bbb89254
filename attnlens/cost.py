r"""What a run will cost before it starts: memory, disk and steps, from the pipeline's own layer shapes.

A run at ``--height 100000`` would try to allocate terabytes; a run at ``--n-steps 10000`` would write a store two
hundred times the usual size. :func:`run_cost` estimates both from the model's configuration (no forward pass) and
:func:`check_run_cost` refuses what cannot fit and names what is unusually large.

The estimates (``B`` = bytes per element of the model's dtype, ``H×W`` the image, ``f`` the VAE's scale factor):

* peak memory of the VAE decoder at full resolution: :math:`3·H·W·C_0·B` (its last block holds a few
  ``C_0``-channel feature maps at image size; ``C_0`` = the VAE's first ``block_out_channels``);
* peak memory of the denoiser: :math:`8·(H/f)(W/f)·C_u·B·n_b` (a few feature maps of its widest
  full-latent-resolution block, ``C_u``; ``n_b`` = 2 with classifier-free guidance);
* the map store, uncompressed: :math:`\sum_\ell h_\ell w_\ell · T · n_h · b · S · n_p` over the recorded
  cross-attention layers ``ℓ`` at their resolution, ``T`` stored token positions, ``n_h`` stored heads (1 for the
  mean), ``b`` bytes per stored value (2 for fp16), ``S`` recorded steps and ``n_p`` recorded phases. The chunks
  are compressed on disk, so this is an upper bound.

Both are lower bounds of what the run needs in the sense that matters: if they do not fit, the run cannot.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import BadOption
from .recording.recorder import cross_attention_layers
from .selection import select_layers, step_predicate

#: a run above any of these is "unusually large" and is announced before it starts
UNUSUAL_STEPS = 1000
UNUSUAL_STORE_BYTES = 4 * 1024**3
UNUSUAL_PIXEL_FACTOR = 4  # × the model's native number of pixels


class LargeRunWarning(UserWarning):
    """A run is unusually large (steps, pixels or store size); the message says what it will cost."""


def human_bytes(n: float) -> str:
    """``1536`` → ``'1.5 KB'`` (powers of 1000, as disk sizes are quoted)."""
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"  # pragma: no cover


@dataclass
class RunCost:
    """The estimate of one run (see the module docstring for the formulas)."""

    height: int
    width: int
    n_steps: int
    native_pixels: int | None
    peak_bytes: float
    peak_part: str
    store_bytes: float | None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        store = f", ≈ {human_bytes(self.store_bytes)} of maps before compression" if self.store_bytes else ""
        return (f"{self.height}×{self.width}, {self.n_steps} steps: needs ≈ {human_bytes(self.peak_bytes)} of memory "
                f"({self.peak_part}){store}")


def _bytes_per(dtype: Any) -> int:
    return int(getattr(dtype, "itemsize", 4) or 4)


def _store_bytes(pipe, height: int, width: int, n_steps: int, config: Any, n_tokens: int, cfg: bool) -> float | None:
    """Uncompressed map bytes from the cross-attention layers' resolutions (UNet pipelines; None when unknown)."""
    unet = getattr(pipe, "unet", None)
    scale = getattr(pipe, "vae_scale_factor", None)
    if unet is None or not scale or not hasattr(unet, "named_modules"):
        return None
    layers = cross_attention_layers(unet)
    H, W = max(height // scale, 1), max(width // scale, 1)
    res: dict[str, tuple[int, int]] = {}
    n_down, n_up = len(getattr(unet, "down_blocks", [])), len(getattr(unet, "up_blocks", []))
    for name in layers:
        parts = name.split(".")
        if parts[0] == "down_blocks":
            f = 2 ** int(parts[1])
        elif parts[0] == "mid_block":
            f = 2 ** max(n_down - 1, 0)
        else:
            f = 2 ** max(n_up - 1 - int(parts[1]), 0)
        res[name] = (max(H // f, 1), max(W // f, 1))
    chosen = select_layers(list(layers), getattr(config, "layers", None), res) if config is not None else list(layers)
    steps = getattr(config, "steps", None)
    n_rec = n_steps if steps is None else sum(1 for i in range(n_steps) if step_predicate(steps)(i))
    heads = 1
    if getattr(config, "heads", "mean") == "all":
        heads = max((getattr(layers[n], "heads", 1) for n in chosen), default=1)
    tokens = 77 if getattr(config, "tokens", "prompt") == "all" else n_tokens
    per_value = 4 if getattr(config, "dtype", "fp16") == "fp32" else 2
    phases = 2 if (cfg and getattr(config, "uncond", False)) else 1
    pixels = sum(res[n][0] * res[n][1] for n in chosen)
    return float(pixels) * tokens * heads * per_value * n_rec * phases


def run_cost(pipe, *, height: int, width: int, n_steps: int, config: Any = None, n_tokens: int = 77,
             cfg: bool = True) -> RunCost:
    """Estimate a run's peak memory and uncompressed map store from ``pipe``'s configuration (no forward pass)."""
    unet = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    vae = getattr(pipe, "vae", None)
    dtype = getattr(unet, "dtype", None)
    b = _bytes_per(dtype)
    scale = int(getattr(pipe, "vae_scale_factor", 8) or 8)
    vae_c = (getattr(getattr(vae, "config", None), "block_out_channels", None) or [128])[0]
    unet_cfg = getattr(unet, "config", None)
    unet_c = max(getattr(unet_cfg, "block_out_channels", None) or [getattr(unet_cfg, "inner_dim", 0) or 320])
    first_c = (getattr(unet_cfg, "block_out_channels", None) or [unet_c])[0]
    vae_peak = 3.0 * height * width * vae_c * b
    latent_px = math.ceil(height / scale) * math.ceil(width / scale)
    unet_peak = 8.0 * latent_px * first_c * b * (2 if cfg else 1)
    peak, part = (vae_peak, "VAE decoder at full resolution") if vae_peak >= unet_peak else (
        unet_peak, "denoiser at full latent resolution")
    sample_size = getattr(unet_cfg, "sample_size", None)
    native = None
    if isinstance(sample_size, int):
        native = (sample_size * scale) ** 2
    elif isinstance(sample_size, (tuple, list)) and len(sample_size) == 2:
        native = sample_size[0] * sample_size[1] * scale * scale
    store = _store_bytes(pipe, height, width, n_steps, config, n_tokens, cfg) if config is not None else None
    return RunCost(height=height, width=width, n_steps=n_steps, native_pixels=native, peak_bytes=peak,
                   peak_part=part, store_bytes=store)


def native_size(pipe) -> int | None:
    """The side in pixels a pipeline samples at by default (its denoiser's ``sample_size`` × the VAE's scale), or
    None when the configuration does not say."""
    model = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    size = getattr(getattr(model, "config", None), "sample_size", None)
    scale = getattr(pipe, "vae_scale_factor", None)
    if isinstance(size, (list, tuple)) and size:
        size = size[0]
    return int(size * scale) if isinstance(size, int) and isinstance(scale, int) else None


def available_memory(device: Any = None) -> int | None:
    """Bytes of memory the run's device has: the GPU's total memory, or the machine's physical memory."""
    try:
        if device is not None and torch.device(device).type == "cuda":
            return int(torch.cuda.get_device_properties(torch.device(device)).total_memory)
    except Exception:  # noqa: BLE001  (no CUDA: fall back to the host's memory)
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def free_disk(path: str | os.PathLike | None) -> int | None:
    """Free bytes on the file system that will hold ``path`` (its nearest existing parent)."""
    if path is None:
        return None
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        usage = shutil.disk_usage(p)
    except OSError:
        return None
    return int(usage.free) if usage.total > 0 else None  # a pseudo file system (/sys, /proc) says nothing


def check_run_cost(cost: RunCost, *, memory: int | None, disk: int | None) -> list[str]:
    """Refuse a run that cannot fit (``BadOption``: memory or disk); return the notes to show for an unusually
    large one (many steps, many pixels, a large store), empty for an ordinary run."""
    if memory is not None and cost.peak_bytes > memory:
        side = int(math.sqrt(memory / max(cost.peak_bytes, 1) * cost.height * cost.width)) // 64 * 64
        raise BadOption(f"a {cost.height}×{cost.width} image needs ≈ {human_bytes(cost.peak_bytes)} of memory "
                        f"({cost.peak_part}); this machine has {human_bytes(memory)}",
                        hint=f"use a smaller --height/--width (at most about {max(side, 64)}), or leave them out "
                             "for the model's native size")
    if disk is not None and cost.store_bytes is not None and cost.store_bytes > disk:
        raise BadOption(f"this run would write up to {human_bytes(cost.store_bytes)} of maps; the output's disk has "
                        f"{human_bytes(disk)} free",
                        hint="record fewer steps (--steps ::5), layers (--layers 16) or fewer --n-steps, or free space")
    notes = []
    if cost.n_steps > UNUSUAL_STEPS:
        notes.append(f"{cost.n_steps} steps is {cost.n_steps / 50:.0f}× a usual 50-step run")
    if cost.native_pixels and cost.height * cost.width > UNUSUAL_PIXEL_FACTOR * cost.native_pixels:
        notes.append(f"{cost.height}×{cost.width} is {cost.height * cost.width / cost.native_pixels:.0f}× the model's "
                     "native number of pixels")
    if cost.store_bytes is not None and cost.store_bytes > UNUSUAL_STORE_BYTES:
        notes.append(f"up to {human_bytes(cost.store_bytes)} of maps will be written")
    if notes:
        notes = [f"large run: {'; '.join(notes)} — {cost.summary()}"]
    return notes
