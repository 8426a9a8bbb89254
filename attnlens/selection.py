"""Layer, step and metric selections, shared by recording and analysis.

One syntax everywhere: a layer filter is None (all), a module path, a glob (``up_blocks.*``), a resolution (``16`` or ``res16``),
a list of those, or a predicate; a step selection is None (all), an index, a ``range``/``slice``, a list, or a
predicate, and on the command line ``START:STOP[:STRIDE]``, ``0,10,20`` or ``7`` (:func:`parse_steps`).
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from typing import Any, Callable, Iterable

from .errors import BadOption, ConfigError, EmptySelection, NotFoundError

_RES = re.compile(r"res\d+")

LayerFilter = None | str | int | Iterable[str | int] | Callable[[str], bool]
StepFilter = None | int | range | slice | Iterable[int] | Callable[[int], bool]


def select_layers(names: list[str], spec: LayerFilter, resolutions: dict[str, tuple[int, int]] | None = None) -> list[str]:
    """Normalise a layer filter once: None (all), a name, a glob (``up_blocks.*``), a resolution (16), a list, a predicate."""
    if spec is None:
        return list(names)
    if callable(spec) and not isinstance(spec, str):
        return [n for n in names if spec(n)]
    items = [spec] if isinstance(spec, (str, int)) else list(spec)
    chosen: set[str] = set()
    for item in items:
        if isinstance(item, str) and _RES.fullmatch(item):  # a resolution group: res16 is the same as 16
            item = int(item[3:])
        if isinstance(item, int):
            if resolutions is None:
                raise ConfigError("selecting layers by resolution needs the latent size")
            hits = [n for n in names if resolutions[n][0] == item]
            if not hits:
                valid = sorted({r[0] for r in resolutions.values()})
                raise EmptySelection(f"no cross-attention layer at resolution {item}", hint=f"available: {valid}")
        elif any(c in item for c in "*?["):
            hits = fnmatch.filter(names, item)
            if not hits:
                raise EmptySelection(f"layer pattern '{item}' matches no cross-attention layer",
                                    hint=f"layers look like {names[0]}")
        else:
            if item not in names:
                close = difflib.get_close_matches(item, names, n=3, cutoff=0.4)
                raise NotFoundError(f"unknown layer '{item}'", hint=f"closest: {', '.join(close) or names[0]}")
            hits = [item]
        chosen.update(hits)
    return [n for n in names if n in chosen]


def step_predicate(spec: StepFilter) -> Callable[[int], bool]:
    """Normalise a step filter: None (all), an int, a range/slice, a list, or a predicate."""
    if spec is None:
        return lambda i: True
    if callable(spec):
        return spec
    if isinstance(spec, int):
        return lambda i: i == spec
    if isinstance(spec, slice):
        start, stop, stride = spec.start or 0, spec.stop, spec.step or 1
        return lambda i: i >= start and (stop is None or i < stop) and (i - start) % stride == 0
    allowed = set(spec)
    return lambda i: i in allowed


def parse_steps(text: str | None) -> StepFilter:
    """Parse ``--steps`` syntax: ``0:25``, ``::5``, ``0,10,20``, ``7``."""
    if text is None or text in ("", "all"):
        return None
    try:
        if ":" in text:
            parts = [int(p) if p else None for p in text.split(":")]
            return slice(*parts)
        if "," in text:
            return [int(p) for p in text.split(",")]
        return int(text)
    except ValueError:
        raise BadOption(f"cannot read step selection '{text}'", hint="use START:STOP[:STRIDE], a list 0,10,20 or one index") from None


def step_filter(steps: Any) -> Callable[[int], bool]:
    """A predicate over loop indices from any step selection: a filter (:func:`step_predicate`), selection text
    (:func:`parse_steps`), or a list of selection texts (a step is kept when any of them keeps it)."""
    if isinstance(steps, str):
        steps = parse_steps(steps)
    elif isinstance(steps, (list, tuple)) and steps and all(isinstance(s, str) for s in steps):
        preds = [step_filter(s) for s in steps]
        return lambda i: any(p(i) for p in preds)
    return step_predicate(steps)
