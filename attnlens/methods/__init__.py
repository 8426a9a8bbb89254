"""Guidance methods: one module per method, all registered by name (see ``registry``)."""

from .base import GuidanceMethod, LossOutput, StepPlan
from .registry import available_methods, get_method, register_method

__all__ = ["GuidanceMethod", "LossOutput", "StepPlan", "available_methods", "get_method", "register_method"]
