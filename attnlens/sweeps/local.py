"""The local executor: N worker processes on this machine (``spawn``ed, each loading the model once and running
with ``threads`` torch threads), fed one cell at a time."""

from __future__ import annotations

import multiprocessing
import os
import signal
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
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
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # idle, a worker ignores Ctrl-C: the driver stops it


def _cell(spec: SweepSpec, cell: Cell, root: str) -> dict[str, Any]:
    """``run_cell`` in a worker, where Ctrl-C interrupts only while a cell runs (its run is then marked
    interrupted and the KeyboardInterrupt goes back to the driver as the cell's result)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return run_cell(spec, cell, root)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def failure(cell: Cell, exc: BaseException) -> dict[str, Any]:
    """The result of a cell whose worker raised or died."""
    what = "its worker process died" if isinstance(exc, BrokenProcessPool) else f"{type(exc).__name__}: {exc}"
    return {"id": cell.id, "state": FAILED, "error": what.splitlines()[0] if what else type(exc).__name__}


def run_local(spec: SweepSpec, cells: Sequence[Cell], root: str | Path, on_result: OnResult, *, workers: int = 2,
              threads: int | None = None) -> None:
    """Run ``cells`` on ``workers`` processes, calling ``on_result(cell, result)`` in this process as each ends.
    At most ``workers`` cells are handed out at a time, so a stop leaves nothing queued. On Ctrl-C it waits for
    the workers to stop (their runs in progress are marked interrupted) and re-raises; on any other error here it
    ends the worker processes. Either way no worker is left writing after this returns."""
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init,
                               initargs=(threads or default_threads(workers),))
    todo = list(cells)[::-1]
    running: dict[Any, Cell] = {}
    try:
        while todo or running:
            while todo and len(running) < workers:
                cell = todo.pop()
                running[pool.submit(_cell, spec, cell, str(root))] = cell
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in done:
                cell = running.pop(f)
                try:
                    result = f.result()
                except Exception as exc:  # noqa: BLE001  (a dead worker or a bug: the cell failed, the sweep goes on)
                    result = failure(cell, exc)
                on_result(cell, result)
    except KeyboardInterrupt:
        # Ctrl-C reached the workers too (one process group): each marks its run interrupted and stops; a worker
        # that did not get it finishes its one cell first. A second Ctrl-C ends them at once.
        try:
            pool.shutdown(wait=True, cancel_futures=True)
        except BaseException:
            _end_workers(pool)
            raise
        raise
    except BaseException:
        _end_workers(pool)
        raise
    pool.shutdown(wait=True)


def _end_workers(pool: ProcessPoolExecutor) -> None:
    """Stop the pool and end its worker processes now (a worker must not write after its driver has gone)."""
    processes = list(getattr(pool, "_processes", {}).values())  # the pool's own children
    pool.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        if p.is_alive():
            p.terminate()
    for p in processes:
        p.join(timeout=10)


__all__ = ["default_threads", "failure", "run_local"]
