"""Driving a sweep: pin the protocol in ``ROOT/sweep.json``, skip the cells already done, hand the rest to an
executor, and record each result as it arrives. ``ROOT`` is a folder or an fsspec URL (``s3://bucket/root``): on
a URL, each worker records a cell in its local cache and publishes it (``attnlens.sweeps.worker``), and this
process writes ``sweep.json`` at the URL. Rerunning the same spec on the same root resumes: cells whose
runs are complete with the cell's settings are kept, anything else is recorded (again)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from ..errors import BadOption
from ..models.registry import resolve_model
from ..store.remote import is_url
from .local import run_local
from .manifest import DONE, PENDING, REUSED, SweepManifest, done_cells
from .ray_executor import run_ray
from .spec import Cell, SweepSpec

EXECUTORS = ("local", "ray")
Progress = Callable[[int, int], None]


def model_location(model: str) -> str | None:
    """The folder the model loads from (an embedded model is built here once), or None for a hub id."""
    kind, location = resolve_model(model)
    return None if kind == "hub" else location


def plan(spec: SweepSpec, root: str | Path) -> tuple[SweepManifest, list[Cell]]:
    """Write (or continue) ``ROOT/sweep.json`` and return it with the cells still to run: those whose run is not
    complete with the cell's settings, and those missing a score the spec asks for. ``root`` may be a URL
    (``s3://bucket/root``): the cells' run manifests are then read there, in one batch."""
    root = root if is_url(root) else Path(root)
    man = SweepManifest.create(root, spec, model_location(spec.model))
    todo = []
    cells = spec.cells(root)
    done = done_cells(spec, cells)
    for c in cells:
        rec = man.cell(c.id)
        if c.id in done:
            man.set(c.id, rec["state"] if rec["state"] in DONE else REUSED, write=False, error=None)
            if set(spec.scorers) <= set(rec.get("scores") or {}):
                continue
        else:
            man.set(c.id, PENDING, write=False)
        todo.append(c)
    man.write()
    return man, todo


def run_sweep(spec: SweepSpec, root: str | Path, *, executor: str = "local", workers: int = 2,
              threads: int | None = None, address: str | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Run every cell of ``spec`` not yet done under ``root`` on ``executor``; returns a summary
    (``cells``, ``ran``, ``complete``, ``reused``, ``failed``, ``seconds``). ``progress(done, total)`` is called
    as cells finish. Ctrl-C stops it; what finished is in ``sweep.json`` and a rerun resumes."""
    if executor not in EXECUTORS:
        raise BadOption(f"unknown executor '{executor}'", hint=f"choose one of: {', '.join(EXECUTORS)}")
    if workers < 1:
        raise BadOption(f"--workers must be at least 1, got {workers}", hint="e.g. --workers 2")
    t0 = time.perf_counter()
    man, todo = plan(spec, root)
    total, finished = len(todo), [0]
    if progress:
        progress(0, total)

    def on_result(cell: Cell, result: dict[str, Any]) -> None:
        rec = man.cell(cell.id)
        scores = {**(rec.get("scores") or {}), **(result.get("scores") or {})}
        man.set(cell.id, result["state"], error=result.get("error"), scores=scores, worker=result.get("worker"),
                seconds=result.get("seconds"), attempts=int(rec.get("attempts", 0)) + 1)
        finished[0] += 1
        if progress:
            progress(finished[0], total)

    try:
        if todo and executor == "ray":
            run_ray(spec, todo, root, on_result, address=address)
        elif todo:
            run_local(spec, todo, root, on_result, workers=workers, threads=threads)
    finally:
        man.flush()  # what a URL root's manifest held back (SweepManifest.min_interval)
    return summary(man.data["cells"], ran=total, seconds=time.perf_counter() - t0)


def summary(cells: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """Counts of cells by state."""
    counts: dict[str, int] = {}
    for c in cells:
        counts[c["state"]] = counts.get(c["state"], 0) + 1
    return {"cells": len(cells), **{s: counts.get(s, 0) for s in ("complete", "reused", "failed", "pending")},
            **extra}


__all__ = ["EXECUTORS", "model_location", "plan", "run_sweep", "summary"]
