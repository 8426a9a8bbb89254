"""Scorers: functions that judge a finished run, run by ``attnlens sweep`` (the spec's ``scorers = [...]``) on the
same workers that record.

The interface, for every scorer::

    scorer(run: attnlens.Run) -> dict[str, float | int | bool | str]

It receives a complete run (opened read-only, its image and maps on local disk) and returns one flat row of
JSON values (no nested tables; names without the scorer's prefix). It must be a pure function of the run: the
same run gives the same row, so a resumed sweep can score a reused run again. A scorer that cannot judge a run
raises an ``attnlens.errors.AttnlensError`` with a one-line message; the sweep records it as that cell's error.

Register one under a name with :func:`register_scorer` (a decorator) and find it with :func:`get_scorer`::

    >>> from attnlens.scoring import register_scorer, get_scorer, available_scorers
    >>> @register_scorer("n-layers")
    ... def n_layers(run):
    ...     return {"layers": len(run.layers)}
    >>> get_scorer("n-layers") is n_layers
    True
    >>> "shapes" in available_scorers()
    True

Built in: ``shapes`` — the shapes testbed's evaluator (``attnlens.testbed.evaluate``): success, misbinding,
swapped, leakage, neglect, extra, object accuracy and ``bound`` of the run's image against its prompt (meaningful for
the attnlens-shapes models and prompts of their world).
"""

from __future__ import annotations

import difflib
from typing import Any, Callable

from ..errors import NotFoundError
from ..testbed.bench import score_run

Scorer = Callable[[Any], dict[str, Any]]
_SCORERS: dict[str, Scorer] = {}


def register_scorer(name: str, fn: Scorer | None = None):
    """Register ``fn`` under ``name`` (as a decorator without ``fn``). A later registration replaces an earlier one."""
    def add(f: Scorer) -> Scorer:
        _SCORERS[name] = f
        return f

    return add(fn) if fn is not None else add


def get_scorer(name: str) -> Scorer:
    """The scorer registered under ``name``; NotFoundError naming the closest ones."""
    try:
        return _SCORERS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_SCORERS), n=3) or sorted(_SCORERS)
        raise NotFoundError(f"unknown scorer '{name}'", hint=f"known: {', '.join(close)}") from None


def available_scorers() -> list[str]:
    return sorted(_SCORERS)


@register_scorer("shapes")
def shapes(run) -> dict[str, Any]:
    """The shapes evaluator's outcome of the run's image (``attnlens.testbed.bench.score_run``), without the columns
    that only repeat the run's identity."""
    row = score_run(run.path)
    return {k: v for k, v in row.items() if k not in ("run", "method", "variant", "prompt", "seed")}


__all__ = ["Scorer", "available_scorers", "get_scorer", "register_scorer"]
