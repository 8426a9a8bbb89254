"""Versions of the libraries a run depends on (stored in every manifest)."""

from __future__ import annotations

import platform
from importlib import metadata

PACKAGES = ("attnlens", "torch", "diffusers", "transformers", "spacy", "zarr", "numpy")


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
