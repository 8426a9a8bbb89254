"""Helpers the scorers share: what they score (an image or a run, and its prompt), how they load a model
(``from_pretrained`` on a hub id, a local folder or a tiny scorer model's name), and unit-vector algebra.

Examples::

    >>> import numpy as np
    >>> image, prompt = resolve_input(np.zeros((8, 8, 3), np.uint8), "a red circle")
    >>> image.size, prompt
    ((8, 8), 'a red circle')
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import BadOption, ModelNotFound
from ..models.registry import default_device_dtype
from ..store import Run, is_run, open_run
from ._tiny import TINY_MODELS, tiny_model_path


class ImageScorer:
    """Base of the scorers that judge an image against its prompt: ``scorer(run)`` or ``scorer(image, prompt)``
    calls ``scorer.score(...)``, so an instance is a scorer in the registry's sense (``scorer(run) -> dict``)."""

    name = "scorer"

    def __call__(self, run_or_image: Any, prompt: str | None = None) -> dict[str, float]:
        return self.score(run_or_image, prompt)

    def score(self, run_or_image: Any, prompt: str | None = None) -> dict[str, float]:
        raise NotImplementedError


def resolve_input(run_or_image: Any, prompt: str | None = None, sample: int = 0) -> tuple[Image.Image, str]:
    """``(RGB image, prompt)`` of what a scorer was given.

    ``run_or_image`` is a recorded run (a :class:`attnlens.store.Run` or its folder: its image ``sample`` and its
    prompt), a PIL image, or an ``(H, W, 3)`` array (uint8, or float in 0–255). An explicit ``prompt`` wins over
    the run's.

    Raises:
        BadOption: no prompt for an image, a run without its image, or something that is not an image.
    """
    if isinstance(run_or_image, (str, os.PathLike)) and is_run(run_or_image):
        run_or_image = open_run(run_or_image)
    if isinstance(run_or_image, Run):
        run = run_or_image
        img = run.image(sample)
        if img is None:
            raise BadOption(f"run '{run.path}' has no image {sample} to score",
                            hint="record it again (it is incomplete) or pass the image itself")
        prompt = prompt or run.info.sample_prompt(sample)
        image = img
    elif isinstance(run_or_image, Image.Image):
        image = run_or_image
    elif isinstance(run_or_image, (np.ndarray, torch.Tensor)):
        arr = np.asarray(run_or_image.detach().cpu() if isinstance(run_or_image, torch.Tensor) else run_or_image)
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise BadOption(f"expected an (H, W, 3) image array, got shape {arr.shape}",
                            hint="pass a PIL image, an (H, W, 3) uint8 array or a recorded run")
        image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    else:
        raise BadOption(f"cannot score a {type(run_or_image).__name__}",
                        hint="pass a PIL image, an (H, W, 3) uint8 array, a Run or a run folder")
    if not prompt:
        raise BadOption("no prompt to score the image against", hint="pass prompt=... (a run carries its own)")
    return image.convert("RGB"), str(prompt)


def model_location(model_id: str | os.PathLike) -> str:
    """Where ``from_pretrained`` loads ``model_id`` from: a tiny scorer model's folder (built on first use), a
    local folder (it must hold a ``config.json``), or a hub id (``owner/name``) as given."""
    name = str(model_id)
    if name in TINY_MODELS:
        return str(tiny_model_path(name))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFound(f"'{name}' is a folder but holds no config.json",
                                hint="pass the folder that model.save_pretrained(...) wrote, or a hub id")
        return str(path.resolve())
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ModelNotFound(f"model '{name}' not found: no such folder, and it is not a hub id (owner/name)",
                            hint=f"pass a local folder, a hub id such as openai/clip-vit-base-patch16, or one of "
                                 f"{', '.join(TINY_MODELS)}")
    return name


def load_pretrained(model_cls, processor_cls, model_id: str | os.PathLike, device=None, dtype=None):
    """``(model, processor)`` from ``model_cls.from_pretrained`` / ``processor_cls.from_pretrained`` on the same
    id or folder, in eval mode on ``device`` (default cuda when present, else cpu) and ``dtype`` (default fp16 on
    cuda, fp32 on cpu).

    Raises:
        ModelNotFound: the id or folder cannot be loaded (no network, not in the cache, not that model class).
    """
    location = model_location(model_id)
    device, dtype = default_device_dtype(device, dtype)
    try:
        model = model_cls.from_pretrained(location)  # then .to(dtype): the same on every transformers version
        processor = processor_cls.from_pretrained(location)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFound(f"could not load {model_cls.__name__} from '{model_id}': {first}",
                            hint="download it once with network access (it then loads from the Hugging Face cache) "
                                 "or pass a folder written by save_pretrained") from exc
    return model.to(device=device, dtype=dtype).eval(), processor


def unit(x: torch.Tensor) -> torch.Tensor:
    """``x / ‖x‖`` along the last axis (float32)."""
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True)


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def model_dtype(model) -> torch.dtype:
    return next(model.parameters()).dtype
