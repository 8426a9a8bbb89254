"""``attnlens analyze --executor ray``: the metric table computed on a Ray cluster, one task per prompt.

The runs are grouped by prompt, because an analysis pairs runs of the same prompt (a ``none`` run is the latent
drift's reference of the guided runs with its prompt and seed, and lends its parse to them); each group is one
task that returns its Arrow table and its part of the summary. The driver writes the Parquet file exactly as a
local analysis does (``attnlens.analysis.write_parquet``), so the table has the same rows (in group order).

Runs under a URL root (``s3://bucket/root``) are handed to the tasks by their URLs, so each worker reads them
itself (into its own machine's cache), wherever it runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import pyarrow as pa

from ..analysis import Analysis
from ..store import find_runs
from ..store.remote import cache_path, is_url
from .ray_executor import remote, session


def analyze_group(paths: Sequence[str], options: dict[str, Any]) -> tuple[Any, dict[str, Any], int, list[str]]:
    """One task: the analysis of ``paths`` (runs of one prompt). Returns (table or None, summary state, rows,
    notes)."""
    a = Analysis(list(paths), **options)
    tables = list(a.tables())
    s = a._summary
    state = {"acc": [[list(k), v] for k, v in s.acc.items()], "runs": {k: sorted(v) for k, v in s.runs.items()},
             "methods": dict(s.methods)}
    return (pa.concat_tables(tables) if tables else None), state, a.rows, a.notes


class ClusterAnalysis:
    """What :class:`attnlens.analysis.Analysis` offers ``write_parquet`` (``tables``, ``rows``, ``runs``,
    ``notes``, ``summary``), computed by Ray tasks. Runs are found and checked here, before any task starts."""

    def __init__(self, paths: Sequence[str | Path] | str | Path, *, address: str | None = None, **options: Any):
        self.local = Analysis(paths, **options)  # discovery, validation, notes (nothing is computed yet)
        self.runs, self.notes = self.local.runs, self.local.notes
        self.options = {"partial": True, **options}  # runs were already filtered here
        self.address = address
        self.rows = 0
        # a run read from a URL is opened from its local copy (cache_path); the tasks get the URL back
        urls = {str(cache_path(u)): u for p in ([paths] if isinstance(paths, (str, Path)) else paths) if is_url(p)
                for u in find_runs(p)}
        groups: dict[str, list[str]] = {}
        for run in self.runs:
            groups.setdefault(str(run.manifest.get("prompt")), []).append(urls.get(str(run.path), str(run.path)))
        self.groups = list(groups.values())

    def tables(self) -> Iterator[Any]:
        with session(self.address) as ray:
            task = remote(ray, analyze_group)
            refs = [task.remote(g, self.options) for g in self.groups]
            try:
                for ref in refs:  # in group order: the table's row order does not depend on which task ends first
                    table, state, rows, notes = ray.get(ref)
                    self.local._summary.merge({tuple(k): v for k, v in state["acc"]}, state["runs"], state["methods"])
                    self.notes += [n for n in notes if n not in self.notes]
                    self.rows += rows
                    if table is not None:
                        yield table
            except BaseException:
                for ref in refs:
                    ray.cancel(ref, force=True)
                raise

    def summary(self):
        return self.local.summary()


__all__ = ["ClusterAnalysis", "analyze_group"]
