"""Loading pipelines: hub ids, local diffusers folders, built pipelines, and the embedded default model.

``load_pipeline`` is the one entry point. The embedded default (``attnlens-tiny``) is a small pipeline with Stable
Diffusion's architecture, created deterministically on first use into a cache folder and then loaded through
exactly the same ``DiffusionPipeline.from_pretrained`` call as ``CompVis/stable-diffusion-v1-4``.

Examples::

    >>> import attnlens
    >>> pipe = attnlens.load_pipeline("attnlens-tiny")           # embedded (random weights), CPU + fp32 here
    >>> type(pipe).__name__
    'StableDiffusionPipeline'
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import AttnlensError

# The embedded default: the trained shapes testbed model (attnlens-tiny, random weights, stays available by name).
DEFAULT_MODEL = "attnlens-shapes"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model that attnlens can create offline: ``build(directory)`` writes a diffusers folder."""

    name: str
    description: str
    build: Callable[[Path], None]
    version: str


def _build_tiny(directory: Path) -> None:
    """Write the deterministic ``attnlens-tiny`` diffusers folder into ``directory``.

    Architecture (SD 1.x shaped, random weights, seeded before each component as in diffusers' dummy components):
    64×64 images, AutoencoderKL with a 4× downsampling (latent 4×16×16), a UNet2DConditionModel with
    cross-attention at 16×16, 8×8 and 4×4 (8 heads each), a 2-layer CLIPTextModel (width 64) with the real CLIP
    BPE tokenizer, and SD's PNDM scheduler (``skip_prk_steps``: 51 timesteps for 50 steps).
    """
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .tokenizer import clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
    )
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
            projection_dim=64,
        )
    )
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(directory, safe_serialization=True)


def shapes_manifest() -> dict[str, Any]:
    """The manifest of the shipped shapes model (``attnlens/assets/shapes/attnlens_model.json``)."""
    from .testbed.ship import ASSET_DIR

    path = ASSET_DIR / "attnlens_model.json"
    if not path.is_file():
        raise AttnlensError(
            "the trained shapes model is not in this installation (attnlens/assets/shapes is missing)",
            hint="reinstall attnlens from a full checkout, or use --model attnlens-tiny",
        )
    return json.loads(path.read_text())


def _build_shapes(directory: Path) -> None:
    """Write ``attnlens-shapes`` — the trained testbed model shipped in ``attnlens/assets/shapes`` (see
    docs/testbed.md) — into ``directory``: the shipped weights and configs, verified against their SHA-256, plus
    tokenizer files generated from the shipped CLIP BPE vocabulary."""
    from .testbed.ship import ASSET_DIR, sha256
    from .tokenizer import clip_tokenizer

    manifest = shapes_manifest()
    for rel, info in manifest["files"].items():
        src = ASSET_DIR / rel
        if not src.is_file() or sha256(src) != info["sha256"]:
            raise AttnlensError(
                f"the shipped shapes model file '{rel}' is missing or damaged (checksum mismatch)",
                hint="restore attnlens/assets/shapes from git (git lfs is not used; run: git checkout -- attnlens/assets)",
            )
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, directory / rel)
    clip_tokenizer().save_pretrained(directory / "tokenizer")


def _shapes_version() -> str:
    try:
        return str(shapes_manifest()["version"])
    except AttnlensError:
        return "missing"


EMBEDDED: dict[str, EmbeddedModel] = {
    "attnlens-tiny": EmbeddedModel(
        name="attnlens-tiny",
        description="SD-1.x-shaped pipeline with random weights, 64x64, cross-attention at 16/8/4 (built offline)",
        build=_build_tiny,
        version="1",
    ),
    "attnlens-shapes": EmbeddedModel(
        name="attnlens-shapes",
        description="the trained shapes testbed model (64x64, coloured shapes; docs/testbed.md), shipped weights",
        build=_build_shapes,
        version="shipped",  # the weights' digest (from the asset manifest) keys the cache folder
    ),
}


def cache_dir() -> Path:
    """Where embedded models are built: ``$ATTNLENS_HOME`` or ``~/.cache/attnlens``."""
    return Path(os.environ.get("ATTNLENS_HOME", Path.home() / ".cache" / "attnlens")).expanduser()


def embedded_model_path(name: str = DEFAULT_MODEL) -> Path:
    """Return the diffusers folder of an embedded model, building it (atomically) if it is not there yet."""
    spec = EMBEDDED[name]
    import diffusers

    version = _shapes_version() if spec.name == "attnlens-shapes" else spec.version
    key = hashlib.sha256(f"{spec.name}:{version}:{diffusers.__version__}".encode()).hexdigest()[:10]
    target = cache_dir() / "models" / f"{spec.name}-{key}"
    if (target / "model_index.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=target.parent))
    try:
        spec.build(tmp)
        (tmp / "attnlens_model.json").write_text(json.dumps({"name": spec.name, "version": version}))
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race
            if not (target / "model_index.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def default_device_dtype(device: str | torch.device | None, dtype: torch.dtype | str | None):
    """cuda + fp16 when a GPU is present, CPU + fp32 otherwise; explicit arguments win."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if isinstance(dtype, str):
        dtype = {"fp16": torch.float16, "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32,
                 "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}[dtype]
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    return device, dtype


def resolve_model(model: str) -> tuple[str, str]:
    """Map a ``--model`` value to ``(kind, location)`` with kind in {"embedded", "local", "hub"}."""
    if model in EMBEDDED:
        return "embedded", str(embedded_model_path(model))
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "model_index.json").exists():
            raise AttnlensError(
                f"'{model}' is a folder but not a diffusers pipeline (no model_index.json)",
                hint="pass the folder that pipe.save_pretrained(...) wrote, or a hub id",
            )
        return "local", str(path.resolve())
    looks_like_path = model.startswith((".", "/", "~")) or os.sep in model.strip("/").split("/", 1)[-1]
    if looks_like_path or model.count("/") != 1:
        raise AttnlensError(
            f"model '{model}' not found: no such folder, and it is not a hub id (owner/name)",
            hint=f"pass a local diffusers folder, a hub id like CompVis/stable-diffusion-v1-4, or '{DEFAULT_MODEL}'",
        )
    return "hub", model


def load_pipeline(model: Any = DEFAULT_MODEL, device=None, dtype=None):
    """Load a text-to-image pipeline ready for recording.

    Args:
        model (`str` or `DiffusionPipeline`, *optional*, defaults to `"attnlens-tiny"`):
            A hub id (``CompVis/stable-diffusion-v1-4``), a local diffusers folder, the name of an embedded model,
            or an already-built pipeline (moved to ``device``/``dtype`` and returned).
        device (`str`, *optional*): defaults to ``cuda`` when available, else ``cpu``.
        dtype (`torch.dtype` or `str`, *optional*): defaults to fp16 on cuda, fp32 on cpu.

    Supported families: SD 1.x and 2.x (``StableDiffusionPipeline``) and SDXL (``StableDiffusionXLPipeline``).

    Raises:
        AttnlensError: the model cannot be found or its weights are not available offline.
    """
    device, dtype = default_device_dtype(device, dtype)
    if not isinstance(model, (str, os.PathLike)):
        if not hasattr(model, "unet"):
            raise AttnlensError(
                f"expected a diffusers pipeline with a UNet, got {type(model).__name__}",
                hint="pass a StableDiffusionPipeline / StableDiffusionXLPipeline, a hub id or a local folder",
            )
        return model.to(device=device, dtype=dtype)

    from diffusers import DiffusionPipeline

    _quiet_loading()
    kind, location = resolve_model(str(model))
    kwargs: dict[str, Any] = {"dtype": dtype}
    index = Path(location) / "model_index.json"
    if kind == "hub" or (index.exists() and "safety_checker" in json.loads(index.read_text())):
        kwargs["safety_checker"] = None  # research use: no NSFW filter replacing images with black squares
    try:
        pipe = DiffusionPipeline.from_pretrained(location, **kwargs)
    except (OSError, ValueError) as exc:
        if kind == "hub":
            raise AttnlensError(
                f"weights for '{model}' are not available (no network or not in the Hugging Face cache)",
                hint="download it once with network access, or pass a local folder: --model /path/to/saved/pipeline",
            ) from exc
        raise AttnlensError(f"could not load the pipeline in '{location}': {str(exc).splitlines()[0]}") from exc
    if not hasattr(pipe, "unet"):
        raise AttnlensError(
            f"'{model}' is a {type(pipe).__name__}, which has no UNet",
            hint="attnlens records UNet-based text-to-image pipelines (SD 1.x, SD 2.x, SDXL)",
        )
    pipe = pipe.to(device)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    pipe._attnlens_model_id = str(model)
    pipe._attnlens_model_location = location
    return pipe


def _quiet_loading() -> None:
    """No per-component progress bars while loading ("Loading pipeline components…"); errors still surface."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.disable_progress_bar()
    tlog.disable_progress_bar()


def model_family(pipe) -> str:
    """``"sdxl"`` for two-text-encoder pipelines, else ``"sd"``."""
    return "sdxl" if getattr(pipe, "text_encoder_2", None) is not None else "sd"
