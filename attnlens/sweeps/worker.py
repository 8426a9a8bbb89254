"""What a worker does with one cell: reuse the run when it is complete with the cell's settings, else record it
(with the pipeline this process loaded once), then run the spec's scorers. The local pool and Ray call the same
:func:`run_cell`; it never writes ``sweep.json`` (the driver does) and returns a plain dict.

Re-executing a cell is safe: the run folder's lock (``attnlens.store.writer.RunLock``, an ``flock`` released by the
kernel when its process dies) refuses a second live writer, and a run without ``status: complete`` is never reused,
so a worker killed mid-run leaves an incomplete run that the retry records again from the start.

Every start and finish of a recording (and every publish, on a URL root) is appended to
``ROOT/sweep-events.jsonl`` (one short line per event, opened with ``O_APPEND``): the count of writes per cell,
which the tests and ``attnlens sweep status`` read.

**A root on an object store** (``s3://bucket/root``; ``cell.path`` is then the run's URL). The worker records the
cell into its local staging folder in this machine's cache (:func:`staging`: ``$ATTNLENS_HOME/staging/<hash of
the URL>-<name>``, apart from the read cache; the run lock guards it as on disk), scores that local copy, and
publishes it with ``publish_run`` (the manifest is the last object). After a successful publish the staging folder
is **removed** (a large sweep must not fill a worker's disk; reading the run later downloads it again). When the
publish fails (the connection drops, the worker dies while uploading), the staging folder is kept, and a retry on
this machine that finds a complete run with the cell's settings there **publishes it again without recording it
again**; an incomplete staged run is recorded again over. A reused cell whose scores are missing is read through
``open_run(URL)`` (the read cache). Object stores have no append, so the event log of a URL root is a local file
in each machine's cache (:func:`events_file`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import warnings
from pathlib import Path
from typing import Any

from ..errors import AttnlensError
from ..models import load_pipeline
from ..recording import RecordingConfig
from ..sampler import sample
from ..scoring import get_scorer
from ..selection import parse_steps
from ..store import open_run
from ..store.remote import cache_path, cache_root, is_url, publish_run
from .manifest import COMPLETE, FAILED, REUSED, cell_done
from .spec import Cell, SweepSpec

EVENTS = "sweep-events.jsonl"
_PIPES: dict[tuple[str, str | None], Any] = {}


def pipeline(model: str, device: str | None = None):
    """The pipeline of ``model``, loaded once per process (a worker keeps one model)."""
    key = (model, device)
    if key not in _PIPES:
        _PIPES.clear()
        _PIPES[key] = load_pipeline(model, device=device)
    return _PIPES[key]


def recording_config(spec: SweepSpec) -> RecordingConfig:
    rec = dict(spec.recording)
    if isinstance(rec.get("steps"), str):
        rec["steps"] = parse_steps(rec["steps"])
    if isinstance(rec.get("layers"), str):
        rec["layers"] = [rec["layers"]]
    return RecordingConfig(**rec)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def events_file(root: Path | str) -> Path:
    """Where the event log of the sweep at ``root`` is: ``ROOT/sweep-events.jsonl``; for a URL root, a file of
    this machine's cache (``$ATTNLENS_HOME/sweep-events/<hash of the URL>-<name>.jsonl``)."""
    if is_url(root):
        return cache_root().parent / "sweep-events" / f"{cache_path(str(root)).name}.jsonl"
    return Path(root) / EVENTS


def staging(cell: Cell) -> Path:
    """The local folder the cell's run is recorded in: its folder, or for a URL a folder of this machine's cache
    (``$ATTNLENS_HOME/staging/<hash of the URL>-<name>``)."""
    if is_url(cell.path):
        return cache_root().parent / "staging" / cache_path(str(cell.path)).name
    return Path(cell.path)


def log_event(root: Path | str, cell: Cell, event: str, **extra: Any) -> None:
    """Append one JSON line to the sweep's event log (:func:`events_file`; a single ``write`` on an ``O_APPEND``
    descriptor, so lines of concurrent workers never interleave)."""
    line = json.dumps({"cell": cell.id, "event": event, "worker": worker_id(), "time": time.time(), **extra}) + "\n"
    f = events_file(root)
    f.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def record_cell(spec: SweepSpec, cell: Cell, root: Path | str, device: str | None = None) -> None:
    """Record the cell's run over whatever incomplete run is in its (staging) folder."""
    pipe = pipeline(spec.model, device)
    v = cell.variant
    manifest = {"model_id": spec.model, "sweep_cell": spec.cell_settings(cell)}
    if v.label != v.method:
        manifest["label"] = v.label
    log_event(root, cell, "start")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # an idle method's note is in the run's manifest
        sample(pipe, cell.prompt, method=v.method, method_options=v.options, seed=cell.seed, out=staging(cell),
               num_inference_steps=spec.steps, guidance_scale=spec.guidance_scale, height=spec.height,
               width=spec.width, spacy_model=spec.spacy_model, recording=recording_config(spec), overwrite=True,
               manifest=manifest, interventions=list(spec.interventions) or None)
    log_event(root, cell, "finish")


def score_cell(spec: SweepSpec, cell: Cell, where: Path | str | None = None) -> dict[str, dict[str, Any]]:
    """The spec's scorers on the cell's run (read from ``where``, its local copy, when given)."""
    if not spec.scorers:
        return {}
    run = open_run(cell.path if where is None else where)
    return {name: get_scorer(name)(run) for name in spec.scorers}


def run_cell(spec: SweepSpec, cell: Cell, root: str | Path, device: str | None = None) -> dict[str, Any]:
    """Reuse or record one cell, then score it: ``{"id", "state", "seconds", "worker", "scores", "error"}``.
    A known error (bad option, unknown method, a run locked by a live writer) is returned as ``state: failed``;
    anything else propagates (Ray retries a task whose worker died; a bug should be seen)."""
    t0 = time.perf_counter()
    out: dict[str, Any] = {"id": cell.id, "worker": worker_id()}
    remote = is_url(cell.path)
    try:
        if cell_done(spec, cell):
            out["state"] = REUSED
            out["scores"] = score_cell(spec, cell)
        else:
            if not (remote and cell_done(spec, cell, staging(cell))):  # a staged complete run is published as is
                record_cell(spec, cell, root, device)
            out["state"] = COMPLETE
            out["scores"] = score_cell(spec, cell, staging(cell))
            if remote:
                publish_run(staging(cell), cell.path)
                log_event(root, cell, "publish")
                shutil.rmtree(staging(cell), ignore_errors=True)
    except AttnlensError as exc:
        out.update(state=FAILED, error=str(exc))
    out["seconds"] = time.perf_counter() - t0
    return out


def read_events(root: str | Path) -> list[dict[str, Any]]:
    """The events of ``ROOT/sweep-events.jsonl`` (a line cut by a kill is skipped)."""
    f = events_file(root)
    if not f.is_file():
        return []
    rows = []
    for line in f.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


__all__ = ["EVENTS", "events_file", "log_event", "pipeline", "read_events", "record_cell", "recording_config", "run_cell", "score_cell", "staging"]
