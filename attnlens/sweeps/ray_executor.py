"""The Ray executor: one Ray task per cell on a running cluster (``ray start --head``; ``address`` is its
``HOST:PORT``, or None for a cluster started in this process).

Each task asks for one CPU, and one GPU when the cluster has GPUs; Ray reuses its worker processes, so a worker
loads the model once (``attnlens.sweeps.worker.pipeline``). A task whose worker process or node dies is retried
(``max_retries``); the run-folder lock and the completion marker make the retry safe (``attnlens.sweeps.worker``).
The workers write runs under the sweep root, so every node must see that path (one machine, a shared file system)
or reach it (a URL root: each worker publishes its cells, with the object store's credentials of its own node),
and import the same attnlens (start the nodes with it installed or on ``PYTHONPATH``).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..errors import BadOption
from .local import OnResult, failure
from .spec import Cell, SweepSpec
from .worker import run_cell

#: how often a task is tried again after its worker died
MAX_RETRIES = 3


@contextlib.contextmanager
def session(address: str | None) -> Iterator[Any]:
    """``ray`` connected to the cluster at ``address`` (``HOST:PORT``; None: start or join a local one), and
    disconnected afterwards when this call connected. Ray's own messages (a worker that died, ...) go to stderr
    meanwhile, so that stdout keeps only the command's result."""
    try:
        import ray
    except ModuleNotFoundError:
        raise BadOption("--executor ray needs Ray", hint="pip install 'attnlens[ray]'") from None
    started = not ray.is_initialized()
    with contextlib.redirect_stdout(sys.stderr):
        if started:
            try:
                ray.init(address=address, log_to_driver=False, logging_level="ERROR", include_dashboard=False)
            except ConnectionError as exc:
                raise BadOption(f"no Ray cluster at {address}: {str(exc).splitlines()[0]}",
                                hint="start one with 'ray start --head --port PORT' and pass --address HOST:PORT") from None
        try:
            yield ray
        finally:
            if started:
                ray.shutdown()


def remote(ray: Any, fn: Any, *, max_retries: int = MAX_RETRIES):
    """``fn`` as a Ray task: one CPU, one GPU when the cluster has any, retried when its worker dies."""
    gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
    return ray.remote(fn).options(num_cpus=1, num_gpus=gpus, max_retries=max_retries)


def run_ray(spec: SweepSpec, cells: Sequence[Cell], root: str | Path, on_result: OnResult, *,
            address: str | None = None, max_retries: int = MAX_RETRIES) -> None:
    """Run ``cells`` as Ray tasks, calling ``on_result(cell, result)`` here as each finishes (in finishing order).
    Ctrl-C cancels the tasks not finished and re-raises."""
    with session(address) as ray:
        task = remote(ray, run_cell, max_retries=max_retries)
        refs = {task.remote(spec, c, str(root)): c for c in cells}
        pending = list(refs)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                for ref in ready:
                    try:
                        result = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001  (retries exhausted, or a bug: the cell failed)
                        result = failure(refs[ref], exc)
                    on_result(refs[ref], result)
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise


__all__ = ["MAX_RETRIES", "remote", "run_ray", "session"]
