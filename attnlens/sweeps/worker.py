"""What a worker does with one cell: reuse the run when it is complete with the cell's settings, else record it
(with the pipeline this process loaded once), then run the spec's scorers. The local pool and Ray call the same
:func:`run_cell`; it never writes ``sweep.json`` (the driver does) and returns a plain dict.

Re-executing a cell is safe: the run folder's lock (``attnlens.store.writer.RunLock``, an ``flock`` released by the
kernel when its process dies) refuses a second live writer, and a run without ``status: complete`` is never reused,
so a worker killed mid-run leaves an incomplete run that the retry records again from the start.

Every start and finish of a recording is appended to ``ROOT/sweep-events.jsonl`` (one short line per event, opened
with ``O_APPEND``): the count of writes per cell, which the tests and ``attnlens sweep status`` read.
"""

from __future__ import annotations

import json
import os
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


def log_event(root: Path, cell: Cell, event: str, **extra: Any) -> None:
    """Append one JSON line to ``ROOT/sweep-events.jsonl`` (a single ``write`` on an ``O_APPEND`` descriptor, so
    lines of concurrent workers never interleave)."""
    line = json.dumps({"cell": cell.id, "event": event, "worker": worker_id(), "time": time.time(), **extra}) + "\n"
    fd = os.open(Path(root) / EVENTS, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def record_cell(spec: SweepSpec, cell: Cell, root: Path, device: str | None = None) -> None:
    """Record the cell's run over whatever incomplete run is in its folder."""
    pipe = pipeline(spec.model, device)
    v = cell.variant
    manifest = {"model_id": spec.model, "sweep_cell": spec.cell_settings(cell)}
    if v.label != v.method:
        manifest["label"] = v.label
    log_event(root, cell, "start")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # an idle method's note is in the run's manifest
        sample(pipe, cell.prompt, method=v.method, method_options=v.options, seed=cell.seed, out=cell.path,
               num_inference_steps=spec.steps, guidance_scale=spec.guidance_scale, height=spec.height,
               width=spec.width, spacy_model=spec.spacy_model, recording=recording_config(spec), overwrite=True,
               manifest=manifest, interventions=list(spec.interventions) or None)
    log_event(root, cell, "finish")


def score_cell(spec: SweepSpec, cell: Cell) -> dict[str, dict[str, Any]]:
    if not spec.scorers:
        return {}
    run = open_run(cell.path)
    return {name: get_scorer(name)(run) for name in spec.scorers}


def run_cell(spec: SweepSpec, cell: Cell, root: str | Path, device: str | None = None) -> dict[str, Any]:
    """Reuse or record one cell, then score it: ``{"id", "state", "seconds", "worker", "scores", "error"}``.
    A known error (bad option, unknown method, a run locked by a live writer) is returned as ``state: failed``;
    anything else propagates (Ray retries a task whose worker died; a bug should be seen)."""
    t0 = time.perf_counter()
    out: dict[str, Any] = {"id": cell.id, "worker": worker_id()}
    try:
        if cell_done(spec, cell):
            out["state"] = REUSED
        else:
            record_cell(spec, cell, Path(root), device)
            out["state"] = COMPLETE
        out["scores"] = score_cell(spec, cell)
    except AttnlensError as exc:
        out.update(state=FAILED, error=str(exc))
    out["seconds"] = time.perf_counter() - t0
    return out


def read_events(root: str | Path) -> list[dict[str, Any]]:
    """The events of ``ROOT/sweep-events.jsonl`` (a line cut by a kill is skipped)."""
    f = Path(root) / EVENTS
    if not f.is_file():
        return []
    rows = []
    for line in f.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


__all__ = ["EVENTS", "log_event", "pipeline", "read_events", "record_cell", "recording_config", "run_cell", "score_cell"]
