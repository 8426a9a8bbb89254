"""Models: the embedded registry, the tiny builders, and the shipped shapes model with its checksums.

``load_pipeline`` is the one entry point. It takes a hub id, a local diffusers folder, an embedded model name or an
already-built pipeline. An embedded model is created deterministically on first use into a cache folder and then
loaded through exactly the same ``DiffusionPipeline.from_pretrained`` call as ``CompVis/stable-diffusion-v1-4``.

* :mod:`.registry` — :data:`DEFAULT_MODEL`, :data:`EMBEDDED`, the cache folder, :func:`load_pipeline`;
* :mod:`.tiny` — the seeded tiny builders (``attnlens-tiny``, and SD 2.x / SDXL shaped ones);
* :mod:`.families` — the T5- and Gemma-format tokenizers attnlens trains itself, and the DiT builders
  (``attnlens-tiny-sd3``, ``-flux``, ``-pixart``, ``-sana``);
* :mod:`.shapes` — the shipped ``attnlens-shapes`` assets (``attnlens/assets/shapes``), their manifest and checksums.

Examples::

    >>> import attnlens
    >>> pipe = attnlens.load_pipeline("attnlens-tiny")           # embedded, CPU + fp32 here
    >>> type(pipe).__name__
    'StableDiffusionPipeline'
"""

from __future__ import annotations

from .registry import (
    DEFAULT_MODEL,
    EMBEDDED,
    EmbeddedModel,
    cache_dir,
    default_device_dtype,
    denoiser,
    embedded_model_path,
    load_pipeline,
    model_family,
    model_info,
    resolve_model,
)
from .shapes import ASSET_DIR, build_shapes, sha256, shapes_manifest, shapes_version
from .families import build_flux, build_pixart, build_sana, build_sd3
from .tiny import build_sd2, build_sdxl, build_tiny

__all__ = [
    "ASSET_DIR", "DEFAULT_MODEL", "EMBEDDED", "EmbeddedModel", "build_flux", "build_pixart", "build_sana", "build_sd2",
    "build_sd3", "build_sdxl", "build_shapes", "build_tiny",
    "cache_dir", "default_device_dtype", "denoiser", "embedded_model_path", "load_pipeline", "model_family", "model_info", "resolve_model",
    "sha256", "shapes_manifest", "shapes_version",
]
