"""The embedded model registry and ``load_pipeline``: hub ids, local diffusers folders, built pipelines, embedded names.

An embedded model (:data:`EMBEDDED`) is written once into the cache folder (``$ATTNLENS_HOME/models``) by its
builder and then loaded through exactly the same ``DiffusionPipeline.from_pretrained`` call as a hub id.

Examples::

    >>> import attnlens
    >>> pipe = attnlens.load_pipeline("attnlens-tiny")           # embedded (random weights), CPU + fp32 here
    >>> type(pipe).__name__
    'StableDiffusionPipeline'
"""

from __future__ import annotations

import functools

import hashlib
import json
import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import AttnlensError, ConfigError, ModelNotFound
from .families import build_flux, build_pixart, build_sana, build_sd3
from .shapes import BOW_ASSET_DIR, build_shapes, shapes_version
from .tiny import build_sdxl, build_tiny

# The embedded default: the trained shapes testbed model (attnlens-tiny, random weights, stays available by name).
DEFAULT_MODEL = "attnlens-shapes"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model that attnlens can create offline: ``build(directory)`` writes a diffusers folder.

    ``version`` (a string, or a function returning one) keys the cache folder: a new version builds anew."""

    name: str
    description: str
    build: Callable[[Path], Any]
    version: str | Callable[[], str]


EMBEDDED: dict[str, EmbeddedModel] = {
    "attnlens-tiny": EmbeddedModel(
        name="attnlens-tiny",
        description="SD-1.x-shaped pipeline with random weights, 64x64, cross-attention at 16/8/4 (built offline)",
        build=build_tiny,
        version="1",
    ),
    "attnlens-shapes": EmbeddedModel(
        name="attnlens-shapes",
        description="the trained shapes testbed model (64x64, coloured shapes; docs/testbed.md), shipped weights",
        build=build_shapes,
        version=shapes_version,  # the shipped weights' digest (from the asset manifest)
    ),
    "attnlens-shapes-bow": EmbeddedModel(
        name="attnlens-shapes-bow",
        description="the shapes testbed with a bag-of-words text encoder (no word sees another; binding happens "
                    "only in cross-attention; docs/testbed.md), shipped weights",
        build=functools.partial(build_shapes, asset_dir=BOW_ASSET_DIR),
        version=functools.partial(shapes_version, BOW_ASSET_DIR),
    ),
    "attnlens-tiny-sd3": EmbeddedModel(
        name="attnlens-tiny-sd3",
        description="SD3-shaped MM-DiT (CLIP-L + CLIP-G + T5), random weights, 64x64, 8x8 image tokens (built offline)",
        build=build_sd3,
        version="1",
    ),
    "attnlens-tiny-sdxl": EmbeddedModel(
        name="attnlens-tiny-sdxl",
        description="SDXL-shaped UNet (two CLIP encoders, text_time conditioning), random weights, 16x16 (built offline)",
        build=build_sdxl,
        version="1",
    ),
    "attnlens-tiny-flux": EmbeddedModel(
        name="attnlens-tiny-flux",
        description="Flux-shaped (2 double- + 2 single-stream blocks, CLIP-L + T5, embedded guidance), random weights, "
                    "64x64, packed 8x8 image tokens (built offline)",
        build=build_flux,
        version="1",
    ),
    "attnlens-tiny-pixart": EmbeddedModel(
        name="attnlens-tiny-pixart",
        description="PixArt-Sigma-shaped DiT (attn2 over T5), random weights, 64x64, 8x8 image tokens (built offline)",
        build=build_pixart,
        version="1",
    ),
    "attnlens-tiny-sana": EmbeddedModel(
        name="attnlens-tiny-sana",
        description="Sana-shaped DiT (linear self-attention, attn2 over Gemma-2), random weights, 64x64, 16x16 image "
                    "tokens (built offline)",
        build=build_sana,
        version="1",
    ),
}


def cache_dir() -> Path:
    """Where embedded models are built: ``$ATTNLENS_HOME`` or ``~/.cache/attnlens``."""
    return Path(os.environ.get("ATTNLENS_HOME", Path.home() / ".cache" / "attnlens")).expanduser()


def embedded_model_path(name: str = DEFAULT_MODEL) -> Path:
    """Return the diffusers folder of an embedded model, building it (atomically) if it is not there yet."""
    spec = EMBEDDED[name]
    import diffusers

    version = spec.version() if callable(spec.version) else spec.version
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
            raise ModelNotFound(
                f"'{model}' is a folder but not a diffusers pipeline (no model_index.json)",
                hint="pass the folder that pipe.save_pretrained(...) wrote, or a hub id",
            )
        return "local", str(path.resolve())
    looks_like_path = model.startswith((".", "/", "~")) or os.sep in model.strip("/").split("/", 1)[-1]
    if looks_like_path or model.count("/") != 1:
        raise ModelNotFound(
            f"model '{model}' not found: no such folder, and it is not a hub id (owner/name)",
            hint=f"pass a local diffusers folder, a hub id like CompVis/stable-diffusion-v1-4, or '{DEFAULT_MODEL}'",
        )
    return "hub", model


def load_pipeline(model: Any = DEFAULT_MODEL, device=None, dtype=None):
    """Load a text-to-image pipeline ready for recording.

    Args:
        model (`str` or `DiffusionPipeline`, *optional*, defaults to `DEFAULT_MODEL`, ``"attnlens-shapes"``):
            A hub id (``CompVis/stable-diffusion-v1-4``), a local diffusers folder, the name of an embedded model,
            or an already-built pipeline (moved to ``device``/``dtype`` and returned).
        device (`str`, *optional*): defaults to ``cuda`` when available, else ``cpu``.
        dtype (`torch.dtype` or `str`, *optional*): defaults to fp16 on cuda, fp32 on cpu.

    Supported families: SD 1.x and 2.x (``StableDiffusionPipeline``), SDXL (``StableDiffusionXLPipeline``), and the
    transformer families SD3 / SD3.5 (``StableDiffusion3Pipeline``), Flux (``FluxPipeline``), PixArt-Σ
    (``PixArtSigmaPipeline``) and Sana (``SanaPipeline``); see :func:`model_family`.

    Raises:
        AttnlensError: the model cannot be found or its weights are not available offline.
    """
    device, dtype = default_device_dtype(device, dtype)
    if not isinstance(model, (str, os.PathLike)):
        if denoiser(model) is None:
            raise ConfigError(
                f"expected a diffusers pipeline with a UNet or a transformer, got {type(model).__name__}",
                hint="pass a StableDiffusion(XL/3)Pipeline, FluxPipeline, PixArtSigmaPipeline, SanaPipeline, "
                     "a hub id or a local folder",
            )
        return model.to(device=device, dtype=dtype)

    from diffusers import DiffusionPipeline

    kind, location = resolve_model(str(model))
    kwargs: dict[str, Any] = {"dtype": dtype}
    index = Path(location) / "model_index.json"
    if kind == "hub" or (index.exists() and "safety_checker" in json.loads(index.read_text())):
        kwargs["safety_checker"] = None  # research use: no NSFW filter replacing images with black squares
    try:
        pipe = DiffusionPipeline.from_pretrained(location, **kwargs)
    except (OSError, ValueError) as exc:
        if kind == "hub":
            raise ModelNotFound(
                f"weights for '{model}' are not available (no network or not in the Hugging Face cache)",
                hint="download it once with network access, or pass a local folder: --model /path/to/saved/pipeline",
            ) from exc
        raise ModelNotFound(f"could not load the pipeline in '{location}': {str(exc).splitlines()[0]}") from exc
    if denoiser(pipe) is None:
        raise ConfigError(
            f"'{model}' is a {type(pipe).__name__}, which has neither a UNet nor a transformer",
            hint="attnlens records text-to-image pipelines: SD 1.x/2.x, SDXL, SD3/3.5, Flux, PixArt-Σ, Sana",
        )
    pipe = pipe.to(device)
    _LOADED[pipe] = {"id": str(model), "location": location}
    return pipe


#: what ``load_pipeline`` knows about the pipelines it built (the name it was given and the folder it loaded), kept
#: beside the pipeline object rather than as attributes on it; entries go when the pipeline is garbage-collected
_LOADED: "weakref.WeakKeyDictionary[Any, dict[str, str]]" = weakref.WeakKeyDictionary()


def model_info(pipe) -> dict[str, Any]:
    """``{"id", "location"}`` of a pipeline: the model name ``load_pipeline`` was given and the folder it loaded
    (an embedded model's cache folder, a local folder, a hub id), else the pipeline's own ``name_or_path``."""
    known = _LOADED.get(pipe)
    if known is not None:
        return dict(known)
    name = getattr(pipe, "name_or_path", None) or getattr(getattr(pipe, "config", None), "_name_or_path", None)
    return {"id": name or type(pipe).__name__, "location": name if name and Path(name).exists() else None}


def denoiser(pipe):
    """The pipeline's denoising network: its ``unet``, else its ``transformer`` (DiT / MM-DiT), else None."""
    for attr in ("unet", "transformer"):
        net = getattr(pipe, attr, None)
        if net is not None:
            return net
    return None


#: denoiser class name → family, for the transformer families
_DIT_FAMILIES = {"SD3Transformer2DModel": "sd3", "FluxTransformer2DModel": "flux",
                 "PixArtTransformer2DModel": "pixart", "SanaTransformer2DModel": "sana"}


def model_family(pipe) -> str:
    """The family of a pipeline, from its denoiser's class: ``"sd3"`` (SD3 / SD3.5), ``"flux"``, ``"pixart"``
    (PixArt-α/Σ), ``"sana"``; for UNets ``"sdxl"`` with two text encoders, else ``"sd"`` (SD 1.x / 2.x)."""
    net = denoiser(pipe)
    family = _DIT_FAMILIES.get(type(net).__name__)
    if family is not None:
        return family
    return "sdxl" if getattr(pipe, "text_encoder_2", None) is not None else "sd"
