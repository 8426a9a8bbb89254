"""The metric table: stream recorded runs into one tidy long Arrow table (``Analysis``, ``analyze_runs``)."""

from __future__ import annotations

import difflib
import fnmatch
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from .. import metrics as M
from ..errors import AttnlensError, BadOption, MetricNotFound, StoreError
from ..maps import renormalize_text
from ..selection import step_filter
from ..store import PHASES, Run
from ..vocab import AGGREGATE_ALL, COLUMNS, HEADLINE, MAP_METRICS, METRICS, SCALAR_PREFIX, TRAJECTORY_METRICS
from .kernels import MetricBlock, map_metrics
from .layers import LayerPlan, _aggregate_metrics, available_records, plan_layers
from .runs import _sample_info, discover_runs, variant_label
from .tokens import Selection, run_selection


def resolve_metrics(metrics: Sequence[str] | None) -> tuple[set[str], list[str] | None]:
    """Validate metric names/globs. Returns (map/trajectory metric names, scalar patterns or None for all).

    ``scalar/<name>`` (or a glob such as ``scalar/*``) selects recorded scalars; an unknown name raises
    :class:`AttnlensError` with the closest names."""
    if metrics is None:
        return set(METRICS), None
    chosen: set[str] = set()
    scalars: list[str] = []
    for raw in metrics:
        for name in str(raw).split(","):
            name = name.strip()
            if not name:
                continue
            if name.startswith(SCALAR_PREFIX):
                scalars.append(name[len(SCALAR_PREFIX):] or "*")
                continue
            if any(c in name for c in "*?["):
                hits = fnmatch.filter(METRICS, name)
            else:
                hits = [name] if name in METRICS else []
            if not hits:
                close = difflib.get_close_matches(name, list(METRICS) + ["scalar/loss"], n=3)
                raise MetricNotFound(f"unknown metric '{name}'",
                                    hint=(f"did you mean {', '.join(close)}? " if close else "")
                                    + f"known: {', '.join(METRICS)}, scalar/<name>")
            chosen.update(hits)
    return chosen, scalars


def _schema():

    return pa.schema([
        ("run", pa.string()), ("method", pa.string()), ("variant", pa.string()), ("prompt", pa.string()),
        ("seed", pa.int64()), ("sample", pa.int32()), ("step", pa.int32()), ("timestep", pa.float64()),
        ("phase", pa.string()), ("iteration", pa.int32()), ("layer", pa.string()), ("resolution", pa.int32()),
        ("token", pa.string()), ("role", pa.string()), ("metric", pa.string()), ("value", pa.float64()),
    ])


class _Rows:
    """Collects metric blocks of one run-sample and turns them into Arrow tables (columnar, vectorised; the
    string columns are built as dictionary codes and cast to plain strings once per table)."""

    _CODED = ("phase", "layer", "token", "role", "metric")

    def __init__(self, const: dict[str, Any], summary: "_Summary"):
        self.const = const
        self.summary = summary
        self._reset()

    def _reset(self) -> None:
        self.dicts: dict[str, dict[str, int]] = {c: {} for c in self._CODED}
        self.parts: list[dict[str, Any]] = []
        self.n = 0

    def _code(self, col: str, value: str) -> int:
        d = self.dicts[col]
        return d.setdefault(value, len(d))

    def add(self, steps: np.ndarray, timesteps: np.ndarray, phase: str, iteration: int | np.ndarray, layer: str,
            resolution: int, metric: str, values: np.ndarray, labels: Sequence[str], roles: Sequence[str]) -> None:
        s, k = values.shape
        if s == 0 or k == 0:
            return
        it = np.broadcast_to(np.asarray(iteration, dtype=np.int32), (s,))
        tok = np.array([self._code("token", x) for x in labels], dtype=np.int32)
        rol = np.array([self._code("role", x) for x in roles], dtype=np.int32)
        self.parts.append({
            "n": s * k, "step": np.repeat(steps.astype(np.int32), k), "timestep": np.repeat(timesteps, k),
            "iteration": np.repeat(it, k), "token": np.tile(tok, s), "role": np.tile(rol, s),
            "value": values.reshape(-1).astype(np.float64, copy=False),
            "phase": self._code("phase", phase), "layer": self._code("layer", layer),
            "metric": self._code("metric", metric), "resolution": resolution,
        })
        self.n += s * k
        if phase == "sample" and layer in (AGGREGATE_ALL, "latent"):
            self.summary.add(self.const["variant"], metric, roles, values)

    def table(self):

        schema = _schema()
        n = self.n
        sizes = np.array([p["n"] for p in self.parts])
        cols: dict[str, Any] = {}
        for name in ("run", "method", "variant", "prompt"):
            cols[name] = pa.DictionaryArray.from_arrays(np.zeros(n, dtype=np.int32),
                                                        pa.array([self.const[name]], pa.string())).cast(pa.string())
        cols["seed"] = pa.array(np.full(n, self.const["seed"], dtype=np.int64))
        cols["sample"] = pa.array(np.full(n, self.const["sample"], dtype=np.int32))
        for name in ("step", "timestep", "iteration", "value"):
            cols[name] = pa.array(np.concatenate([p[name] for p in self.parts]), type=schema.field(name).type)
        cols["resolution"] = pa.array(np.repeat(np.array([p["resolution"] for p in self.parts], dtype=np.int32), sizes))
        for name in self._CODED:
            if name in ("token", "role"):
                codes = np.concatenate([p[name] for p in self.parts])
            else:
                codes = np.repeat(np.array([p[name] for p in self.parts], dtype=np.int32), sizes)
            words = pa.array(list(self.dicts[name]), pa.string())
            cols[name] = pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), words).cast(pa.string())
        table = pa.table([cols[c] for c in COLUMNS], schema=schema)
        self._reset()
        return table


class _Summary:
    """Streaming means of the headline metrics per variant (layer ``all``/``latent``, phase ``sample``)."""

    def __init__(self):
        self.acc: dict[tuple[str, str, str], list[float]] = {}
        self.runs: dict[str, set[str]] = {}
        self.methods: dict[str, str] = {}
        self._headline = set(HEADLINE)

    def add(self, variant: str, metric: str, roles: Sequence[str], values: np.ndarray) -> None:
        for j, role in enumerate(roles):
            if (metric, role) in self._headline:
                v = values[:, j]
                v = v[np.isfinite(v)]
                a = self.acc.setdefault((variant, metric, role), [0.0, 0])
                a[0] += float(v.sum())
                a[1] += int(v.size)

    def frame(self):

        rows = []
        for variant in sorted(self.runs):
            row: dict[str, Any] = {"variant": variant, "method": self.methods.get(variant, variant),
                                   "runs": len(self.runs[variant])}
            for metric, role in HEADLINE:
                s, n = self.acc.get((variant, metric, role), (0.0, 0))
                row[f"{metric}[{role}]"] = s / n if n else float("nan")
            rows.append(row)
        return pd.DataFrame(rows)


@dataclass
class Analysis:
    """A streaming analysis of runs. Iterate :meth:`tables` (Arrow) or :meth:`frames` (pandas) once.

    Args:
        paths: run folders and/or roots holding runs.
        partial: analyse incomplete runs up to their last complete step (default: skip them with a note).
        metrics: metric names or globs of :data:`METRICS`, or ``scalar/<name>`` (default: everything).
        layers: layer names, globs, resolutions (``"16"``) or aggregates (``all``, ``res16``); default every
            layer and every aggregate.
        steps: step selection: an int, a list, a slice or text (``"0:25"``, ``"::5"``, ``"0,10,20"``).
        phases: phases of the map metrics (default every recorded phase); the trajectory (``sample``) and the
            scalars (``guidance``) are governed by ``metrics`` alone.
        batch_elements: map elements (records × tokens × pixels) read per layer at once; bounds memory.
        workers: layers computed concurrently (threads: torch and zarr release the GIL), default 2.
        threads: torch intra-op threads per worker while computing (restored afterwards; None leaves torch's
            setting). Default 1: parallelism comes from the workers, which keeps every core busy with independent
            work; intra-op threads on maps of this size mostly wait on each other, worst on a busy machine.
        text: transformer runs: which encoder's positions a word's map is taken from — ``both`` (the mean of the
            encoders' maps), ``clip``, ``t5`` or ``gemma`` (see :func:`attnlens.analysis.tokens.remap_selection`).
        renormalize_text: divide each query's probabilities by their sum over the recorded text positions
            (:func:`attnlens.maps.renormalize_text`; for joint attention, whose softmax also covers image keys).
    """

    paths: Sequence[str | Path] | str | Path
    partial: bool = False
    metrics: Sequence[str] | None = None
    layers: Sequence[str | int] | None = None
    steps: Any = None
    phases: Sequence[str] | None = None
    batch_elements: int = 1_000_000
    workers: int = 2
    threads: int | None = 1
    text: str = "both"
    renormalize_text: bool = False
    runs: list[Run] = field(init=False)
    notes: list[str] = field(init=False)

    def __post_init__(self):
        self.map_metrics, self.scalar_patterns = resolve_metrics(self.metrics)
        if self.phases is not None:
            bad = [p for p in self.phases if p not in PHASES]
            if bad:
                raise BadOption(f"unknown phase '{bad[0]}'", hint=f"phases: {', '.join(PHASES)}")
        self._step_ok = step_filter(self.steps)
        self.runs, self.notes = discover_runs(self.paths, self.partial)
        self._summary = _Summary()
        self.rows = 0
        self._references = self._index_references()
        self._known_parses: dict[str, Any] = {}
        for run in self.runs:  # manifest parses without a manual --bind, by prompt
            m = run.manifest
            if m.get("parse") and not m.get("bind") and m.get("prompt"):
                self._known_parses.setdefault(m["prompt"], m["parse"])
        if self.layers is not None:  # validate the layer specs on the first run before any work
            plan_layers(self.runs[0].resolutions(), [str(x) for x in self.layers])

    # -- references for the latent drift ---------------------------------------------------------------------
    def _ref_key(self, run: Run, k: int) -> tuple:
        prompt, seed = _sample_info(run, k)
        m = run.manifest
        return (prompt, seed, m.get("steps"), (m.get("model") or {}).get("id"), m.get("guidance_scale"))

    def _index_references(self) -> dict[tuple, tuple[Run, int]]:
        refs: dict[tuple, tuple[Run, int]] = {}
        for run in self.runs:
            if (run.manifest.get("method") or {}).get("name") == "none":
                for k in range(max(len(run.manifest.get("samples") or []), 1)):
                    refs.setdefault(self._ref_key(run, k), (run, k))
        return refs

    # -- iteration ---------------------------------------------------------------------------------------------
    def tables(self) -> Iterator[Any]:
        """Arrow tables (schema :data:`COLUMNS`), one per run-sample batch of steps."""

        previous = torch.get_num_threads()
        self._pool = ThreadPoolExecutor(max_workers=max(1, self.workers), thread_name_prefix="attnlens")
        try:
            if self.threads:
                torch.set_num_threads(self.threads)
            for run in self.runs:
                try:
                    yield from self._run_tables(run)
                except StoreError:
                    raise  # a damaged store: stop rather than leave part of the run in the table
                except AttnlensError as exc:
                    self.notes.append(f"skipped {run.path}: {exc.message}")
        finally:
            torch.set_num_threads(previous)
            self._pool.shutdown(wait=True)

    def frames(self) -> Iterator[Any]:
        """pandas DataFrames, one per run-sample batch of steps."""
        for t in self.tables():
            yield t.to_pandas()

    def summary(self):
        """Per-variant means of :data:`HEADLINE` (layer ``all``, phase ``sample``) over what has been iterated."""
        return self._summary.frame()

    def _run_tables(self, run: Run) -> Iterator[Any]:
        m = run.manifest
        method = str((m.get("method") or {}).get("name") or "unknown")
        variant = variant_label(m)
        arrays = {n: run.array(n) for n in run.layers}  # opening an array costs ~10 ms: once per run
        plan = plan_layers({n: tuple(int(v) for v in a.shape[-2:]) for n, a in arrays.items()},
                           None if self.layers is None else [str(x) for x in self.layers])
        self._arrays = arrays
        self._run = run
        for n in arrays:
            run.chunk_reader(n)  # opened once, before the worker threads share the run
        records, last = available_records(run, plan.read or run.layers[:1], arrays)
        if not run.complete:
            if last is None:
                self.notes.append(f"skipped {run.path}: incomplete run with no complete step")
                return
            self.notes.append(f"{run.path}: incomplete run (status {run.status}), analysed steps 0..{last}")
        n_samples = max(len(m.get("samples") or []), 1)
        timesteps = _timesteps(run)
        first_arr = arrays[run.layers[0]]
        n_samples = min(n_samples, first_arr.shape[3])
        self._summary.methods[variant] = method
        self._summary.runs.setdefault(variant, set()).add(str(run.path))
        sels, rows = [], []
        for k in range(n_samples):
            prompt, seed = _sample_info(run, k)
            sel = None
            if self.map_metrics & set(MAP_METRICS):
                try:
                    sel = run_selection(run, k, self._known_parses, self.text)
                except AttnlensError as exc:
                    self.notes.append(f"{run.path}: no parse for {prompt!r} ({exc.message}); token metrics skipped")
                    sel = Selection((), (), (), (), len(run.tokens[k]) - 2 if run.tokens else 0)
            sels.append(sel)
            rows.append(_Rows({"run": str(run.path), "method": method, "variant": variant, "prompt": prompt,
                               "seed": seed, "sample": k}, self._summary))
        want_maps = self.map_metrics & set(MAP_METRICS)
        if want_maps and (plan.emit or plan.aggregates):
            by_phase: dict[str, list[tuple[int, int]]] = {}
            for (phase, it), steps in records.items():
                if self.phases is not None and phase not in self.phases:
                    continue
                by_phase.setdefault(phase, []).extend(
                    (s, it) for s in steps if self._step_ok(s) and (last is None or s <= last))
            for phase in sorted(by_phase, key=PHASES.index):
                for batch in self._batches(plan, sorted(by_phase[phase])):
                    self._map_batch(plan, phase, batch, timesteps, sels, rows)
                    for r in rows:
                        if r.n:
                            self.rows += r.n
                            yield r.table()
        for k in range(n_samples):
            self._trajectory(run, k, last, timesteps, rows[k])
            self._scalars(run, k, last, timesteps, rows[k])
            if rows[k].n:
                self.rows += rows[k].n
                yield rows[k].table()

    def _batches(self, plan: LayerPlan, recs: list[tuple[int, int]]) -> Iterator[list[tuple[int, int]]]:
        """Split (step, iteration) records so that one layer's batch holds about ``batch_elements`` values."""
        if not recs:
            return
        per_rec = 0
        for n in plan.read:
            per_rec = max(per_rec, int(np.prod(self._arrays[n].shape[3:])))
        for _, _, size in plan.aggregates:
            per_rec = max(per_rec, int(np.prod(self._arrays[plan.read[0]].shape[3:-2])) * size[0] * size[1])
        b = max(1, self.batch_elements // max(per_rec, 1))
        for i in range(0, len(recs), b):
            yield recs[i:i + b]

    def _read(self, layer: str, recs: list[tuple[int, int]], ph) -> torch.Tensor:
        """``(R, sample, head, token, h, w)`` maps of records ``recs``, renormalised over the text if asked."""
        data = torch.from_numpy(self._run.read_records(layer, recs, ph))
        return renormalize_text(data.to(torch.float32)) if self.renormalize_text else data

    def _layer_job(self, layer: str, recs: list[tuple[int, int]], ph: int, sels: list[Selection | None],
                   emit: bool, keep: bool) -> tuple[list[torch.Tensor] | None, list[dict[str, MetricBlock] | None]]:
        """Worker: read one layer's batch, average heads, compute its metrics (if emitted)."""
        data = self._read(layer, recs, ph)  # (R, sample, head, token, h, w)
        mean = self._run.heads == "mean"  # heads averaged while recording: the head axis has length 1
        xs = [data[:, k, 0] if mean else data[:, k].mean(dim=1) for k in range(len(sels))]
        wanted = self.map_metrics & set(MAP_METRICS)
        results = [map_metrics(x, sel, wanted) if emit and sel is not None else None for x, sel in zip(xs, sels)]
        return (xs if keep else None), results

    def _map_batch(self, plan: LayerPlan, phase: str, recs: list[tuple[int, int]], timesteps: np.ndarray,
                   sels: list[Selection | None], rows: list[_Rows]) -> None:

        ph = PHASES.index(phase)
        st = np.asarray([r[0] for r in recs], dtype=np.int64)
        its = np.asarray([r[1] for r in recs], dtype=np.int32)
        ts = np.array([timesteps[s] if s < len(timesteps) else np.nan for s in st], dtype=np.float64)
        n_samples = len(rows)
        # Aggregates are linear: sum the layers of each resolution once, then resample each resolution's sum
        # (not every layer) for an aggregate over several resolutions.
        groups: dict[tuple[int, int], list[str]] = {}
        for layer in plan.read:
            groups.setdefault(tuple(self._arrays[layer].shape[-2:]), []).append(layer)
        needed = {n for _, mem, _ in plan.aggregates for n in mem}
        sums: dict[tuple[tuple[int, int], int], torch.Tensor] = {}
        order = [(hw, layer) for hw, layers in groups.items() for layer in layers]
        # Layers are computed by the worker pool, a few in flight (bounded memory); results are consumed in order,
        # so the table is the same whatever the number of workers.
        window = max(1, self.workers)
        todo = iter(order)
        pending: deque = deque()

        def submit() -> None:
            item = next(todo, None)
            if item is not None:
                hw, layer = item
                pending.append((hw, layer, self._pool.submit(self._layer_job, layer, recs, ph, sels,
                                                             layer in plan.emit, layer in needed)))

        for _ in range(window):
            submit()
        while pending:
            hw, layer, fut = pending.popleft()
            xs, results = fut.result()
            submit()
            for k in range(n_samples):
                if results[k] is not None:
                    self._add_rows(rows[k], results[k], st, ts, phase, its, layer, int(hw[0]))
                if xs is not None:
                    key = (hw, k)
                    sums[key] = xs[k].clone() if key not in sums else sums[key].add_(xs[k])
            del xs, results
        wanted = self.map_metrics & set(MAP_METRICS)
        jobs = []
        for name, mem, size in plan.aggregates:
            mem_set = set(mem)
            for k in range(n_samples):
                parts = []
                for hw, layers in groups.items():
                    inside = [n for n in layers if n in mem_set]
                    if not inside:
                        continue
                    if len(inside) == len([n for n in layers if n in needed]):
                        parts.append(sums[(hw, k)])
                    else:  # an aggregate over a subset of this resolution's summed layers: sum them again
                        parts.append(sum(self._read(n, recs, ph)[:, k].mean(dim=1)
                                         for n in inside))
                if parts and sels[k] is not None:  # resampling and metrics run in the worker pool
                    jobs.append((k, name, int(size[0]),
                                 self._pool.submit(_aggregate_metrics, parts, size, len(mem), sels[k], wanted)))
        for k, name, res, fut in jobs:
            self._add_rows(rows[k], fut.result(), st, ts, phase, its, name, res)

    def _add_rows(self, rows: _Rows, results: dict[str, MetricBlock], st, ts, phase, its, layer, res) -> None:
        for metric, (values, labels, roles) in results.items():
            rows.add(st, ts, phase, its, layer, res, metric, values, labels, roles)

    def _trajectory(self, run: Run, k: int, last: int | None, timesteps: np.ndarray, rows: _Rows) -> None:
        if not self.map_metrics & set(TRAJECTORY_METRICS):
            return
        ref = self._references.get(self._ref_key(run, k))
        if ref is None:
            return
        ref_run, rk = ref
        a, b = run.latents(), ref_run.latents()
        if a is None or b is None or a.shape[2:] != b.shape[2:]:
            return
        n = min(a.shape[0], b.shape[0], (last + 1) if last is not None else a.shape[0])
        steps = np.asarray([s for s in range(n) if self._step_ok(s)], dtype=np.int64)
        if steps.size == 0:
            return
        d = M.latent_drift(a[steps, k].astype(np.float64), b[steps, rk].astype(np.float64))
        ts = timesteps[steps] if len(timesteps) >= n else np.full(len(steps), np.nan)
        res = int(a.shape[-2])
        for metric, v in (("latent_drift", d.l2), ("latent_drift_rel", d.relative)):
            if metric in self.map_metrics:
                rows.add(steps, ts, "sample", 0, "latent", res, metric, np.asarray(v)[:, None], ["-"], ["latent"])

    def _scalars(self, run: Run, k: int, last: int | None, timesteps: np.ndarray, rows: _Rows) -> None:
        if self.scalar_patterns is not None and not self.scalar_patterns:
            return
        for name, arr in sorted(run.scalars().items()):
            if self.scalar_patterns is not None and not any(fnmatch.fnmatch(name, p) for p in self.scalar_patterns):
                continue
            if k >= arr.shape[2]:
                continue
            v = arr[:, :, k]
            s_idx, i_idx = np.nonzero(np.isfinite(v))
            keep = np.array([self._step_ok(int(s)) and (last is None or s <= last) for s in s_idx], dtype=bool)
            s_idx, i_idx = s_idx[keep], i_idx[keep]
            if s_idx.size == 0:
                continue
            ts = np.array([timesteps[s] if s < len(timesteps) else np.nan for s in s_idx])
            rows.add(s_idx, ts, "guidance", i_idx.astype(np.int32), "-", 0, SCALAR_PREFIX + name,
                     v[s_idx, i_idx].astype(np.float64)[:, None], ["-"], ["scalar"])


def _timesteps(run: Run) -> np.ndarray:
    try:
        return np.asarray(run.timesteps(), dtype=np.float64)
    except Exception:  # noqa: BLE001  (a run without the timestep array: NaN timesteps)
        return np.zeros(0)


def analyze_runs(paths: Sequence[str | Path] | str | Path, partial: bool = False, metrics: Sequence[str] | None = None,
                 layers: Sequence[str | int] | None = None, steps: Any = None,
                 phases: Sequence[str] | None = None):
    """The whole table of ``paths`` as one pandas DataFrame (columns :data:`COLUMNS`).

    For big runs prefer :func:`write_parquet` (streams to disk) or ``Analysis(...).frames()``.

    Examples::

        >>> import attnlens
        >>> pipe = attnlens.load_pipeline("attnlens-tiny")
        >>> for method in ("none", "syngen"):
        ...     _ = attnlens.sample(pipe, "a red crown", method=method, out=f"runs/{method}", num_inference_steps=4)
        >>> df = analyze_runs("runs/", metrics=["jsd", "leak_in"], layers=["all"])
        >>> df.query("role == 'bound'").groupby(["variant", "step"]).value.mean()       # doctest: +ELLIPSIS
        variant  step
        none     0       ...
        syngen   0       ...
        Name: value, dtype: float64
    """

    a = Analysis(paths, partial=partial, metrics=metrics, layers=layers, steps=steps, phases=phases)
    tables = list(a.tables())
    if not tables:
        return _schema().empty_table().to_pandas()
    return pa.concat_tables(tables).to_pandas()
