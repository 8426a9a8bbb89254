"""``none``: plain sampling with no guidance — still recorded, the baseline every comparison needs."""

from __future__ import annotations

from .base import GuidanceMethod
from .registry import register_method


@register_method("none")
class NoGuidance(GuidanceMethod):
    """No latent updates: ``plan`` returns None at every step."""
