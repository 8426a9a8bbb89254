"""Parquet I/O of metric tables: write (atomically), read with filters, load from tables or runs."""

from __future__ import annotations

import fnmatch
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import NotFoundError, StoreError
from ..selection import step_filter
from ..store import is_run
from ..store.remote import is_url
from ..store.layout import default_file_mode
from ..vocab import SCALAR_PREFIX
from .table import Analysis, _schema, resolve_metrics


@dataclass
class AnalysisReport:
    """What :func:`write_parquet` did: ``rows`` written to ``path``, ``runs`` analysed, ``notes`` (skipped or
    partial runs), and the per-variant ``summary`` (DataFrame)."""

    path: Path | None
    rows: int
    runs: int
    notes: list[str]
    summary: Any


def write_parquet(source: Analysis | Sequence[str | Path] | str | Path, path: str | Path, *,
                  row_group_rows: int = 250_000, **kwargs: Any) -> AnalysisReport:
    """Stream an analysis into a Parquet file (one ``ParquetWriter``, row groups of about ``row_group_rows``).

    ``source`` is an :class:`Analysis` (or an object with its ``tables``, ``rows``, ``runs``, ``notes`` and
    ``summary``) or the paths to analyse (then ``kwargs`` go to :class:`Analysis`). The file
    is written to a temporary name and renamed at the end, so an interrupted analysis leaves no partial table.
    """

    # an Analysis, or anything with its streaming surface (attnlens.sweeps.analyze.ClusterAnalysis)
    analysis = source if hasattr(source, "tables") else Analysis(source, **kwargs)
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    os.fchmod(fd, default_file_mode())  # shared like any other file, not mkstemp's 0600
    os.close(fd)
    schema = _schema()
    buf: list[Any] = []
    n_buf = 0
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for t in analysis.tables():
                buf.append(t)
                n_buf += t.num_rows
                if n_buf >= row_group_rows:
                    writer.write_table(pa.concat_tables(buf).combine_chunks())
                    buf, n_buf = [], 0
            if buf:
                writer.write_table(pa.concat_tables(buf).combine_chunks())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return AnalysisReport(path, analysis.rows, len(analysis.runs), analysis.notes, analysis.summary())


def read_table(path: str | Path, *, metrics: Sequence[str] | None = None, layers: Sequence[str] | None = None,
               phases: Sequence[str] | None = None, columns: Sequence[str] | None = None):
    """Read a table written by :func:`write_parquet`. ``metrics`` (exact names) is pushed down to Parquet;
    ``layers`` and ``phases`` select map rows only (trajectory and scalar rows are kept, as in :class:`Analysis`)."""

    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"'{path}' does not exist",
                            hint="write one with: attnlens analyze runs/ --out metrics.parquet")
    filters = [("metric", "in", list(metrics))] if metrics else None
    try:
        table = pq.read_table(path, filters=filters, columns=list(columns) if columns else None)
    except Exception as exc:  # noqa: BLE001  (not a parquet file, wrong schema)
        raise StoreError(f"cannot read '{path}' as a metrics table ({type(exc).__name__})",
                            hint="pass a file written by attnlens analyze, or a folder of runs") from exc
    df = table.to_pandas()
    missing = [c for c in ("metric", "layer", "phase", "value") if c not in df.columns]
    if missing and columns is None:
        raise StoreError(f"'{path}' is not a metrics table (no column '{missing[0]}')",
                            hint="pass a file written by attnlens analyze")
    special = df["layer"].isin(["latent", "-"]) if "layer" in df.columns else None
    if layers and special is not None:
        df = df[special | df["layer"].isin([str(x) for x in layers])]
        special = df["layer"].isin(["latent", "-"])
    if phases and special is not None:
        df = df[special | df["phase"].isin(list(phases))]
    return df


def load_table(sources: Sequence[str | Path] | str | Path, *, partial: bool = False,
               metrics: Sequence[str] | None = None, layers: Sequence[str | int] | None = None, steps: Any = None,
               phases: Sequence[str] | None = None, notes: list[str] | None = None):
    """A metrics DataFrame from Parquet files (``*.parquet``) and/or run folders/roots (analysed on the fly with
    only the requested metrics, layers, steps and phases). Used by ``compare`` and ``figure``."""

    if isinstance(sources, (str, Path)):
        sources = [sources]
    frames = []
    run_paths = []
    for s in sources:
        if is_url(s):  # a run or root on an object store (analysed from its local copy)
            run_paths.append(s)
            continue
        p = Path(s)
        if p.suffix == ".parquet" or (p.is_file() and not is_run(p)):
            df = read_table(p, layers=[str(x) for x in layers] if layers else None, phases=phases)
            if metrics is not None and len(df):
                chosen, scal = resolve_metrics(metrics)
                keep = df.metric.isin(chosen)
                if scal:
                    sc = df.metric.str.startswith(SCALAR_PREFIX)
                    names = df.metric.str.slice(len(SCALAR_PREFIX))
                    keep |= sc & names.map(lambda n: any(fnmatch.fnmatch(n, q) for q in scal))
                df = df[keep]
            if steps is not None:
                ok = step_filter(steps)
                df = df[df.step.map(ok)]
            frames.append(df)
        else:
            run_paths.append(p)
    if run_paths:
        a = Analysis(run_paths, partial=partial, metrics=metrics, layers=layers, steps=steps, phases=phases)
        frames.extend(a.frames())
        if notes is not None:
            notes.extend(a.notes)
    frames = [f for f in frames if len(f)]
    if not frames:
        return _schema().empty_table().to_pandas()
    return pd.concat(frames, ignore_index=True)
