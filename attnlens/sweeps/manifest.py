"""The sweep manifest ``ROOT/sweep.json``: the protocol a sweep pins and every cell with its state.

One writer: :class:`SweepManifest` in the process that drives the sweep (workers return results to it; they never
touch ``sweep.json``). Every write is atomic, so a killed sweep leaves the last complete version: on disk a
temporary file and ``os.replace``; on an object store (a URL root) one PUT of the whole object
(``attnlens.store.remote.write_json_object``). On a URL root the driver writes it at most every
:data:`URL_WRITE_INTERVAL` seconds while cells finish, and once more when it stops (also on Ctrl-C or an error): a
driver killed outright loses at most that much of the record, never the runs, which :func:`cell_states` and the
reuse check find by their own manifests (only scores heard in that window are computed again on resume). The states it holds are a record, not the truth: a cell is done when its run folder holds a
complete run with the cell's settings (``attnlens.sweep.reusable``), which :func:`cell_states` checks again.

Cell states: ``pending`` (not started), ``running`` (handed to a worker), ``complete``, ``reused`` (a complete run
was already there), ``failed`` (``error`` says why).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import ConfigError, StoreError
from ..store import STATUS_COMPLETE, is_run, read_manifest, write_json_atomic
from ..store.remote import is_url, join, read_json_object, read_run_manifests, write_json_object
from ..sweep import manifest_matches, reusable
from .spec import Cell, SweepSpec, prompts_hash

SWEEP_MANIFEST = "sweep.json"
SCHEMA = 1
PENDING, RUNNING, COMPLETE, REUSED, FAILED = "pending", "running", "complete", "reused", "failed"
DONE = (COMPLETE, REUSED)
#: seconds between two writes of ``sweep.json`` on a URL root while cells finish (see :class:`SweepManifest`)
URL_WRITE_INTERVAL = 2.0


def model_digest(location: str | None) -> str | None:
    """SHA-256 over a local diffusers folder's files (relative path, size and content, sorted), or None for a
    model that is not a local folder (a hub id not in the cache)."""
    if not location or not Path(location).is_dir():
        return None
    h = hashlib.sha256()
    root = Path(location)
    for f in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + str(f.stat().st_size).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def scheduler_name(location: str | None) -> str | None:
    """The scheduler class of a local diffusers folder (``scheduler/scheduler_config.json``), else None."""
    f = Path(location or "") / "scheduler" / "scheduler_config.json"
    try:
        return json.loads(f.read_text()).get("_class_name")
    except (OSError, ValueError):
        return None


def protocol(spec: SweepSpec, location: str | None) -> dict[str, Any]:
    """What the sweep pins: model (+ digest, scheduler), steps, guidance, image size, prompt set (+ hash), seeds,
    variants, recording options, scorers, interventions. Two sweeps with equal protocols make the same runs."""
    return {
        "model": spec.model, "model_digest": model_digest(location), "scheduler": scheduler_name(location),
        "steps": spec.steps, "guidance_scale": spec.guidance_scale, "height": spec.height, "width": spec.width,
        "prompt_set": {"source": spec.prompt_source, "n": len(spec.prompts), "sha256": prompts_hash(spec.prompts)},
        "seeds": spec.seeds,
        "variants": [{"label": v.label, "method": v.method, "options": v.options} for v in spec.variants],
        "recording": spec.recording, "scorers": spec.scorers, "interventions": spec.interventions,
        "attnlens_version": __version__,
    }


def _comparable(p: dict[str, Any]) -> dict[str, Any]:
    # a newer attnlens may continue a sweep; scorers may be added (they only add columns)
    return {k: v for k, v in p.items() if k not in ("attnlens_version", "scorers")}


class SweepManifest:
    """The one writer of ``ROOT/sweep.json`` (:meth:`create` or :meth:`open`, then :meth:`set`)."""

    def __init__(self, root: Path | str, data: dict[str, Any]):
        self.root = root if is_url(root) else Path(root)
        self.data = data
        #: on a URL root, :meth:`set` writes at most once per this many seconds (each write is one PUT of the whole
        #: manifest, which grows with the cells); :meth:`flush` writes what is left
        self.min_interval = URL_WRITE_INTERVAL if is_url(self.root) else 0.0
        self._written = float("-inf")
        self._dirty = False

    @property
    def path(self) -> Path | str:
        return _location(self.root, SWEEP_MANIFEST)

    @classmethod
    def create(cls, root: str | Path, spec: SweepSpec, location: str | None) -> "SweepManifest":
        """A new manifest for ``spec`` under ``root``; when ``root`` already holds one, it must pin the same
        protocol (its cells' states are kept, and checked again by the caller)."""
        root = root if is_url(root) else Path(root)
        proto = protocol(spec, location)
        cells = spec.cells(root)
        old = _load(root)
        if old is not None and _comparable(old.get("protocol", {})) != _comparable(proto):
            diff = sorted(k for k in _comparable(proto) if old.get("protocol", {}).get(k) != proto[k])
            raise ConfigError(f"'{root}' holds a sweep with another protocol (differs in: {', '.join(diff)})",
                              hint="use a new --out for a new protocol, or restore the spec that made this sweep")
        prev = {c["id"]: c for c in (old or {}).get("cells", [])}
        data = {
            "schema": SCHEMA, "name": spec.name, "protocol": proto, "spec": spec.raw, "created":
            (old or {}).get("created", time.time()), "updated": time.time(),
            "cells": [{"id": c.id, "path": c.rel, "variant": c.variant.label, "method": c.variant.method,
                       "options": c.variant.options, "prompt": c.prompt, "seed": c.seed,
                       "state": prev.get(c.id, {}).get("state", PENDING), "attempts": prev.get(c.id, {}).get("attempts", 0),
                       "error": prev.get(c.id, {}).get("error"), "scores": prev.get(c.id, {}).get("scores", {})}
                      for c in cells],
        }
        if not is_url(root):
            root.mkdir(parents=True, exist_ok=True)
        m = cls(root, json.loads(json.dumps(data, default=str)))
        m.write()
        return m

    def cell(self, cell_id: str) -> dict[str, Any]:
        for c in self.data["cells"]:
            if c["id"] == cell_id:
                return c
        raise KeyError(cell_id)

    def set(self, cell_id: str, state: str, *, write: bool = True, **values: Any) -> None:
        """Set a cell's state (and ``error``, ``scores``, ``worker``, ``seconds``); ``running`` counts an attempt."""
        c = self.cell(cell_id)
        c["state"] = state
        if state == RUNNING:
            c["attempts"] = int(c.get("attempts", 0)) + 1
            c["error"] = None
        c.update(json.loads(json.dumps(values, default=str)))
        if write:
            if time.monotonic() - self._written >= self.min_interval:
                self.write()
            else:
                self._dirty = True

    def flush(self) -> None:
        """Write the changes :meth:`set` held back (none on a local root)."""
        if self._dirty:
            self.write()

    def write(self) -> None:
        self._written, self._dirty = time.monotonic(), False
        self.data["updated"] = time.time()
        if is_url(self.path):
            write_json_object(self.path, self.data)
        else:
            write_json_atomic(self.path, self.data)


def _location(root: Path | str, rel: str) -> Path | str:
    """``rel`` below ``root``: a path, or a URL string under a URL root."""
    return join(root, rel) if is_url(root) else Path(root) / rel


def _load(root: Path | str) -> dict[str, Any] | None:
    """``ROOT/sweep.json`` as a dict, None when there is none; StoreError when it is damaged or unreadable."""
    f = _location(root, SWEEP_MANIFEST)
    if is_url(f):
        data = read_json_object(f)
    else:
        if not Path(f).is_file():
            return None
        try:
            data = json.loads(Path(f).read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise StoreError(f"'{f}' is damaged ({type(exc).__name__})", hint="rerun the sweep: it rewrites it") from None
    if data is not None and (not isinstance(data, dict) or not isinstance(data.get("cells"), list)):
        raise StoreError(f"'{f}' is not a sweep manifest", hint="rerun the sweep: it rewrites it")
    return data


def read_sweep(root: str | Path) -> dict[str, Any]:
    """``ROOT/sweep.json`` (``ROOT`` a folder or a URL) as a dict; StoreError when ``root`` holds no sweep or the
    file is damaged."""
    data = _load(root)
    if data is None:
        raise StoreError(f"'{root}' holds no sweep (no {SWEEP_MANIFEST})", hint="run 'attnlens sweep SPEC --out ROOT' first")
    return data


def cell_done(spec: SweepSpec, cell: Cell, where: Path | str | None = None) -> bool:
    """True when the cell's folder (or ``where``: its local staging folder) holds a complete run made with exactly
    the cell's settings."""
    return reusable(cell.path if where is None else where, prompt=cell.prompt, seed=cell.seed,
                    method=cell.variant.method, steps=spec.steps, settings={"sweep_cell": spec.cell_settings(cell)})


def done_cells(spec: SweepSpec, cells: list[Cell]) -> set[str]:
    """The ids of the ``cells`` that are done (:func:`cell_done`); the manifests of cells on an object store are
    read in one batch (``attnlens.store.remote.read_run_manifests``)."""
    urls = [str(c.path) for c in cells if is_url(c.path)]
    manifests = read_run_manifests(urls)
    return {c.id for c in cells
            if (manifest_matches(manifests[c.path], prompt=c.prompt, seed=c.seed, method=c.variant.method,
                                 steps=spec.steps, settings={"sweep_cell": spec.cell_settings(c)})
                if is_url(c.path) else cell_done(spec, c))}


def _run_statuses(root: Path | str, rels: list[str]) -> dict[str, str | None]:
    """The manifest ``status`` of the run at each ``rel`` below ``root`` (None: no run; ``corrupted``: an
    unreadable manifest), read in one batch under a URL root."""
    if is_url(root):
        found = read_run_manifests([join(root, r) for r in rels])
        return {r: (found[join(root, r)] or {}).get("status") for r in rels}
    out: dict[str, str | None] = {}
    for r in rels:
        run, out[r] = Path(root) / r, None
        if is_run(run):
            try:
                out[r] = read_manifest(run).get("status")
            except Exception:  # noqa: BLE001  (a damaged manifest: the cell is not done)
                out[r] = "corrupted"
    return out


def cell_states(root: str | Path) -> list[dict[str, Any]]:
    """Every cell of the sweep under ``root`` with its state checked against its run folder: a cell recorded as
    done whose run is gone or incomplete reads ``pending``; a ``running`` cell whose run is complete (the driver
    was killed before it heard back) reads ``complete``; a ``running`` cell with no run being recorded reads
    ``pending``."""
    data = read_sweep(root)
    statuses = _run_statuses(root, [c["path"] for c in data["cells"]])
    out = []
    for c in data["cells"]:
        status = statuses[c["path"]]
        state = c.get("state", PENDING)
        if state in DONE and status != STATUS_COMPLETE:
            state = PENDING
        elif state in (PENDING, RUNNING) and status == STATUS_COMPLETE:
            state = COMPLETE
        elif state == RUNNING and status != "running":
            state = PENDING  # handed out, but nothing is being recorded there: the driver that sent it is gone
        out.append({**c, "state": state, "run_status": status})
    return out


__all__ = ["COMPLETE", "DONE", "FAILED", "PENDING", "REUSED", "RUNNING", "SWEEP_MANIFEST", "SweepManifest",
           "URL_WRITE_INTERVAL", "cell_done", "cell_states", "done_cells", "model_digest", "protocol", "read_sweep", "scheduler_name"]
