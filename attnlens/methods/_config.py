"""Validation of method configs, shared by the built-in methods.

Each checker reads one field of a frozen config dataclass (called from its ``__post_init__``), raises
``ValueError`` with a one-line message naming the field, the accepted values and what it got (``get_method`` turns
it into an ``AttnlensError``), and may store a normalised value (a float, a tuple, a sorted dict).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

from ._shared import DISTANCE_ALIASES, DISTANCES


def set_field(cfg: Any, name: str, value: Any) -> None:
    """Store ``value`` in field ``name`` of a frozen dataclass instance (inside ``__post_init__``)."""
    object.__setattr__(cfg, name, value)


def _finite_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_float(cfg: Any, name: str, *, low: float | None = None, strict: bool = False,
                high: float | None = None) -> None:
    """Require a finite real in [low, high] (``strict``: low excluded); store it as ``float``."""
    v = getattr(cfg, name)
    ok = _finite_real(v)
    ok = ok and (low is None or (v > low if strict else v >= low)) and (high is None or v <= high)
    if not ok:
        rng = "".join([f" {'>' if strict else '≥'} {low}" if low is not None else "",
                       f" and ≤ {high}" if high is not None else ""])
        raise ValueError(f"{name} must be a finite number{rng}; got {v!r}")
    set_field(cfg, name, float(v))


def check_int(cfg: Any, name: str, *, low: int = 0) -> None:
    """Require an integer ≥ ``low``."""
    v = getattr(cfg, name)
    if not isinstance(v, int) or isinstance(v, bool) or v < low:
        raise ValueError(f"{name} must be an integer ≥ {low}; got {v!r}")


def check_bool(cfg: Any, name: str) -> None:
    """Require ``True`` or ``False``."""
    v = getattr(cfg, name)
    if not isinstance(v, bool):
        raise ValueError(f"{name} must be true or false; got {v!r}")


def check_choice(cfg: Any, name: str, choices: Iterable[str]) -> None:
    """Require one of ``choices``."""
    v, choices = getattr(cfg, name), sorted(choices)
    if v not in choices:
        raise ValueError(f"{name} must be one of {choices}; got {v!r}")


def check_step_map(cfg: Any, name: str, *, low: float | None = None, high: float | None = None) -> None:
    """Require a mapping ``{step index: number}`` (JSON string keys accepted); store it with int keys, sorted."""
    v = getattr(cfg, name)
    if not isinstance(v, Mapping):
        raise ValueError(f"{name} must be a mapping {{step index: value}}; got {v!r}")
    out: dict[int, float] = {}
    for k, x in v.items():
        try:
            step = int(k)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: step index {k!r} is not an integer") from None
        ok = _finite_real(x)
        if step < 0 or not ok or (low is not None and x < low) or (high is not None and x > high):
            rng = f" in [{low}, {high}]" if low is not None and high is not None else ""
            raise ValueError(f"{name} must map step indices ≥ 0 to finite numbers{rng}; got {k!r}: {x!r}")
        out[step] = float(x)
    set_field(cfg, name, dict(sorted(out.items())))


def check_pair(cfg: Any, name: str, *, low: float = 0.0) -> None:
    """Require two finite numbers ≥ ``low`` (a list from JSON is accepted); store them as a tuple of floats."""
    v = getattr(cfg, name)
    ok = isinstance(v, (tuple, list)) and len(v) == 2 and all(_finite_real(x) and x >= low for x in v)
    if not ok:
        raise ValueError(f"{name} must be two finite numbers ≥ {low}; got {v!r}")
    set_field(cfg, name, (float(v[0]), float(v[1])))


def check_step_list(cfg: Any, name: str) -> None:
    """Require a list of step indices (integers ≥ 0); store a tuple."""
    v = getattr(cfg, name)
    ok = isinstance(v, (list, tuple)) and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in v)
    if not ok:
        raise ValueError(f"{name} must be a list of step indices ≥ 0; got {v!r}")
    set_field(cfg, name, tuple(v))


def check_subjects(cfg: Any, name: str = "subjects") -> None:
    """Require None or a list of words (str) and token positions (int ≥ 1); store a tuple."""
    v = getattr(cfg, name)
    if v is None:
        return
    ok = isinstance(v, (list, tuple)) and all(
        (isinstance(s, str) and s.strip()) or (isinstance(s, int) and not isinstance(s, bool) and s >= 1) for s in v)
    if not ok:
        raise ValueError(f"{name} must be null or a list of words and token positions (≥ 1); got {v!r}")
    set_field(cfg, name, tuple(v))


def check_kernel_size(cfg: Any, name: str = "kernel_size") -> None:
    """Require an odd integer ≥ 1."""
    check_int(cfg, name, low=1)
    if getattr(cfg, name) % 2 == 0:
        raise ValueError(f"{name} must be odd; got {getattr(cfg, name)}")


def check_distance(cfg: Any, name: str = "distance") -> None:
    """Require a name of ``_shared.DISTANCES`` or one of its short aliases; store the long name."""
    set_field(cfg, name, DISTANCE_ALIASES.get(getattr(cfg, name), getattr(cfg, name)))
    check_choice(cfg, name, DISTANCES)


def check_syngen_config(cfg: Any) -> None:
    """Validate the options SynGen and its variants share (step_size, intervention_steps, resolution, distance,
    positive, negative); a short distance name is stored under its long name."""
    check_float(cfg, "step_size", low=0.0, strict=True)
    check_int(cfg, "intervention_steps")
    check_int(cfg, "resolution", low=1)
    check_distance(cfg)
    check_bool(cfg, "positive")
    check_bool(cfg, "negative")
    if not (cfg.positive or cfg.negative):
        raise ValueError("positive and negative are both false: at least one term must be enabled")


def check_refinement_schedule(cfg: Any) -> None:
    """Validate the fields of ``_shared.RefinementScheduleMethod``'s schedule: scale_factor (> 0), scale_range (two
    numbers ≥ 0), max_iter_to_alter, refinement_steps (integers ≥ 0), refinement_at (step indices), resolution
    (≥ 1)."""
    check_float(cfg, "scale_factor", low=0.0, strict=True)
    check_pair(cfg, "scale_range")
    check_int(cfg, "max_iter_to_alter")
    check_int(cfg, "refinement_steps")
    check_step_list(cfg, "refinement_at")
    check_int(cfg, "resolution", low=1)
