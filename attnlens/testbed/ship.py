"""Ship a trained testbed pipeline inside the package, where ``attnlens-shapes`` (the embedded default) finds it.

    python -m attnlens.testbed.ship runs/testbed/pipeline

copies the weights and configs of ``PIPELINE`` (fp16 safetensors as ``attnlens.testbed.train`` exports them) into
``attnlens/assets/shapes/`` — without the tokenizer files, which are regenerated from the shipped CLIP BPE
vocabulary when the model is first built into the cache — and writes ``attnlens/assets/shapes/attnlens_model.json``
with the SHA-256 of every file. ``attnlens.models.shapes`` (which owns the asset folder, the file list and the
checksum) verifies those hashes before building, so a truncated or Git-LFS-pointer checkout fails with one clear
line instead of loading garbage.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from ..models.shapes import ASSET_DIR, FILES, MANIFEST, asset_dir_for, sha256

__all__ = ["ASSET_DIR", "FILES", "sha256", "ship"]


def ship(pipeline: str | Path, dest: str | Path | None = None, note: dict | None = None) -> dict:
    """Copy ``pipeline`` into ``dest`` and write the manifest; returns the manifest. The model's name is the one
    the trainer wrote (``--name``; ``attnlens-shapes`` by default) and ``dest`` defaults to its package folder."""
    src = Path(pipeline)
    info = src / "attnlens_testbed.json"
    extra = json.loads(info.read_text()) if info.is_file() else {}
    name = extra.get("name", "attnlens-shapes")
    dest = Path(dest) if dest is not None else asset_dir_for(name)
    missing = [f for f in FILES if not (src / f).is_file()]
    if missing:
        raise SystemExit(f"error: {src} is not an exported testbed pipeline (missing {missing[0]})")
    if dest.exists():
        shutil.rmtree(dest)
    files = {}
    for f in FILES:
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / f, dest / f)
        files[f] = {"sha256": sha256(dest / f), "bytes": (dest / f).stat().st_size}
    digest = hashlib.sha256("".join(v["sha256"] for v in files.values()).encode()).hexdigest()[:12]
    manifest = {"name": name, "version": digest, "files": files, "training": extra, **(note or {})}
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


# ``python -m attnlens.testbed.ship PIPELINE [--dest DIR]`` is ``attnlens testbed ship`` (``--help`` lists the options)
if __name__ == "__main__":
    from attnlens.cli import run_module

    run_module("ship", None)
