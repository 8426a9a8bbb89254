"""Runs to analyse: discovering them under roots and naming their variant."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

from ..errors import AttnlensError, BadOption, EmptySelection, RunNotFound
from ..interventions import label_of
from ..methods import available_methods, get_method
from ..store import Run, find_runs, open_run
from ..store.remote import is_url


def _sample_info(run: Run, k: int) -> tuple[str, int]:
    """(prompt, seed) of sample ``k`` for the table (the manifest's rule, ``Manifest.sample_prompt``/``sample_seed``;
    an unknown seed is -1 in the integer column)."""
    seed = run.info.sample_seed(k)
    return str(run.info.sample_prompt(k) or ""), seed if seed is not None else -1


def _fmt_value(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"), sort_keys=True)
    return str(v)


def variant_label(manifest: dict[str, Any]) -> str:
    """A run's variant: manifest ``label`` if present, else the method name plus the hyperparameters that differ
    from the registered method's defaults, e.g. ``syngen(negative=False)`` (SD3 runs guided on chosen text
    positions: ``syngen[text=both]``), then the interventions, if any:
    ``none + swap(red,blue; steps 0:10; res16)``."""
    if manifest.get("label"):
        return str(manifest["label"])
    edits = manifest.get("interventions") or []
    base = _method_label(manifest)
    return f"{base} + {label_of(edits)}" if edits else base


def _method_label(manifest: dict[str, Any]) -> str:
    method = manifest.get("method") or {}
    name = str(method.get("name") or "unknown")
    text = f"[text={method['guide_text']}]" if method.get("guide_text") else ""  # SD3: syngen[text=both]
    hp = method.get("hyperparameters") or {}
    if not hp:
        return name + text

    defaults = None
    if name in available_methods():
        try:
            defaults = get_method(name).hyperparameters()
        except Exception:  # noqa: BLE001  (a method that cannot be built with defaults: fall back to a hash)
            defaults = None
    if defaults is None:
        digest = hashlib.sha1(json.dumps(hp, sort_keys=True, default=str).encode()).hexdigest()[:6]
        return f"{name}{text}[{digest}]"
    diff = {k: v for k, v in hp.items() if k not in defaults or defaults[k] != v}
    if not diff:
        return name + text
    return name + text + "(" + ", ".join(f"{k}={_fmt_value(v)}" for k, v in sorted(diff.items())) + ")"


def discover_runs(paths: Sequence[str | Path] | str | Path, partial: bool = False) -> tuple[list[Run], list[str]]:
    """Open every run under ``paths`` (run folders or roots). Returns (runs, notes): incomplete runs are
    skipped with a note unless ``partial``; unreadable manifests are skipped with a note.

    Raises AttnlensError for a path that does not exist or when no run is found at all."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise BadOption("no run or root given", hint="attnlens analyze runs/")
    found: list[Path] = []
    for p in paths:
        if is_url(p):  # a run or root on an object store: its runs' URLs (open_run copies each one here)
            found += list(find_runs(p))
            continue
        p = Path(p)
        if not p.exists():
            raise RunNotFound(f"'{p}' does not exist", hint="pass a run folder or a folder holding runs")
        hits = list(find_runs(p))
        if not hits:
            raise RunNotFound(f"no runs under '{p}'", hint=f"record one: attnlens record \"a red apple\" --out {p}")
        found += hits
    runs, notes, seen = [], [], set()
    for path in found:
        key = path if isinstance(path, str) else path.resolve()
        if key in seen:
            continue
        seen.add(key)
        try:
            run = open_run(path)
        except AttnlensError as exc:
            notes.append(f"skipped {path}: {exc.message}")
            continue
        if not run.complete and not partial:
            notes.append(f"skipped {path}: incomplete run (status {run.status}); pass --partial to analyse its "
                         "complete steps")
            continue
        if not run.layers:
            notes.append(f"skipped {path}: no attention maps recorded")
            continue
        runs.append(run)
    if not runs:
        raise EmptySelection("no complete run to analyse" + (f" ({len(notes)} skipped)" if notes else ""),
                            hint="pass --partial to analyse incomplete runs" if notes else None)
    return runs, notes
