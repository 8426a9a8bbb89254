"""The local executor: N worker processes on this machine (``spawn``ed, each loading the model once and running
with ``threads`` torch threads), fed one cell at a time."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .manifest import FAILED
from .spec import Cell, SweepSpec
from .worker import run_cell

OnResult = Callable[[Cell, dict[str, Any]], None]


def default_threads(workers: int) -> int:
    """Torch threads per worker: the machine's cores shared out, at least one."""
    return max(1, (os.cpu_count() or 1) // max(workers, 1))


def _init(threads: int) -> None:
    """A worker's start: its torch threads, and no per-component progress bars when it loads the model."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    torch.set_num_threads(threads)
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()


def failure(cell: Cell, exc: BaseException) -> dict[str, Any]:
    """The result of a cell whose worker raised or died."""
    what = "its worker process died" if isinstance(exc, BrokenProcessPool) else f"{type(exc).__name__}: {exc}"
    return {"id": cell.id, "state": FAILED, "error": what.splitlines()[0] if what else type(exc).__name__}


def run_local(spec: SweepSpec, cells: Sequence[Cell], root: str | Path, on_result: OnResult, *, workers: int = 2,
              threads: int | None = None) -> None:
    """Run ``cells`` on ``workers`` processes, calling ``on_result(cell, result)`` in this process as each ends.
    Ctrl-C cancels the cells not started and re-raises (the workers' runs in progress are left incomplete)."""
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init,
                               initargs=(threads or default_threads(workers),))
    try:
        futures = {pool.submit(run_cell, spec, c, str(root)): c for c in cells}
        for f in as_completed(futures):
            cell = futures[f]
            try:
                result = f.result()
            except Exception as exc:  # noqa: BLE001  (a dead worker or a bug: the cell failed, the sweep goes on)
                result = failure(cell, exc)
            on_result(cell, result)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


__all__ = ["default_threads", "failure", "run_local"]
