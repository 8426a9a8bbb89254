"""The shipped ``attnlens-shapes`` model: its asset folder, file list, SHA-256 checksums and the build that checks them.

The trained testbed pipeline (docs/testbed.md) lives in ``attnlens/assets/shapes`` as fp16 safetensors and configs,
without tokenizer files, plus ``attnlens_model.json``, the manifest with every file's SHA-256 and byte count that
``attnlens.testbed.ship`` writes. :func:`build_shapes` copies those files into a diffusers folder only after their
checksums match, so a truncated or Git-LFS-pointer checkout fails with one clear line instead of loading garbage.
"""

from __future__ import annotations

import hashlib
import re
import json
import shutil
from pathlib import Path
from typing import Any

from ..errors import AttnlensError, ModelNotFound
from ..tokenizer import clip_tokenizer

#: the package's shipped shapes model (``attnlens/assets/shapes``)
ASSET_DIR = Path(__file__).resolve().parents[1] / "assets" / "shapes"
#: the bag-of-words variant ``attnlens-shapes-bow`` (docs/testbed.md): same world, a text encoder that mixes no words
BOW_ASSET_DIR = ASSET_DIR.parent / "shapes-bow"

#: every word the testbed models saw in training (the renderer's captions: attnlens.testbed.render; a test keeps the
#: two equal). Any other word reaches their text encoder as word pieces it never learned.
SHAPES_WORDS = frozenset({"a", "and", "next", "to", "big", "small", "red", "yellow", "green", "blue", "purple", "pink",
                          "circle", "square", "triangle", "cross"})
TRAINED_WORDS: dict[str, frozenset[str]] = {"attnlens-shapes": SHAPES_WORDS, "attnlens-shapes-bow": SHAPES_WORDS}


def unknown_words(model_id: str | None, prompt: str) -> list[str]:
    """The words of ``prompt`` an embedded testbed model never saw in training (empty for any other model).

    Examples::

        >>> unknown_words("attnlens-shapes", "a red crown and a golden strawberry")
        ['crown', 'golden', 'strawberry']
        >>> unknown_words("CompVis/stable-diffusion-v1-4", "a red crown")
        []
    """
    known = TRAINED_WORDS.get(model_id or "")
    if known is None:
        return []
    words = [w for w in re.findall(r"[^\W\d_]+|\d+", prompt.casefold())]
    return list(dict.fromkeys(w for w in words if w not in known))


def asset_dir_for(name: str) -> Path:
    """The package folder a shipped testbed model named ``name`` lives in (``attnlens-shapes`` → ``assets/shapes``)."""
    return ASSET_DIR.parent / name.removeprefix("attnlens-")


#: the manifest inside :data:`ASSET_DIR`
MANIFEST = "attnlens_model.json"
#: the files of an exported testbed pipeline that are shipped (the tokenizer is regenerated, not shipped)
FILES = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
)


def sha256(path: Path) -> str:
    """The SHA-256 hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def shapes_manifest(asset_dir: Path | None = None) -> dict[str, Any]:
    """The manifest of the shipped shapes model (``attnlens/assets/shapes/attnlens_model.json``)."""
    path = Path(asset_dir or ASSET_DIR) / MANIFEST
    if not path.is_file():
        raise ModelNotFound(
            "the trained shapes model is not in this installation (attnlens/assets/shapes is missing)",
            hint="reinstall attnlens from a full checkout, or use --model attnlens-tiny",
        )
    return json.loads(path.read_text())


def shapes_version(asset_dir: Path | None = None) -> str:
    """The shipped weights' digest (the manifest's ``version``), or ``"missing"`` when the assets are absent."""
    try:
        return str(shapes_manifest(asset_dir)["version"])
    except AttnlensError:
        return "missing"


def build_shapes(directory: Path, asset_dir: Path | None = None) -> None:
    """Write ``attnlens-shapes`` into ``directory``: the shipped weights and configs, each verified against its
    SHA-256, plus tokenizer files generated from the shipped CLIP BPE vocabulary."""
    source = Path(asset_dir or ASSET_DIR)
    manifest = shapes_manifest(source)
    for rel, info in manifest["files"].items():
        src = source / rel
        if not src.is_file() or sha256(src) != info["sha256"]:
            raise ModelNotFound(
                f"the shipped shapes model file '{rel}' is missing or damaged (checksum mismatch)",
                hint="restore attnlens/assets/shapes from git (git lfs is not used; run: git checkout -- attnlens/assets)",
            )
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, directory / rel)
    clip_tokenizer().save_pretrained(directory / "tokenizer")
