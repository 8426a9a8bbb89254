"""A run's scores: ``RUN/scores.json``, what ``attnlens score`` measured on the run's images.

One JSON file beside the manifest (the manifest stays the recording's; scoring never rewrites it)::

    {"schema": 1,
     "scorers": {"clip": {"options": {"model_id": "openai/clip-vit-large-patch14"},
                          "attnlens": "0.x", "time": "2026-...",
                          "samples": {"0": {"clip_score": 31.2}}}}}

Each scorer has its own entry (a later scoring with another scorer adds one; the same scorer replaces its own). A
score that is not a number (A&E's ``min_object`` of a prompt without halves) is written as ``null`` and read as NaN.
The file is replaced atomically; a recording that replaces the run deletes it with the rest of the run.

Examples::

    >>> import tempfile, math
    >>> run = tempfile.mkdtemp()
    >>> _ = write_scores(run, "clip", {"model_id": "x"}, {0: {"clip_score": 31.5, "other": math.nan}})
    >>> read_sample_scores(run, 0)
    {'clip_score': 31.5, 'other': nan}
"""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path
from typing import Any, Mapping

from .._version import __version__
from ..errors import StoreError
from .layout import SCORES, write_json_atomic

SCHEMA = 1


def read_scores(run: str | Path) -> dict[str, Any]:
    """The parsed ``scores.json`` of a run (``{"schema": 1, "scorers": {}}`` when it has none).

    Raises:
        StoreError: the file is not valid JSON of this schema.
    """
    path = Path(run) / SCORES
    if not path.is_file():
        return {"schema": SCHEMA, "scorers": {}}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot read '{path}': {exc}",
                         hint="score the run again (attnlens score --rescore)") from None
    if not isinstance(data, dict) or not isinstance(data.get("scorers"), dict):
        raise StoreError(f"'{path}' is not an attnlens scores file", hint="move it away and score the run again")
    return data


def read_sample_scores(run: str | Path, sample: int = 0) -> dict[str, float]:
    """Every score of image ``sample`` of a run, over all its scorers: ``{key: value}`` (NaN for ``null``)."""
    out: dict[str, float] = {}
    scorers = read_scores(run)["scorers"]
    for name in sorted(scorers):
        entry = scorers[name]
        for key, value in (entry.get("samples", {}).get(str(sample)) or {}).items():
            out[key] = math.nan if value is None else float(value)
    return out


def write_scores(run: str | Path, scorer: str, options: Mapping[str, Any],
                 samples: Mapping[int, Mapping[str, float]]) -> Path:
    """Set ``scorer``'s entry of the run's ``scores.json`` (other scorers' entries are kept); atomic."""
    data = read_scores(run)
    data["schema"] = SCHEMA
    data["scorers"][scorer] = {
        "options": {k: (v if isinstance(v, (int, float, bool, type(None))) else str(v)) for k, v in options.items()},
        "attnlens": __version__,
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "samples": {str(k): {key: (None if not math.isfinite(float(v)) else float(v)) for key, v in vals.items()}
                    for k, vals in samples.items()},
    }
    path = Path(run) / SCORES
    write_json_atomic(path, data)
    return path
