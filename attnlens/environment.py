"""Versions of the libraries a run depends on (stored in every manifest)."""

from __future__ import annotations

import functools
import platform
from importlib import metadata

PACKAGES = ("attnlens", "torch", "diffusers", "transformers", "spacy", "zarr", "numpy")


def library_versions() -> dict[str, str]:
    return dict(_library_versions())


@functools.lru_cache(maxsize=1)
def _library_versions() -> dict[str, str]:  # package metadata lookups cost ~20 ms: once per process
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
