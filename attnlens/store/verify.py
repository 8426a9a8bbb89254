"""Read every map chunk a complete run should have: what ``attnlens info RUN --check`` runs.

Readers already refuse a damaged chunk when they reach it (``Run.read_records`` names the layer, phase, step and
iteration); :func:`verify_run` reaches all of them, so a damaged run is found before an analysis trips over it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import AttnlensError
from .layout import PHASES
from .reader import Run


def verify_run(run: Run) -> dict[str, Any]:
    """``{"path", "status", "chunks", "problems"}``: how many chunks were read and one line per damaged one (a
    chunk that is missing, truncated or does not decode, a layer that cannot be opened, an image that cannot be
    read). An incomplete run is checked as far as its manifest says it was recorded."""
    problems: list[str] = []
    n = 0
    try:
        layers = run.layers
    except AttnlensError as exc:
        return {"path": str(run.path), "status": run.status, "chunks": 0, "problems": [exc.message]}
    records = run.manifest.get("records") or {}
    for layer in layers:
        for phase in PHASES:
            index = records.get(phase) or {}
            recs = [(int(s), int(i)) for s, its in index.items() for i in its]
            for rec in sorted(recs):
                n += 1
                try:
                    run.read_records(layer, [rec], phase)
                except AttnlensError as exc:
                    problems.append(exc.message)
    for k, name in (run.manifest.get("images") or {}).items():
        try:
            if run.image(int(k)) is None:
                problems.append(f"image of sample {k} ({name!r}) is not a PNG file inside the run folder")
        except (AttnlensError, OSError, ValueError) as exc:
            problems.append(f"image of sample {k} ({name}) cannot be read: {getattr(exc, 'message', None) or exc}")
    return {"path": str(Path(run.path)), "status": run.status, "chunks": n, "problems": problems}
