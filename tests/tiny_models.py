"""Tiny SD 2.x and SDXL pipelines for the tests: the seeded builders of ``attnlens.models.tiny``, saved as diffusers
folders and loaded back through ``attnlens.load_pipeline(path)`` — the same ``from_pretrained`` path as a hub model."""

from __future__ import annotations

from attnlens.models.tiny import build_sd2, build_sdxl

__all__ = ["build_sd2", "build_sdxl"]
