"""What the dashboard reads from a root of runs (no Streamlit here: every function is testable on its own).

Everything is read through the library: ``attnlens.store`` for manifests, arrays and images,
``attnlens.analysis`` for the parse, token selection, layer aggregates and metric tables, ``attnlens.metrics`` for
the leakage regions, ``attnlens.compare`` for paired comparisons, and ``attnlens.figures`` for exported figures.
This module chooses *what* to read for a view and never computes a metric itself.
"""

from __future__ import annotations

import collections
import functools
import json
import os
import shlex
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from attnlens import analysis as A
from attnlens import metrics as M
from attnlens.analysis import (
    COLUMNS,
    SCALAR_PREFIX,
    available_records,
    layer_maps,
    load_table,
    run_display_parse,
    select_tokens,
    unit_maps,
    variant_label,
)
from attnlens.compare import compare, wide_rows
from attnlens.errors import AttnlensError
from attnlens.figures import BOOKKEEPING, FigureSpec, figure_bytes, layer_order, short_layer
from attnlens.store import MANIFEST, PHASES, STATUS_COMPLETE, Manifest, Run
from attnlens.store import open_run as store_open_run
from attnlens.store import read_manifest
from attnlens.store.remote import is_url, mirror_root

#: a running run's cache entries expire after this many seconds (its chunks change without touching the manifest)
RUNNING_REFRESH_S = 5.0
STATUS_CORRUPTED = "corrupted"
_AGGREGATE_RE = r"^res\d+(?:x\d+)?$"  # the res<h> aggregates of attnlens.analysis


# ------------------------------------------------------------------------------------------------------ run index
@dataclass(frozen=True)
class RunEntry:
    """One run of the root, as listed by the run browser.

    ``rel`` is the run's path relative to the root (the only name the page uses for it); ``key`` changes whenever
    the run changes on disk (manifest modification time and size; plus a time bucket while it is running), so
    caches keyed by ``(path, key)`` never serve stale data. A run whose manifest cannot be read has status
    ``corrupted`` and its ``error``.
    """

    rel: str
    path: Path
    key: str
    status: str
    prompt: str | None = None
    seed: int | None = None
    method: str | None = None
    variant: str | None = None
    model: str | None = None
    steps: int | None = None
    error: str | None = None

    @property
    def complete(self) -> bool:
        return self.status == STATUS_COMPLETE

    @property
    def broken(self) -> bool:
        return self.status == STATUS_CORRUPTED


def run_key(path: str | os.PathLike, status: str | None = None) -> str:
    """Cache key of a run: manifest mtime (ns) and size; a running run also gets a 5-second time bucket."""
    try:
        st = (Path(path) / MANIFEST).stat()
        key = f"{st.st_mtime_ns}-{st.st_size}"
    except OSError:
        key = "missing"
    if status == "running":
        key += f"@{int(time.time() // RUNNING_REFRESH_S)}"
    return key


@functools.lru_cache(maxsize=4096)
def _variant(method_json: str, label: str | None, interventions_json: str = "[]") -> str:

    m = {"method": json.loads(method_json), "interventions": json.loads(interventions_json)}
    if label:
        m["label"] = label
    return variant_label(m)


def _entry(root: Path, path: Path) -> RunEntry:
    rel = path.relative_to(root).as_posix() or "."
    try:
        m = read_manifest(path)
        if not isinstance(m, dict):
            raise AttnlensError(f"'{rel}/{MANIFEST}' is not a JSON object")
    except AttnlensError as exc:
        return RunEntry(rel, path, run_key(path), STATUS_CORRUPTED, error=exc.message)
    status = str(m.get("status", "unknown"))
    try:  # attnlens.analysis.variant_label, memoised per (method, hyperparameters, label, interventions)
        variant = _variant(json.dumps(m.get("method") or {}, sort_keys=True, default=str), m.get("label"),
                           json.dumps(m.get("interventions") or [], sort_keys=True, default=str))
    except Exception:  # noqa: BLE001  (a manifest with odd hyperparameters still lists)
        variant = str((m.get("method") or {}).get("name") or "unknown")
    try:
        info = Manifest.from_dict(m)
    except Exception:  # noqa: BLE001  (odd values: list the run with what can be read)
        info = Manifest()
    steps = m.get("steps")
    return RunEntry(
        rel=rel, path=path, key=run_key(path, status), status=status, prompt=info.sample_prompt(0),
        seed=info.sample_seed(0), method=info.method_name if m.get("method") else None, variant=variant,
        model=info.model_id, steps=int(steps) if isinstance(steps, (int, float)) else None, error=m.get("error"),
    )


def run_folders(root: str | os.PathLike) -> list[Path]:
    """Every run folder under ``root``, sorted: the folders holding a ``manifest.json`` (as
    ``attnlens.store.find_runs``), found without descending into a run (a run's thousands of chunk files are never
    listed, so a root of 100 runs is scanned in milliseconds). Links to folders are not followed."""
    base = Path(root)
    if (base / MANIFEST).is_file():
        return [base]
    found = []
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        if MANIFEST in filenames and Path(dirpath) != base:
            found.append(Path(dirpath))
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    return sorted(found)


_ENTRY_CACHE: dict[tuple[str, str, str], RunEntry] = {}


def scan_root(root: str | os.PathLike) -> list[RunEntry]:
    """Every run under ``root`` (:func:`run_folders`), sorted by path. A manifest is parsed again only when its
    modification time or size changed. Links are not followed, so nothing outside the root is ever listed. A URL
    (``s3://bucket/root``) is copied into the local cache first (``attnlens.store.remote.mirror_root``) and the copy
    is scanned."""
    if is_url(root):
        root = mirror_root(root)
    base = Path(root).resolve()
    out = []
    for path in run_folders(base):
        # run_folders never follows a link, so every folder it finds is really inside the resolved root
        key = run_key(path)
        ck = (str(base), str(path), key)
        e = _ENTRY_CACHE.get(ck)
        if e is None or e.status == "running":
            e = _entry(base, path)
            if len(_ENTRY_CACHE) > 100_000:
                _ENTRY_CACHE.clear()
            _ENTRY_CACHE[ck] = e
        out.append(e)
    return out


def entry_by_rel(entries: Sequence[RunEntry], rel: str) -> RunEntry | None:
    for e in entries:
        if e.rel == rel:
            return e
    return None


FILTERS = ("prompt", "seed", "method", "model", "status")


def filter_values(entries: Sequence[RunEntry]) -> dict[str, list[str]]:
    """The values each run-browser filter can take (as strings, sorted; seeds numerically)."""
    out: dict[str, list[str]] = {}
    for f in FILTERS:
        vals = {str(getattr(e, f)) for e in entries if getattr(e, f) is not None}
        out[f] = sorted(vals, key=lambda v: (0, int(v), "") if f == "seed" and v.lstrip("-").isdigit() else (1, 0, v))
    return out


def filter_entries(entries: Sequence[RunEntry], **chosen: Sequence[str]) -> list[RunEntry]:
    """Runs matching every non-empty filter (``prompt=[...]``, ``seed=[...]``, ``method``, ``model``, ``status``).
    Corrupted runs match only a filter that has no value for them (they have no prompt, seed, ...)."""
    out = []
    for e in entries:
        ok = True
        for f, values in chosen.items():
            if values and str(getattr(e, f)) not in {str(v) for v in values}:
                ok = False
                break
        if ok:
            out.append(e)
    return out


def units(entries: Sequence[RunEntry]) -> dict[str, list[int]]:
    """``{prompt: [seeds]}`` of the readable runs (the (prompt, seed) units the comparison view can show)."""
    out: dict[str, set[int]] = {}
    for e in entries:
        if e.broken or e.prompt is None:
            continue
        out.setdefault(e.prompt, set()).add(e.seed if e.seed is not None else -1)
    return {p: sorted(s) for p, s in sorted(out.items())}


def unit_runs(entries: Sequence[RunEntry], prompt: str | None, seed: int | None) -> list[RunEntry]:
    """The readable runs of one (prompt, seed), baseline (``none``) first, then by variant and path."""
    rs = [e for e in entries if not e.broken and e.prompt == prompt and (e.seed if e.seed is not None else -1) == seed]
    return sorted(rs, key=lambda e: (e.method != "none", e.variant or "", e.rel))


def column_labels(runs: Sequence[RunEntry]) -> dict[str, str]:
    """``{rel: label}``: the variant, disambiguated by model, then step count, then path when two runs share it."""
    labels = {e.rel: e.variant or e.method or e.rel for e in runs}
    for extra in (lambda e: e.model, lambda e: f"{e.steps} steps", lambda e: e.rel):
        seen: dict[str, int] = {}
        for lab in labels.values():
            seen[lab] = seen.get(lab, 0) + 1
        if all(n == 1 for n in seen.values()):
            break
        labels = {e.rel: (f"{labels[e.rel]} · {extra(e)}" if seen[labels[e.rel]] > 1 else labels[e.rel]) for e in runs}
    return labels


# ------------------------------------------------------------------------------------------------------ one run
def open_run(path: str | os.PathLike) -> Run:
    """Open a run read-only (``attnlens.store.open_run``: the store's reader keeps its group and arrays open)."""
    return store_open_run(Path(path))


def known_parses(runs: Sequence[Run]) -> dict[str, dict[str, Any]]:
    """``{prompt: parse dict}`` from guided runs' manifests (without a manual --bind), so that a ``none`` run of
    the same prompt gets the very parse its guided counterparts used (as ``attnlens analyze`` does)."""
    out: dict[str, dict[str, Any]] = {}
    for r in runs:
        m = r.manifest
        if m.get("parse") and not m.get("bind") and m.get("prompt"):
            out.setdefault(m["prompt"], m["parse"])
    return out


def parse_of(run: Run, known: dict[str, Any] | None = None):
    """The run's parse (``attnlens.analysis.run_parse``: the manifest's, a known one, else spaCy); on a
    transformer run (SD3, Flux, PixArt, Sana) with its positions on the run's own token axis
    (``attnlens.analysis.run_display_parse``: a word covers its pieces of every text encoder)."""

    return run_display_parse(run, 0, known)


def parse_rows(parse) -> tuple[list[dict[str, Any]], list[str]]:
    """The parse as a table of word pieces (position, piece, word, role) and one line per SynGen set."""

    sel = select_tokens(parse)
    role_of: dict[int, tuple[str, str]] = {}
    for u in sel.units:
        for p in u.positions:
            role_of[p] = (u.label, u.role)
    rows = []
    for i, piece in enumerate(parse.pieces):
        word, role = role_of.get(i, ("", ""))
        if i == 0:
            role = "start"
        elif i == len(parse.pieces) - 1:
            role = "end"
        rows.append({"position": i, "piece": piece, "word": word, "role": role})
    sets = []
    for s in parse.sets:
        mods = ", ".join(f"{m.word} {list(m.positions)}" for m in s.modifiers) or "(none)"
        sets.append(f"{mods} → {s.noun.word} {list(s.noun.positions)}  ({s.rule})")
    return rows, sets


def token_choices(parse) -> list[tuple[str, str]]:
    """``[(value, label)]``: the analysed words of the parse (modifiers and nouns, by label), then every word piece
    by position (``#3`` → ``#3 crown``), so any recorded token can be shown."""

    sel = select_tokens(parse)
    out = [(u.label, f"{u.label} ({u.role})") for u in sel.units]
    for i, piece in enumerate(parse.pieces):
        out.append((f"#{i}", f"#{i} {piece}"))
    return out


def default_tokens(parse, n: int = 4) -> list[str]:

    return [u.label for u in select_tokens(parse).units[:n]]


def records(run: Run) -> dict[str, dict[int, list[int]]]:
    """``{phase: {step: [iterations]}}`` with maps in every layer (``attnlens.analysis.available_records``: the
    manifest's index for a complete run; checked chunk by chunk and cut at the last complete step otherwise)."""

    if not run.layers:
        return {}
    recs, _ = available_records(run)
    out: dict[str, dict[int, list[int]]] = {}
    for (phase, it), steps in recs.items():
        for s in steps:
            out.setdefault(phase, {}).setdefault(int(s), []).append(int(it))
    for ph in out:
        for s in out[ph]:
            out[ph][s].sort()
    return {ph: dict(sorted(out[ph].items())) for ph in PHASES if ph in out}


def layer_choices(resolutions: dict[str, tuple[int, int]]) -> list[tuple[str, str]]:
    """``[(value, label)]``: ``all``, one ``res<h>`` aggregate per resolution (largest first), then every layer
    in UNet order with its short name and resolution (``down0.0 · 16×16``)."""

    if not resolutions:
        return []
    out = [("all", "all layers (mean, resampled to the largest)")]
    by_res: dict[tuple[int, int], int] = {}
    for hw in resolutions.values():
        by_res[tuple(hw)] = by_res.get(tuple(hw), 0) + 1
    for hw in sorted(by_res, reverse=True):
        name = f"res{hw[0]}" if hw[0] == hw[1] else f"res{hw[0]}x{hw[1]}"
        out.append((name, f"{name} (mean of {by_res[hw]} layer{'s' if by_res[hw] > 1 else ''} at {hw[0]}×{hw[1]})"))
    for name in sorted(resolutions, key=layer_order):
        h, w = resolutions[name]
        out.append((name, f"{short_layer(name)} · {h}×{w}"))
    return out


def head_count(run: Run, layer: str) -> int:
    """Heads recorded in ``layer`` (1 when heads were averaged at recording time, or for an aggregate)."""
    if layer not in run.layers:
        return 1
    return run.head_count(layer)


def read_maps(run: Run, layer: str, step: int, phase: str = "sample", iteration: int = 0,
              head: int | None = None, sample: int = 0) -> np.ndarray:
    """Maps of every recorded token at one (layer or aggregate, step, phase, iteration): ``(token, h, w)`` float64.

    ``head=None`` is the head mean (``attnlens.analysis.layer_maps``, which also forms the ``all``/``res<h>``
    aggregates); an int picks one head of a single layer. NaN where nothing was recorded."""

    if head is None:
        return layer_maps(run, layer, [int(step)], phase=phase, iteration=iteration, sample=sample)[0].numpy()
    arr = run.maps(layer, step=int(step), phase=phase, iteration=iteration, sample=sample)  # (head, token, h, w)
    return np.asarray(arr[head], dtype=np.float64)


def read_stack(run: Run, layer: str, steps: Sequence[int], phase: str = "sample", iteration: int = 0,
               head: int | None = None, sample: int = 0) -> np.ndarray:
    """:func:`read_maps` for several steps at once, ``(step, token, h, w)`` float32: one zarr read per layer (the
    chunks of all steps are fetched together), so that moving the step slider afterwards reads nothing."""

    steps = [int(s) for s in steps]
    if head is None:
        x = layer_maps(run, layer, steps, phase=phase, iteration=iteration, sample=sample).numpy()
    else:
        x = run.read(layer, steps, phase, iteration, sample=sample, head=head)
    return np.asarray(x, dtype=np.float32)


class MapCache:
    """Maps of one (run, layer or aggregate, phase, iteration, head) for every recorded step, read in the background.

    The first request for a step reads that step alone (what the first paint needs) and queues a read of all the
    steps (:func:`read_stack`) on one background thread; later requests index the stack, so moving the step slider
    reads nothing. A request arriving while the stack is being read waits for it. Thread-safe; keeps the
    ``max_stacks`` most recently used stacks. Arrays handed out are read-only views.
    """

    def __init__(self, max_stacks: int = 256):

        self.max_stacks = max_stacks
        self._lock = threading.Lock()
        self._stacks: "collections.OrderedDict[tuple, tuple[dict[int, int], np.ndarray]]" = collections.OrderedDict()
        self._pending: dict[tuple, Any] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="attnlens-dashboard-prefetch")

    def _store(self, key: tuple, value: tuple[dict[int, int], np.ndarray]) -> None:
        with self._lock:
            self._stacks[key] = value
            self._stacks.move_to_end(key)
            while len(self._stacks) > self.max_stacks:
                self._stacks.popitem(last=False)

    def _read_all(self, run: Run, key: tuple, steps: list[int]) -> tuple[dict[int, int], np.ndarray]:
        _, _, layer, phase, it, head = key
        try:
            arr = read_stack(run, layer, steps, phase=phase, iteration=it, head=head)
            arr.setflags(write=False)
            value = ({s: i for i, s in enumerate(steps)}, arr)
            self._store(key, value)
            return value
        finally:
            with self._lock:
                self._pending.pop(key, None)

    def stack(self, key: tuple) -> tuple[dict[int, int], np.ndarray] | None:
        with self._lock:
            v = self._stacks.get(key)
            if v is not None:
                self._stacks.move_to_end(key)
            return v

    def get(self, run: Run, key: tuple, steps: Sequence[int], step: int, *, prefetch: bool = True) -> np.ndarray | None:
        """``(token, h, w)`` maps at ``step`` for ``key`` = (path, run key, layer, phase, iteration, head);
        ``steps`` are the steps recorded for (phase, iteration). None if ``step`` is not among them."""
        steps = sorted(int(s) for s in steps)
        if step not in steps:
            return None
        v = self.stack(key)
        if v is not None:
            return v[1][v[0][step]]
        with self._lock:
            fut = self._pending.get(key)
        if fut is not None:
            index, arr = fut.result()
            return arr[index[step]]
        _, _, layer, phase, it, head = key
        one = read_stack(run, layer, [step], phase=phase, iteration=it, head=head)[0]
        one.setflags(write=False)
        if prefetch and len(steps) > 1:
            with self._lock:
                if key not in self._pending:
                    self._pending[key] = self._pool.submit(self._read_all, run, key, steps)
        elif len(steps) == 1:
            self._store(key, ({step: 0}, one[None]))
        return one

    def get_all(self, run: Run, key: tuple, steps: Sequence[int]) -> tuple[dict[int, int], np.ndarray] | None:
        """Every recorded step at once: ``({step: index}, (step, token, h, w) maps)`` for ``key`` (as in
        :meth:`get`), from the cached stack, from a background read under way, or read now (one
        :func:`read_stack`) and kept. None when ``steps`` is empty. What the Compare view's step player sends."""
        steps = sorted({int(s) for s in steps})
        if not steps:
            return None

        def covers(v) -> bool:
            return v is not None and all(s in v[0] for s in steps)

        v = self.stack(key)
        if covers(v):
            return v
        with self._lock:
            fut = self._pending.get(key)
        if fut is not None:
            try:
                v = fut.result()
            except Exception:  # noqa: BLE001  (read again below: the error, if any, is raised there)
                v = None
            if covers(v):
                return v
        return self._read_all(run, key, steps)


def token_maps(maps: np.ndarray, parse, tokens: Sequence[str]) -> list[np.ndarray]:
    """The ``(h, w)`` map of each token: a word is the mean of its word pieces (``attnlens.analysis.unit_maps``),
    ``#i`` is the piece at position i."""

    sel = select_tokens(parse)
    words = [t for t in tokens if not t.startswith("#")]
    u = None
    if words and sel.units:
        u = unit_maps(torch.from_numpy(np.array(maps[None], dtype=np.float64)), sel)[0].numpy()
    out = []
    for t in tokens:
        if t.startswith("#"):
            i = int(t[1:])
            out.append(maps[i] if 0 <= i < maps.shape[0] else np.full(maps.shape[1:], np.nan))
        else:
            out.append(u[sel.unit(t)])
    return out


def leakage_matrix(maps: np.ndarray, parse):
    """Modifiers × entities at one step: the share of each modifier's spatial attention on each entity's Otsu
    region (``attnlens.metrics.leak_in_prompt`` with that one region), plus ``outside`` = the share outside every
    entity region (``leak_out_of_prompt``). Entity regions are the nouns' ``entity_regions(..., "otsu")``, as in
    the ``leak_in``/``leak_out`` metrics of ``attnlens analyze``. Returns ``(DataFrame, own)`` where ``own`` maps
    each modifier to its own noun; ``(None, {})`` when the prompt has no modifier or no entity."""
    import pandas as pd


    sel = select_tokens(parse)
    if not sel.modifiers or not sel.entities:
        return None, {}
    u = unit_maps(torch.from_numpy(np.array(maps[None], dtype=np.float64)), sel)[0].numpy()
    ents = [sel.units[e] for e in sel.entities]
    regions = M.entity_regions(np.stack([u[e] for e in sel.entities]), "otsu")  # (E, h, w) bool
    rows, own = {}, {}
    for mi, e_own in sel.modifiers:
        m = u[mi]
        label = sel.units[mi].label
        row = {ents[j].label: float(M.leak_in_prompt(m, None, regions[j])) for j in range(len(ents))}
        row["outside"] = float(M.leak_out_of_prompt(m, regions))
        rows[label] = row
        own[label] = ents[e_own].label
    df = pd.DataFrame.from_dict(rows, orient="index")
    return df[[e.label for e in ents] + ["outside"]], own


def leakage_table(df, own: Mapping[str, str]) -> dict[str, Any]:
    """A :func:`leakage_matrix` as plain JSON for the step player: ``{"rows", "cols", "z" (None for NaN), "own"}``."""
    z = df.to_numpy(dtype=np.float64)
    return {"rows": [str(r) for r in df.index], "cols": [str(c) for c in df.columns],
            "z": [[float(v) if np.isfinite(v) else None for v in row] for row in z],
            "own": {str(k): str(v) for k, v in own.items()}}


def image_array(run: Run, sample: int = 0) -> np.ndarray | None:
    """The run's final image as uint8 RGB, or None when it has none yet."""
    img = run.image(sample)
    if img is None:
        return None
    with img:
        return np.asarray(img.convert("RGB"))


# ------------------------------------------------------------------------------------------------------ tables
@dataclass
class TableResult:
    """A metrics table and what happened while building it: ``notes`` (skipped or partial runs, from
    ``attnlens.analysis``) and ``errors`` (``{rel or path: message}`` of runs that could not be analysed)."""

    df: Any
    notes: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)


def metric_table(paths: Sequence[str | os.PathLike], *, phase: str = "sample", partial: bool = True,
                 metrics: Sequence[str] | None = None, layers: Sequence[str] | None = None) -> TableResult:
    """``attnlens.analysis.load_table`` over ``paths`` (every metric, layer and aggregate of ``phase`` by default).

    The runs are analysed together (so the latent drift finds its ``none`` reference). If that fails because one
    run is broken, each run is analysed alone and the broken ones are reported in ``errors``."""
    import pandas as pd


    notes: list[str] = []
    try:
        df = load_table(list(paths), partial=partial, metrics=metrics, layers=layers, phases=[phase], notes=notes)
        return TableResult(df, notes)
    except Exception:  # noqa: BLE001  (find the broken run(s) and keep the others)
        pass
    frames, errors = [], {}
    for p in paths:
        try:
            frames.append(load_table([p], partial=partial, metrics=metrics, layers=layers, phases=[phase], notes=notes))
        except AttnlensError as exc:
            errors[str(p)] = exc.message
        except Exception as exc:  # noqa: BLE001
            errors[str(p)] = f"{type(exc).__name__}: {exc}"
    frames = [f for f in frames if len(f)]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    return TableResult(df, notes, errors)


def roles_for(metric: str) -> list[str]:
    """The roles a metric has rows for in ``attnlens analyze`` tables (``docs/analysis.md``): pair metrics →
    bound / unbound / entities, token metrics → modifier / noun, leakage → modifier, ``token_entropy`` → prompt,
    latent drift → latent."""

    if metric in A.PAIR_METRICS:
        return ["bound", "unbound", "entities"]
    if metric in A.MODIFIER_METRICS:
        return ["modifier"]
    if metric in A.TOKEN_METRICS:
        return ["modifier", "noun"]
    if metric in A.PROMPT_METRICS:
        return ["prompt"]
    if metric in A.TRAJECTORY_METRICS:
        return ["latent"]
    return []


def curve_rows(df, metric: str, role: str | None, layer: str, phase: str, tokens: Sequence[str] | None = None):
    """The rows ``attnlens.figures.curves_figure`` plots: one metric and role, ``layer`` (the drift keeps its own
    layer ``latent``), ``phase``; optionally some tokens."""
    rows = df[df["metric"] == metric]
    if role:
        rows = rows[rows["role"] == role]
    if not metric.startswith("latent_drift"):
        rows = rows[(rows["layer"] == layer) & (rows["phase"] == phase)]
    if tokens:
        rows = rows[rows["token"].isin(list(tokens))]
    return rows


def layer_step_matrix(df, metric: str, role: str | None, phase: str, group: str, by: str = "method"):
    """Mean of ``metric`` per (layer, step) for one group over the recorded layers in UNet order (aggregates left
    out), as the panels of ``attnlens.figures.layers_figure``. Returns (layers, steps, matrix)."""

    rows = df[(df["metric"] == metric) & (df["phase"] == phase)]
    if role:
        rows = rows[rows["role"] == role]
    rows = rows[~rows["layer"].isin(["all", "latent", "-"]) & ~rows["layer"].str.match(_AGGREGATE_RE)]
    rows = rows[rows[by].astype(str) == group]
    if not len(rows):
        return [], [], np.zeros((0, 0))
    layers = sorted(rows["layer"].unique(), key=layer_order)
    steps = np.sort(rows["step"].unique())
    m = rows.groupby(["layer", "step"], observed=True)["value"].mean().unstack("step")
    return layers, steps, m.reindex(index=layers, columns=steps).to_numpy(dtype=np.float64)


def loss_rows(df, iteration: str = "first"):
    """``{term: rows}`` of the recorded guidance scalars (``scalar/<term>``) without the bookkeeping ones, at the
    step's first guidance iteration (as ``attnlens.figures.losses_figure`` with ``iteration="first"``)."""

    if df is None or not len(df):
        return {}
    sc = df[df["metric"].str.startswith(SCALAR_PREFIX)]
    terms = sorted({m[len(SCALAR_PREFIX):] for m in sc["metric"].unique()} - set(BOOKKEEPING),
                   key=lambda t: (t != "loss", t))
    out = {}
    for t in terms:
        rows = sc[sc["metric"] == SCALAR_PREFIX + t]
        if iteration == "first":
            rows = rows[rows["iteration"] == 0]
        out[t] = rows
    return out


def comparison(df, *, metric: str, role: str | None, layer: str, phase: str, by: str = "method",
               n_boot: int = 2000, seed: int = 0):
    """``attnlens.compare.compare`` for one metric/role/layer/phase (as ``attnlens compare ROOT --metric ...``)."""

    return compare(df, by=by, metrics=[metric], roles=[role] if role else None, layers=[layer], phase=phase,
                   n_boot=n_boot, seed=seed)


def comparison_frame(c):
    """The paper layout of a comparison (``attnlens.compare.wide_rows``) as a DataFrame."""
    import pandas as pd


    header, rows = wide_rows(c)
    return pd.DataFrame(rows, columns=header)


# ------------------------------------------------------------------------------------------------------ export
@dataclass(frozen=True)
class ExportSpec:
    """What "Export figure" draws, as the page selects it; :attr:`figure` is the
    :class:`attnlens.figures.FigureSpec` that both this export and ``attnlens figure`` draw.

    ``runs``: run folders (complete runs only, as the CLI without ``--partial``); ``width``: ``auto`` = the CLI's
    default (column for curves, page otherwise); ``steps``: the maps' columns (None = the CLI's five spread steps).
    """

    kind: str
    fmt: str
    runs: tuple[str, ...]
    width: str = "auto"
    tokens: tuple[str, ...] = ()
    steps: tuple[int, ...] | None = None
    layer: str = "all"
    phase: str = "sample"
    metric: str | None = None
    role: str | None = None
    by: str = "method"

    @property
    def cli_width(self) -> str:
        return self.figure.figure_width

    @property
    def figure(self):
        """The one figure spec: only the fields that matter for this kind are set (the rest keep the defaults)."""

        common = {"kind": self.kind, "sources": self.runs, "by": self.by,
                  "width": None if self.width == "auto" else self.width}
        if self.kind == "maps":
            return FigureSpec(**common, tokens=self.tokens, steps=self.steps, layer=self.layer or "all",
                              phase=self.phase)
        if self.kind == "curves":
            return FigureSpec(**common, metrics=(str(self.metric),) if self.metric else (), role=self.role,
                              layer=self.layer or "all", phase=self.phase)
        if self.kind == "layers":
            return FigureSpec(**common, metrics=(str(self.metric),) if self.metric else (), role=self.role,
                              phase=self.phase)
        return FigureSpec(**common)

    @property
    def file_name(self) -> str:
        what = {"maps": "maps", "curves": f"curves-{self.metric}", "layers": f"layers-{self.metric}",
                "losses": "losses"}[self.kind]
        return f"attnlens-{what}.{self.fmt}".replace("/", "_")


def export_command(spec: ExportSpec) -> str:
    """The ``attnlens figure`` command line that builds the same figure spec and makes the same file."""
    return " ".join(shlex.quote(a) for a in ["attnlens", "figure", *spec.figure.cli_args(spec.file_name)])


def export_figure(spec: ExportSpec) -> bytes:
    """The file's bytes, drawn by ``attnlens.figures.draw`` from the same :class:`~attnlens.figures.FigureSpec` as
    ``attnlens figure`` builds for :func:`export_command` (PDF/PNG are byte-for-byte deterministic, so they equal
    the CLI's file)."""

    if not spec.runs:
        raise AttnlensError("no complete run to draw", hint="select runs that finished recording")
    return figure_bytes(spec.figure, spec.fmt)


__all__ = [
    "ExportSpec", "FILTERS", "MapCache", "RunEntry", "TableResult", "column_labels", "comparison", "comparison_frame",
    "curve_rows", "default_tokens", "entry_by_rel", "export_command", "export_figure", "filter_entries",
    "filter_values", "head_count", "image_array", "known_parses", "layer_choices", "layer_step_matrix",
    "leakage_matrix", "leakage_table", "loss_rows", "metric_table", "open_run", "parse_of", "parse_rows", "read_maps",
    "records", "roles_for", "run_key", "scan_root", "token_choices", "token_maps", "unit_runs",
    "units",
]
