"""Score a folder of recorded runs (the library side of ``attnlens score``).

For every complete run under the given paths and every image of it, the scorer's numbers go into the run's
``scores.json`` (:mod:`attnlens.store.scores`; one entry per scorer) and one row per (run, sample) into a table
with the columns of the binding bench's ``outcomes.csv`` (``run, method, variant, prompt, seed, sample`` and one
column per score), written as ``scores.csv`` at the root. ``attnlens analyze`` then lists the scores as metrics
``score/<key>`` (role ``image``, layer ``-``) beside the attention metrics, and :func:`score_rows` turns the table
into that long format for ``attnlens.compare`` (as :func:`attnlens.testbed.bench.outcome_rows` does the shapes
evaluator's outcomes).

A run already scored by the same scorer with the same options is not scored again (an interrupted scoring resumes)
unless ``rescore``.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from tqdm.auto import tqdm

from ..analysis.runs import _sample_info, variant_label
from ..errors import AttnlensError, EmptySelection, RunNotFound
from ..store import find_runs, open_run
from ..store.scores import read_scores, write_scores
from ..store.writer import RunLock
from ..vocab import SCORE_PREFIX
from .registry import get_scorer, parse_scorer_spec

TABLE = "scores.csv"
ID_COLUMNS = ("run", "method", "variant", "prompt", "seed", "sample")


@dataclass
class ScoreResult:
    """What :func:`score_runs` did: the table (DataFrame, one row per run image), counts and notes."""

    table: Any
    scored: int = 0
    reused: int = 0
    notes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


def _options_key(options: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v if isinstance(v, (int, float, bool, type(None))) else str(v)) for k, v in sorted(options.items())}


def _n_samples(run) -> int:
    images = run.manifest.get("images") or {}
    return max((int(k) for k in images), default=-1) + 1


def score_runs(paths: Sequence[str | Path] | str | Path, scorer: str, options: Mapping[str, Any] | None = None, *,
               rescore: bool = False, table: str | Path | None = None, progress: bool = True,
               log: Callable[[str], None] | None = None) -> ScoreResult:
    """Score every complete run under ``paths`` with the scorer registered as ``scorer`` (built once with
    ``options``: model ids, device, dtype, ...). Writes each run's ``scores.json`` and the table (default
    ``<first path>/scores.csv`` when it is a folder of runs; ``table=False``-like ``""`` writes none).

    Raises:
        RunNotFound: a path does not exist or holds no run.
        EmptySelection: no complete run with an image.
    """
    import pandas as pd

    log = log or (lambda s: print(s, file=sys.stderr))
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    scorer, given = parse_scorer_spec(scorer)
    options = {**given, **(options or {})}
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise RunNotFound(f"'{p}' does not exist", hint="pass a run folder or a folder holding runs")
        hits = list(find_runs(p))
        if not hits:
            raise RunNotFound(f"no runs under '{p}'",
                              hint=f"record some first: attnlens record \"a red apple\" --out {p}")
        found += [h for h in hits if h.resolve() not in {f.resolve() for f in found}]
    result = ScoreResult(table=None)
    runs = []
    for path in found:
        try:
            run = open_run(path)
        except AttnlensError as exc:
            result.notes.append(f"skipped {path}: {exc.message}")
            continue
        if not run.complete or _n_samples(run) == 0:
            why = "no image" if run.complete else f"incomplete (status {run.status})"
            result.notes.append(f"skipped {path}: {why}")
            continue
        runs.append(run)
    if not runs:
        raise EmptySelection("no complete run with an image to score"
                             + (f" ({len(result.notes)} skipped)" if result.notes else ""),
                             hint="record the runs again; incomplete runs have no final image")
    key = _options_key(options)
    todo = [r for r in runs if rescore or (read_scores(r.path)["scorers"].get(scorer) or {}).get("options") != key]
    instance = get_scorer(scorer, **options) if todo else None
    rows = []
    bar = tqdm(runs, desc=f"score {scorer}", unit="run", disable=not progress, file=sys.stderr)
    for run in bar:
        n = _n_samples(run)
        if run in todo:
            lock = RunLock.acquire(run.path)
            try:
                values = {k: _numbers(instance(run) if n == 1 else
                                      instance(run.image(k).convert("RGB"), run.info.sample_prompt(k)))
                          for k in range(n)}
                write_scores(run.path, scorer, key, values)
            finally:
                lock.release()
            result.scored += 1
        else:
            result.reused += 1
        for k in range(n):
            prompt, seed = _sample_info(run, k)
            rows.append({"run": str(run.path), "method": run.info.method_name, "variant": variant_label(run.manifest),
                         "prompt": prompt, "seed": seed, "sample": k, **run.scores(k)})
    result.table = pd.DataFrame(rows)
    out = Path(table) if table else (Path(paths[0]) / TABLE if table is None and len(paths) == 1
                                     and not (Path(paths[0]) / "manifest.json").exists() else None)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        result.table.to_csv(out, index=False)
        result.files.append(out)
    for note in result.notes:
        log(note)
    return result


def _numbers(row: Mapping[str, Any]) -> dict[str, float]:
    """The numeric values of a scorer's row (booleans as 0/1); text columns (e.g. per-object statuses) are left
    out of scores.json and the table."""
    return {k: float(v) for k, v in row.items() if isinstance(v, (bool, int, float))}


def score_rows(table):
    """The scores table (:func:`score_runs`) in the long format of ``attnlens analyze``: one row per (run image,
    score) with metric ``score/<key>``, role ``image``, layer ``-``, step −1 (as the binding bench's outcomes)."""
    import pandas as pd

    keys = [c for c in table.columns if c not in ID_COLUMNS]
    long = table.melt(id_vars=list(ID_COLUMNS), value_vars=keys, var_name="metric", value_name="value")
    long["metric"] = SCORE_PREFIX + long["metric"]
    return long.assign(role="image", layer="-", phase="sample", step=-1, iteration=0, token="", timestep=math.nan,
                       resolution="", value=pd.to_numeric(long["value"], errors="coerce"))

