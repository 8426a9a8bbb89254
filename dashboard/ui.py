"""The Streamlit page of ``attnlens dashboard`` (see ``docs/dashboard.md``).

Structure of one script run:

1. the root (``--root`` after ``--`` on the ``streamlit run`` line, else ``$ATTNLENS_DASHBOARD_ROOT``);
2. the view state: read from the URL query once per session (:class:`dashboard.state.ViewState`), kept in
   ``st.session_state``, and written back to the URL at the end of every run (so a view can be shared);
3. the sidebar: run browser filters, counts, error cards of broken runs;
4. the (prompt, seed) unit and its columns (one per recorded method), the map controls (layer, phase, head,
   iteration, step) and one view: Compare, Metrics, Across prompts or Runs.

Everything read from the stores is cached in the server process, keyed by the run's path and its
:func:`dashboard.data.run_key` (manifest mtime and size), so a run that changes on disk is read again and nothing
else is: opened runs, run infos, parses, images and metric tables with ``st.cache_resource`` (shared, read-only),
the run index and exported files with ``st.cache_data``, and the maps in a :class:`dashboard.data.MapCache` (every
recorded step of the layer on view). The step and what depends on it form a fragment (``st.fragment``). In the
Compare view the step is not a Streamlit widget but the step player (``dashboard/step_player/index.html``, a custom
component in plain HTML/JS): it receives the maps of every recorded step once per selection and swaps them in the
browser, then reports the step (debounced) so that the URL, the export panel and the Metrics view follow; the Metrics
view keeps a Streamlit slider.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import streamlit as st

from attnlens import analysis as A
from attnlens import figures as F
from attnlens.analysis import METRIC_INFO, METRICS
from attnlens.compare import caption, render
from attnlens.figures import short_layer

from . import data as D
from . import plots as P
from .paths import UnsafePath, relative_name, resolve_root, resolve_under
from .state import (
    BY,
    EXPORT_FORMATS,
    EXPORT_KINDS,
    EXPORT_STEPS,
    EXPORT_WIDTHS,
    SCALES,
    VIEW_LABELS,
    VIEWS,
    ViewState,
    query_equal,
    query_problems,
)

ROOT_ENV = "ATTNLENS_DASHBOARD_ROOT"
_VS = "_attnlens_view"
_URL_NOTES = "_attnlens_url_notes"
_URL_FIELDS = "_attnlens_url_fields"
PLAYER_DIR = Path(__file__).resolve().with_name("step_player")  # the step player's index.html
PLAYER_KEY = "step_player"
_ACK = "_attnlens_player_ack"
MIME = {"pdf": "application/pdf", "png": "image/png", "csv": "text/csv", "md": "text/markdown", "tex": "text/x-tex"}


def root_from_args(argv: Sequence[str]) -> str | None:
    """``--root PATH`` or ``--root=PATH`` among the script's arguments (those after ``--``)."""
    for i, a in enumerate(argv):
        if a == "--root" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--root="):
            return a.split("=", 1)[1]
    return None


# ------------------------------------------------------------------------------------------------------ caches
@st.cache_data(ttl=3, show_spinner=False, max_entries=8)
def _scan(root: str, nonce: int) -> list[D.RunEntry]:
    return D.scan_root(root)


@st.cache_resource(show_spinner=False, max_entries=1024)
def _run(path: str, key: str):
    return D.open_run(path)


@st.cache_resource(show_spinner=False, max_entries=1024)
def _info(path: str, key: str) -> dict[str, Any]:
    """Layers, resolutions, heads per layer, timesteps and records of a run (one read per run version; shared,
    read-only)."""
    run = _run(path, key)
    res = {name: tuple(int(v) for v in hw) for name, hw in run.resolutions().items()}
    heads = {name: D.head_count(run, name) for name in run.layers}
    try:
        ts = np.asarray(run.timesteps(), dtype=np.float64) if run.layers else np.zeros(0)
    except Exception:  # noqa: BLE001
        ts = np.zeros(0)
    return {"resolutions": res, "heads": heads, "timesteps": ts, "records": D.records(run)}


@st.cache_resource(show_spinner=False)
def _map_cache() -> D.MapCache:
    """The process-wide map cache (every recorded step of the layers on view, read in the background)."""
    return D.MapCache()


def _maps(path: str, key: str, layer: str, step: int, phase: str, it: int, head: int | None) -> np.ndarray | None:
    """``(token, h, w)`` maps of a run at (layer, step, phase, iteration, head), or None if not recorded."""
    steps = [s for s, its in _info(path, key)["records"].get(phase, {}).items() if it in its]
    return _map_cache().get(_run(path, key), (path, key, layer, phase, it, head), steps, step)


def _frames_reader(path: str, key: str, layer: str, phase: str, it: int, head: int | None, steps: list[int],
                   parse, tokens: list[str]):
    """A no-argument callable (run off the script thread) reading every recorded step of a run at once
    (:meth:`dashboard.data.MapCache.get_all`) and returning ``{step: [scaled map per token]}``."""
    run, cache = _run(path, key), _map_cache()

    def read() -> dict[int, list[np.ndarray]]:
        got = cache.get_all(run, (path, key, layer, phase, it, head), steps)
        if got is None:
            return {}
        index, arr = got
        return {s: [P.scaled_map(m) for m in D.token_maps(arr[index[s]], parse, tokens)] for s in steps}

    return read


def _run_all(calls: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """Call every callable, concurrently when there are several; exceptions are returned, not raised."""
    def safe(fn):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001
            return exc

    if len(calls) <= 1:
        return {k: safe(fn) for k, fn in calls.items()}

    with ThreadPoolExecutor(max_workers=min(8, len(calls)), thread_name_prefix="attnlens-dashboard-read") as pool:
        futures = {k: pool.submit(safe, fn) for k, fn in calls.items()}
        return {k: f.result() for k, f in futures.items()}


@st.cache_resource(show_spinner=False, max_entries=1024)
def _visual(path: str, key: str) -> tuple[bool, bytes, str]:
    """(has an image, the page's JPEG of the final image, the grey under-layer of the maps as a data URI)."""
    img = D.image_array(_run(path, key))
    return img is not None, P.to_jpeg(P.upscale_image(img)), P.data_uri(P.to_jpeg(P.under_image(img)), "image/jpeg")


@st.cache_resource(show_spinner="Parsing the prompt ...", max_entries=1024)
def _parse(path: str, key: str, known_json: str):
    """The run's parse (an immutable ``attnlens.parse.Parse``, shared)."""
    known = json.loads(known_json) if known_json else None
    return D.parse_of(_run(path, key), known)


@st.cache_resource(show_spinner=False, max_entries=64)
def _table(runs: tuple[tuple[str, str], ...], phase: str, partial: bool = True,
           metrics: tuple[str, ...] | None = None, layers: tuple[str, ...] | None = None) -> D.TableResult:
    """Metric table of runs (shared, not copied: callers copy before changing it)."""
    return D.metric_table([p for p, _ in runs], phase=phase, partial=partial,
                          metrics=list(metrics) if metrics else None, layers=list(layers) if layers else None)


@st.cache_data(show_spinner=False, max_entries=32)
def _export(spec: D.ExportSpec, keys: tuple[str, ...]) -> bytes:
    return D.export_figure(spec)


# ------------------------------------------------------------------------------------------------------ state
def _vs() -> ViewState:
    return st.session_state[_VS]


def _init_state() -> None:
    """Read the URL query once per session into the view state."""
    if _VS in st.session_state:
        return
    qp = st.query_params
    query = {k: qp.get_all(k) for k in qp.keys()}
    st.session_state[_VS] = ViewState.from_query(query)
    st.session_state[_URL_NOTES] = query_problems(query)
    st.session_state[_URL_FIELDS] = set(query)  # the fields the URL set: a stale one is reported once, then dropped


def _url_note(name: str, value: Any, instead: Any) -> None:
    """Report, once, that the URL's ``name=value`` does not exist under this root and what is shown instead."""
    given = st.session_state.get(_URL_FIELDS, set())
    if name in given and value is not None and value != [] and value != instead:
        given.discard(name)
        st.session_state.setdefault(_URL_NOTES, []).append(
            f"`{name}={value}` from the URL does not exist under this root; showing `{instead}` instead")


def _show_url_notes(box: Any) -> None:
    """The URL values that were refused, as one warning at the top of the page."""
    notes = st.session_state.get(_URL_NOTES) or []
    if notes:
        box.warning("Refused part of the URL: " + "; ".join(notes) + ".", icon=":material/link_off:")
        st.session_state[_URL_NOTES] = []  # said once; the URL is rewritten to what is shown


def _sync_url() -> None:
    """Write the view state to the URL query (only when it changed)."""
    q = _vs().to_query()
    qp = st.query_params
    current = {k: qp.get_all(k) for k in qp.keys()}
    if not query_equal(q, current):
        qp.from_dict(q)


def _widget(factory: Callable[..., Any], name: str, label: str, options: Sequence[Any] | None = None, *,
            default: Any = None, multi: bool = False, container: Any = None, **kwargs: Any) -> Any:
    """A widget bound to the view-state field ``name``: its value is checked against ``options`` (a stale value
    from the URL or from another selection falls back to ``default``), written to the widget's session key
    before it is drawn, and read back into the view state."""
    vs = _vs()
    cur = getattr(vs, name)
    if options is not None:
        opts = list(options)
        if multi:
            cur = [x for x in (cur or []) if x in opts]
            if not cur and default is not None:
                cur = [x for x in default if x in opts]
        elif cur not in opts:
            stale = cur
            cur = default if default in opts else (opts[0] if opts else None)
            _url_note(name, stale, cur)
    setattr(vs, name, cur)
    wkey = f"w_{name}"
    if st.session_state.get(wkey, object()) != cur:
        st.session_state[wkey] = cur

    def changed() -> None:
        setattr(_vs(), name, st.session_state[wkey])

    c = container if container is not None else st
    args = (label,) if options is None else (label, list(options))
    value = getattr(c, factory.__name__)(*args, key=wkey, on_change=changed, **kwargs)
    setattr(vs, name, value)
    return value


# ------------------------------------------------------------------------------------------------------ page
def main(argv: Sequence[str] | None = None) -> None:
    """One run of the page script (``$ATTNLENS_DASHBOARD_TIMING=1`` logs its duration to stderr)."""
    t0 = time.perf_counter()
    try:
        _main(argv)
    finally:
        if os.environ.get("ATTNLENS_DASHBOARD_TIMING"):
            print(f"attnlens-dashboard script run: {time.perf_counter() - t0:.3f} s", file=sys.stderr, flush=True)


def _main(argv: Sequence[str] | None = None) -> None:
    st.set_page_config(page_title="attnlens dashboard", page_icon=":material/visibility:", layout="wide")
    raw_root = root_from_args(list(sys.argv[1:] if argv is None else argv)) or os.environ.get(ROOT_ENV)
    if not raw_root:
        st.error("No root folder given. Start the dashboard with `attnlens dashboard ROOT`.")
        return
    try:
        root = resolve_root(raw_root)
    except OSError as exc:
        st.error(f"Cannot open the root: {exc}")
        return
    _init_state()
    st.session_state["_root"] = str(root)
    try:
        entries = _scan(str(root), st.session_state.get("_nonce", 0))
    except Exception as exc:  # noqa: BLE001
        st.error(f"Cannot list the runs under {root}: {exc}")
        return
    filtered = _sidebar(root, entries)
    st.markdown(f"#### attnlens · `{root}`")
    notes_box = st.container()  # filled at the end of the script run: the URL values refused on the way
    if not entries:
        st.info(f"No runs under `{root}` yet. Record some, e.g. "
                f"`attnlens record \"a red crown and a golden strawberry\" --method syngen --seed 1 --out {root}`, "
                "then press Refresh in the sidebar.")
        _show_url_notes(notes_box)
        _sync_url()
        return
    view = _widget(st.segmented_control, "view", "View", VIEWS, default="compare", format_func=VIEW_LABELS.get,
                   required=True, label_visibility="collapsed")
    if view == "runs":
        _runs_view(root, entries, filtered)
        _show_url_notes(notes_box)
        _sync_url()
        return
    if view == "across":
        _across_view(root, filtered)
        _show_url_notes(notes_box)
        _sync_url()
        return
    unit = _unit_selector(filtered)
    if unit is not None:
        prompt, seed, runs, labels = unit
        _unit_view(runs, labels, view)
    _show_url_notes(notes_box)
    _sync_url()


def _unit_view(runs: list[D.RunEntry], labels: dict[str, str], view: str) -> None:
    """The map controls of one (prompt, seed), then the stepped part of the Compare or Metrics view."""
    ctx = _map_controls(runs, labels, show_tokens=(view == "compare"))
    if ctx is None:
        return
    _stepped(ctx, view)
    if view == "compare":
        _parse_panel(ctx)


@st.fragment
def _stepped(ctx: "_Ctx", view: str) -> None:
    """The step and everything that depends on it: a fragment, so a step change reruns only this part of the page
    (the sidebar, the run index and the other controls are not redrawn). In Compare the step player (a custom
    component) moves the maps in the browser and reports the step here; in Metrics the same player moves the leakage
    matrices."""
    t0 = time.perf_counter()
    vs = _vs()
    if vs.step is not None and vs.step not in ctx.steps:
        _url_note("step", vs.step, ctx.steps[-1])
    ctx.step = vs.step = vs.step if vs.step in ctx.steps else ctx.steps[-1]
    if view == "compare":
        _compare_view(ctx)
    else:
        _metrics_view(ctx)
    _export_panel(ctx)
    _sync_url()
    if os.environ.get("ATTNLENS_DASHBOARD_TIMING"):
        print(f"attnlens-dashboard {view} view: {time.perf_counter() - t0:.3f} s", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------------ sidebar
def _sidebar(root: Path, entries: list[D.RunEntry]) -> list[D.RunEntry]:
    sb = st.sidebar
    sb.markdown("### Runs")
    n_inc = sum(1 for e in entries if not e.complete and not e.broken)
    n_bad = sum(1 for e in entries if e.broken)
    sb.caption(f"{len(entries)} run(s) under `{root}` · {n_inc} incomplete · {n_bad} unreadable")
    if sb.button("Refresh", help="Scan the root again (new or changed runs)."):
        _scan.clear()
        st.session_state["_nonce"] = st.session_state.get("_nonce", 0) + 1
        st.rerun()
    values = D.filter_values(entries)
    chosen = {}
    for f in D.FILTERS:
        chosen[f] = _widget(st.multiselect, f"f_{f}", f.capitalize(), values[f], multi=True, container=sb,
                            placeholder="all")
    filtered = D.filter_entries(entries, **chosen)
    sb.caption(f"{len(filtered)} run(s) match the filters")
    broken = [e for e in entries if e.broken]
    if broken:
        sb.markdown("**Unreadable runs**")
        for e in broken:
            sb.error(f"`{e.rel}`: {e.error}", icon=":material/error:")
    return filtered


def _status_badge(e: D.RunEntry, container: Any = st) -> None:
    if e.complete:
        return
    running = e.status == "running"
    container.badge(f"incomplete · {e.status}", icon=":material/hourglass_empty:" if running else ":material/error:",
                    color="orange" if running else "red")


# ------------------------------------------------------------------------------------------------------ unit
def _unit_selector(filtered: list[D.RunEntry]):
    us = D.units(filtered)
    if not us:
        st.info("No readable run matches the filters.")
        return None
    c1, c2, c3 = st.columns([4, 1, 5])
    prompt = _widget(st.selectbox, "prompt", "Prompt", list(us), container=c1)
    seed = _widget(st.selectbox, "seed", "Seed", us[prompt], container=c2)
    runs = D.unit_runs(filtered, prompt, seed)
    labels = D.column_labels(runs)
    options = [labels[e.rel] for e in runs]
    vs = _vs()
    wanted = [m for m in vs.methods if m in options] or options
    vs.methods = wanted
    chosen = _widget(st.pills, "methods", "Methods", options, default=options, multi=True, container=c3,
                     selection_mode="multi")
    chosen = [m for m in options if m in (chosen or [])] or options
    vs.methods = [] if chosen == options else chosen
    shown = [e for e in runs if labels[e.rel] in chosen]
    return prompt, seed, shown, labels


class _Ctx:
    """What the views share: the runs shown, their labels and infos, the parse, the map selection."""

    def __init__(self, **kw: Any):
        self.__dict__.update(kw)


def _map_controls(runs: list[D.RunEntry], labels: dict[str, str], show_tokens: bool) -> _Ctx | None:
    infos, errors = {}, {}
    for e in runs:
        try:
            infos[e.rel] = _info(str(e.path), e.key)
        except Exception as exc:  # noqa: BLE001  (a broken store: error card, the other runs go on)
            errors[e.rel] = f"{type(exc).__name__}: {exc}"
    readable = [e for e in runs if e.rel in infos]
    known = D.known_parses([_run(str(e.path), e.key) for e in readable])
    known_json = json.dumps(known, sort_keys=True) if known else ""
    parse = None
    parse_error = None
    for e in readable:
        try:
            parse = _parse(str(e.path), e.key, known_json)
            break
        except Exception as exc:  # noqa: BLE001
            parse_error = f"{type(exc).__name__}: {exc}"
    resolutions: dict[str, tuple[int, int]] = {}
    for e in readable:
        resolutions.update(infos[e.rel]["resolutions"])
    phases = [ph for ph in ("sample", "guidance", "sample_uncond", "noise_search")
              if any(ph in infos[e.rel]["records"] for e in readable)]
    if not readable or not resolutions or not phases:
        for rel, msg in errors.items():
            st.error(f"`{rel}`: cannot read this run ({msg})", icon=":material/error:")
        st.info("None of the selected runs has attention maps to show yet.")
        return None
    vs = _vs()
    tokens: list[str] = []
    label_of: dict[str, str] = {}
    if show_tokens:  # a row of its own: at 1280 px a column cut the token chips off after the second
        choices = D.token_choices(parse) if parse is not None else []
        label_of = dict(choices)
        default = D.default_tokens(parse) if parse is not None else []
        tokens = _widget(st.multiselect, "tokens", "Tokens", [v for v, _ in choices], default=default, multi=True,
                         format_func=lambda v: label_of.get(v, v))
        if tokens == default:  # the default stays out of the URL
            vs.tokens = []
    col = iter(st.columns([4, 2, 1.5, 1.5, 2]))
    layer_opts = D.layer_choices(resolutions)
    layer_label = dict(layer_opts)
    layer = _widget(st.selectbox, "layer", "Layer / resolution", [v for v, _ in layer_opts], default="all",
                    container=next(col), format_func=lambda v: layer_label.get(v, v))
    phase = _widget(st.selectbox, "phase", "Phase", phases, default="sample", container=next(col))
    n_heads = max((infos[e.rel]["heads"].get(layer, 1) for e in readable), default=1)
    head_opts = ["mean"] + [str(h) for h in range(n_heads)] if n_heads > 1 else ["mean"]
    head = _widget(st.selectbox, "head", "Head", head_opts, default="mean", container=next(col),
                   disabled=n_heads <= 1, help="Heads are selectable when they were recorded (--heads all) for a "
                   "single layer; aggregates use the head mean.")
    steps = sorted({s for e in readable for s in infos[e.rel]["records"].get(phase, {})})
    if not steps:
        st.info(f"No '{phase}' maps recorded in these runs.")
        return None
    iters = sorted({i for e in readable for its in infos[e.rel]["records"].get(phase, {}).values() for i in its}) or [0]
    it = _widget(st.selectbox, "it", "Iteration", iters, default=0, container=next(col), disabled=len(iters) <= 1,
                 help="Refinement iteration within a step (guidance phase; steps without it show nothing).")
    if show_tokens:
        _widget(st.radio, "scale", "Colour scale", SCALES, default="shared", container=next(col),
                format_func={"shared": "shared", "each": "per map"}.get, horizontal=True)
    return _Ctx(runs=runs, readable=readable, labels=labels, infos=infos, errors=errors, parse=parse,
                token_labels={v: (lab.split(" (")[0] if not v.startswith("#") else lab) for v, lab in label_of.items()},
                parse_error=parse_error, tokens=tokens, layer=layer, phase=phase,
                head=None if head == "mean" else int(head), it=int(it), step=None, steps=steps)


# ------------------------------------------------------------------------------------------------------ compare
def _parse_panel(ctx: _Ctx) -> None:
    parse = ctx.parse
    if parse is not None:
        rows, sets = D.parse_rows(parse)
        summary = "; ".join(s.split("  (")[0] for s in sets) if sets else "no modifier–noun set"
        with st.expander(f"Parse — {summary}"):
            st.markdown("**SynGen sets** (modifiers → noun, token positions):\n\n"
                        + ("\n".join(f"- {s}" for s in sets) if sets else "- (none)")
                        + "\n\n**Word pieces**\n\n" + _md_table(rows))
    elif ctx.parse_error:
        st.warning(f"No parse for this prompt ({ctx.parse_error}); word tokens are unavailable, pieces (#i) work.")


@st.cache_resource(show_spinner=False, max_entries=16)
def _frames(sig: tuple, _ctx: _Ctx) -> dict[str, Any]:
    """The step player's maps for one selection ``sig`` (runs and their keys, layer, phase, iteration, head, tokens,
    scale; ``_ctx`` is not hashed): ``{"cells": {rel: frames | error text | None}, "shared": (lo, hi), "id": ...}``
    where frames are :func:`dashboard.plots.step_frames`'s (one list of PNG data URIs per step, None where the run
    has no maps at that step) and None means no maps at any step. Built once per selection and shared (read-only);
    the runs are read concurrently, every step at once, with an error text per broken run."""
    ctx = _ctx
    tokens = list(ctx.tokens)
    cells: dict[str, Any] = {}
    readers: dict[str, Callable[[], Any]] = {}
    for e in ctx.runs:
        if e.rel in ctx.errors:
            cells[e.rel] = ctx.errors[e.rel]
            continue
        info = ctx.infos[e.rel]
        steps = sorted(int(s) for s, its in info["records"].get(ctx.phase, {}).items() if ctx.it in its)
        if not (steps and tokens and ctx.parse is not None):
            cells[e.rel] = None
            continue
        head = ctx.head if (ctx.head is not None and info["heads"].get(ctx.layer, 1) > ctx.head) else None
        readers[e.rel] = _frames_reader(str(e.path), e.key, ctx.layer, ctx.phase, ctx.it, head, steps, ctx.parse,
                                        tokens)
    maps = {}
    for rel, result in _run_all(readers).items():
        if isinstance(result, BaseException):
            cells[rel] = f"{type(result).__name__}: {result}"
        else:
            maps[rel] = result
    frames, shared = P.step_frames(maps, ctx.steps, sig[-1])
    cells.update(frames)
    return {"cells": cells, "shared": shared, "id": hashlib.sha1(repr(sig).encode()).hexdigest()[:16]}


def _frames_sig(ctx: _Ctx, scale: str) -> tuple:
    """What :func:`_frames` depends on (hashable; a run recorded again has another key)."""
    return (tuple((str(e.path), e.key, e.rel) for e in ctx.runs), tuple(sorted(ctx.errors.items())), ctx.layer,
            ctx.phase, ctx.it, ctx.head, tuple(ctx.tokens), tuple(ctx.steps), ctx.parse is not None, scale)


def _compare_view(ctx: _Ctx) -> None:
    """One column per run (its label, status badge, final image or error card), then the step player with the maps
    of every step (the step moves in the browser), then the colour bar."""
    tokens = list(ctx.tokens)
    scale = _vs().scale
    # 1. every step of every run (so the colour scale can be shared across runs and steps), once per selection
    fr = _frames(_frames_sig(ctx, scale), ctx)
    cells = fr["cells"]
    # 2. one column per run (at least four column widths, so that images keep a sensible size with few runs)
    ncols = max(len(ctx.runs), 4)
    columns = st.columns(ncols) if ctx.runs else []
    it_note = f", iteration {ctx.it}" if ctx.it else ""
    for col, e in zip(columns, ctx.runs):
        with col:
            st.markdown(f"**{ctx.labels[e.rel]}**")
            _status_badge(e)
            cell = cells.get(e.rel)
            if isinstance(cell, str):
                st.error(f"`{e.rel}`: cannot read this run ({cell})", icon=":material/error:")
                continue
            has_image, big, _ = _visual(str(e.path), e.key)
            st.image(big, caption="final image" if has_image else "no image yet", width="stretch",
                     output_format="JPEG")
            if not tokens:
                continue
            if cell is None:
                st.caption(f"no '{ctx.phase}' maps recorded" + it_note)
                continue
            missing = [s for s, f in zip(ctx.steps, cell) if f is None]
            if missing:
                st.caption(f"no '{ctx.phase}' maps at step{'s' if len(missing) > 1 else ''} "
                           f"{', '.join(str(s) for s in missing)}" + it_note)
    # 3. the maps of every step, moved in the browser
    if tokens and any(isinstance(v, list) for v in cells.values()):
        _step_player(ctx, fr, tokens, ncols)
        lo, hi = fr["shared"]
        st.image(P.colorbar(lo, hi), width=280)
        st.caption(("Shared colour scale (all runs, all steps)" if scale == "shared" else "Per-map colour scale")
                   + f" of attention × h·w (1 = uniform): {lo:.3g} → {hi:.3g}. Layer `{ctx.layer}`, phase "
                   f"`{ctx.phase}`" + (f", head {ctx.head}" if ctx.head is not None else ", head mean") + ".")
    elif not tokens:
        st.caption("Choose tokens to see their maps.")


def _player_component():
    """The step player (declared on every script run: registering the same component again is a no-op, and a new
    server runtime, e.g. a new AppTest, needs it registered)."""
    from streamlit.components.v1 import declare_component

    return declare_component("step_player", path=str(PLAYER_DIR))


def _player_changed() -> None:
    """The step player reported a step ``{"step", "seq"}`` (debounced): it becomes the view's step."""
    v = st.session_state.get(PLAYER_KEY)
    if not isinstance(v, dict):
        return
    try:
        st.session_state[_ACK] = int(v.get("seq") or 0)
        _vs().step = int(v["step"])
    except (KeyError, TypeError, ValueError):
        return


def _player_args(ctx: _Ctx, fr: dict[str, Any], tokens: Sequence[str], ncols: int, ack: int) -> dict[str, Any]:
    """The step player's arguments (JSON): the frames of every column, the grey images, labels, timesteps, the step
    to show and ``ack`` (the last report processed, so the player can tell a stale echo from a step change)."""
    columns: list[dict[str, Any] | None] = []
    for e in ctx.runs:
        cell = fr["cells"].get(e.rel)
        if isinstance(cell, str):
            columns.append(None)
            continue
        ts = ctx.infos[e.rel]["timesteps"]
        _, _, under = _visual(str(e.path), e.key)
        columns.append({"label": ctx.labels[e.rel], "under": under, "frames": cell,
                        "t": [int(ts[s]) if s < len(ts) and np.isfinite(ts[s]) else None for s in ctx.steps]})
    return {"frames_id": fr["id"], "step": int(ctx.step), "ack": int(ack), "steps": [int(s) for s in ctx.steps],
            "tokens": [ctx.token_labels.get(t, t) for t in tokens], "ncols": ncols, "columns": columns,
            "phase": ctx.phase, "it": int(ctx.it)}


def _step_player(ctx: _Ctx, fr: dict[str, Any], tokens: Sequence[str], ncols: int) -> None:
    args = _player_args(ctx, fr, tokens, ncols, st.session_state.get(_ACK, 0))
    _player_component()(key=PLAYER_KEY, on_change=_player_changed, default=None, **args)


def _md_table(rows: list[dict[str, Any]]) -> str:
    """A small Markdown table (lighter in the browser than a data grid)."""
    if not rows:
        return ""
    cols = list(rows[0])

    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ metrics
def _keys(runs: Sequence[D.RunEntry]) -> tuple[tuple[str, str], ...]:
    return tuple((str(e.path), e.key) for e in runs)


def _metric_pickers(metrics: Sequence[str], roles_of: Callable[[str], list[str]], container: Any = None):

    c1, c2 = (container or st).columns(2)
    metric = _widget(st.selectbox, "metric", "Metric", list(metrics), default="jsd" if "jsd" in metrics else None,
                     container=c1,
                     format_func=lambda m: f"{m} — {METRIC_INFO.get(m, {}).get('description', '')}"[:90])
    roles = roles_of(metric) if metric else []
    role = _widget(st.selectbox, "role", "Role", roles, default=roles[0] if roles else None, container=c2)
    return metric, role


@st.cache_resource(show_spinner=False, max_entries=128)
def _metric_figures(runs: tuple[tuple[str, str], ...], phase: str, metric: str, role: str | None, layer: str,
                    labels: tuple[tuple[str, str], ...], all_labels: tuple[str, ...]) -> dict[str, Any]:
    """The step-independent metric figures of a unit as figure dicts (built once per selection; a slider move
    only adds the step marker): curves, layer × step panels and loss terms, or None where there is no data."""
    import pandas as pd


    frames = [r.df for r in (_table(runs, phase, True, (metric,)), _table(runs, phase, True, ("scalar/*",)))
              if r.df is not None and len(r.df)]
    if not frames:
        return {"curves": None, "layers": None, "losses": None, "layers_fig": None, "losses_fig": None}
    label_of = dict(labels)
    df = pd.concat(frames, ignore_index=True)
    df["column"] = df["run"].map(lambda p: label_of.get(str(p), str(p)))
    colors = P.group_colors(list(all_labels))  # every run of the unit: a method keeps its colour
    out: dict[str, Any] = {}
    rows = D.curve_rows(df, metric, role, layer, phase)
    out["curves"] = (P.curves_plot(F.step_curves(rows, by="column"), ylabel=f"{metric} [{role}]", colors=colors)
                     .to_dict() if len(rows) else None)
    panels, res_of = {}, {}
    for path, _ in runs:
        g = label_of.get(path, path)
        layers, steps, m = D.layer_step_matrix(df, metric, role, phase, g, by="column")
        if len(layers):
            panels[g] = (layers, steps, m)
    if panels:

        res_rows = df.drop_duplicates("layer")[["layer", "resolution"]]
        res_of = dict(zip(res_rows["layer"], res_rows["resolution"]))
        names = {x: f"{short_layer(x)} ({res_of.get(x, '?')})" for p in panels.values() for x in p[0]}
        out["layers"] = P.heatmap_panels(panels, label=metric, row_labels=names).to_dict()
    else:
        out["layers"] = None
    terms = D.loss_rows(df)
    data = {t: F.step_curves(r, by="column") for t, r in terms.items() if len(r)}
    out["losses"] = P.losses_plot(data, colors=colors).to_dict() if data else None
    out["layers_fig"] = P.mark_step(out["layers"], None) if out["layers"] is not None else None
    out["losses_fig"] = P.mark_step(out["losses"], None) if out["losses"] is not None else None
    return out


def _metrics_view(ctx: _Ctx) -> None:
    """Metric curves, leakage, layer × step and loss terms of the unit's runs. Only the chosen metric is analysed
    (``attnlens.analysis.load_table`` with that metric, every layer; the loss terms separately), once per
    (runs, phase, metric)."""

    runs = ctx.readable
    keys = _keys(runs)
    metric, role = _metric_pickers(list(METRICS), D.roles_for)
    with st.spinner(f"Analysing {len(runs)} run(s): {metric}, phase {ctx.phase} ..."):
        res = _table(keys, ctx.phase, True, (metric,))
        labels = tuple((str(e.path), ctx.labels[e.rel]) for e in runs)
        figs = _metric_figures(keys, ctx.phase, metric, role, ctx.layer, labels, tuple(ctx.labels.values()))
    for p, msg in res.errors.items():
        st.error(f"`{_rel(p)}`: cannot analyse this run ({msg})", icon=":material/error:")
    for note in res.notes:
        st.caption(f"note: {note}")
    # the leakage matrices need a column per entity (plus "outside") per run: beside the curves only for 1–2 runs,
    # else below them at full width (at 1600 px four runs' matrices overlapped in half the page)
    left, right = st.columns(2) if len(ctx.readable) <= 2 else (st.container(), st.container())
    with left:
        st.markdown(f"**{metric} [{role}] vs step** · layer `{ctx.layer}` · phase `{ctx.phase}`")
        if figs["curves"] is not None:
            st.plotly_chart(P.mark_step(figs["curves"], ctx.step), width="stretch", key="curves",
                            config=P.PLOTLY_CONFIG)
        else:
            st.info(f"No '{metric}' rows at layer {ctx.layer}, phase {ctx.phase}.")
    with right:
        st.markdown(f"**Leakage**: share of each modifier's attention on each entity's region "
                    f"(✓ its own noun; `outside` = on no entity) · layer `{ctx.layer}`")
        _leakage(ctx)
    st.markdown(f"**Layer × step: {metric} [{role}]** (mean over tokens; phase `{ctx.phase}`; all steps)")
    if figs["layers"] is not None:
        # no step marker here: an unchanged figure is not redrawn by the browser when the slider moves
        st.plotly_chart(figs["layers_fig"], width="stretch", key="layers", config=P.PLOTLY_CONFIG)
    else:
        st.info(f"'{metric}' has no per-layer rows.")
    st.markdown("**Guidance loss terms per step** (first guidance iteration of each step)")
    if figs["losses"] is not None:
        st.plotly_chart(figs["losses_fig"], width="stretch", key="losses", config=P.PLOTLY_CONFIG)
    else:
        st.info("No loss terms: only guided runs log them.")


def _leakage_reader(path: str, key: str, layer: str, phase: str, it: int, steps: list[int], parse,
                    all_steps: list[int]):
    """A no-argument callable reading every recorded step of a run at once and returning its leakage tables (one
    per step of ``all_steps``, None where the run has no maps), or None when the prompt has no modifier–noun set."""
    run, cache = _run(path, key), _map_cache()

    def read() -> list[dict[str, Any] | None] | None:
        got = cache.get_all(run, (path, key, layer, phase, it, None), steps)
        if got is None:
            return [None] * len(all_steps)
        index, arr = got
        out: list[dict[str, Any] | None] = []
        for s in all_steps:
            if s not in index:
                out.append(None)
                continue
            df, own = D.leakage_matrix(arr[index[s]].astype(np.float64), parse)
            if df is None:
                return None
            out.append(D.leakage_table(df, own))
        return out

    return read


@st.cache_resource(show_spinner=False, max_entries=16)
def _leakage_frames(sig: tuple, _ctx: _Ctx) -> dict[str, Any]:
    """The leakage matrices (:func:`dashboard.data.leakage_matrix`) of every recorded step of every run for one
    selection ``sig`` (``_ctx`` is not hashed), as the step player's tables: ``{"cells": {rel: [table | None per
    step] | error text | None}, "no_set": bool, "id": ...}``. Built once per selection, the runs read concurrently."""
    ctx = _ctx
    cells: dict[str, Any] = {}
    readers: dict[str, Callable[[], Any]] = {}
    for e in ctx.readable:
        have = ctx.infos[e.rel]["records"].get(ctx.phase, {})
        steps = [s for s in ctx.steps if s in have and ctx.it in have[s]]
        if not steps:
            cells[e.rel] = None
            continue
        readers[e.rel] = _leakage_reader(str(e.path), e.key, ctx.layer, ctx.phase, ctx.it, steps, ctx.parse,
                                         list(ctx.steps))
    no_set = False
    for rel, result in _run_all(readers).items():
        if isinstance(result, BaseException):
            cells[rel] = f"{type(result).__name__}: {result}"
        elif result is None:
            no_set = True
        else:
            cells[rel] = result
    return {"cells": cells, "no_set": no_set, "id": "leak-" + hashlib.sha1(repr(sig).encode()).hexdigest()[:16]}


def _leakage(ctx: _Ctx) -> None:
    """The leakage matrices of every step in the step player (the step moves in the browser, as in Compare)."""
    if ctx.parse is None:
        st.info("No parse: leakage needs the prompt's modifiers and nouns.")
        return
    sig = ("leakage", tuple((str(e.path), e.key, e.rel) for e in ctx.readable), ctx.layer, ctx.phase, ctx.it,
           tuple(ctx.steps))
    with st.spinner("Leakage at every step ..."):
        fr = _leakage_frames(sig, ctx)
    if fr["no_set"]:
        st.info("The prompt has no modifier–noun set: no leakage matrix.")
        return
    columns: list[dict[str, Any] | None] = []
    for e in ctx.readable:
        cell = fr["cells"].get(e.rel)
        if isinstance(cell, str):
            st.error(f"`{e.rel}`: cannot compute the leakage ({cell})", icon=":material/error:")
        if not isinstance(cell, list):
            continue
        ts = ctx.infos[e.rel]["timesteps"]
        columns.append({"label": ctx.labels[e.rel], "tables": cell,
                        "t": [int(ts[s]) if s < len(ts) and np.isfinite(ts[s]) else None for s in ctx.steps]})
    if not columns:
        st.info(f"No '{ctx.phase}' maps to measure leakage on.")
        return
    args = {"frames_id": fr["id"], "step": int(ctx.step), "ack": int(st.session_state.get(_ACK, 0)),
            "steps": [int(s) for s in ctx.steps], "tokens": [], "ncols": len(columns), "columns": columns,
            "phase": ctx.phase, "it": int(ctx.it)}
    _player_component()(key=PLAYER_KEY, on_change=_player_changed, default=None, **args)


# ------------------------------------------------------------------------------------------------------ across
def _across_view(root: Path, filtered: list[D.RunEntry]) -> None:

    runs = [e for e in filtered if e.complete]
    st.markdown(f"**Across prompts**: paired comparison over the (prompt, seed) units of the {len(runs)} complete "
                "run(s) matching the filters (`attnlens compare`; 95 % bootstrap intervals, 2000 resamples).")
    if not runs:
        st.info("No complete run matches the filters.")
        return
    metric, role = _metric_pickers(list(A.METRICS), D.roles_for)
    c1, c2, c3 = st.columns(3)
    resolutions: dict[str, tuple[int, int]] = {}
    for e in runs[:8]:
        try:
            resolutions.update(_info(str(e.path), e.key)["resolutions"])
        except Exception:  # noqa: BLE001
            continue
    layer_opts = D.layer_choices(resolutions) or [("all", "all")]
    layer_label = dict(layer_opts)
    layer = _widget(st.selectbox, "layer", "Layer / resolution", [v for v, _ in layer_opts], default="all",
                    container=c1, format_func=lambda v: layer_label.get(v, v))
    phase = _widget(st.selectbox, "phase", "Phase", ["sample", "guidance", "sample_uncond", "noise_search"], default="sample",
                    container=c2)
    by = _widget(st.radio, "by", "Group by", BY, default="method", container=c3, horizontal=True)
    with st.spinner(f"Analysing {len(runs)} run(s): {metric} at {layer} ..."):
        res = _table(_keys(runs), phase, False, (metric,), (layer,))
    for p, msg in res.errors.items():
        st.error(f"`{_rel(p)}`: cannot analyse this run ({msg})", icon=":material/error:")
    try:
        c = D.comparison(res.df, metric=metric, role=role, layer=layer, phase=phase, by=by)
    except Exception as exc:  # noqa: BLE001  (AttnlensError: nothing to compare for this selection)
        st.warning(f"Nothing to compare: {getattr(exc, 'message', exc)}")
        return
    st.dataframe(D.comparison_frame(c), hide_index=True, width="stretch")
    st.caption(caption(c))
    for note in c.notes:
        st.caption(f"note: {note}")
    d1, d2, d3, _ = st.columns([1, 1, 1, 3])
    stem = f"compare-{metric}-{role}".replace("/", "_")
    d1.download_button("CSV", render(c, "csv"), file_name=f"{stem}.csv", mime=MIME["csv"])
    d2.download_button("Markdown", render(c, "markdown"), file_name=f"{stem}.md", mime=MIME["md"])
    d3.download_button("LaTeX", render(c, "latex"), file_name=f"{stem}.tex", mime=MIME["tex"])
    if len(runs) == len([e for e in _scan(str(root), st.session_state.get("_nonce", 0)) if e.complete]):
        cmd = (f"attnlens compare {root} --metric {metric}" + (f" --role {role}" if role else "")
               + f" --layers {layer} --phase {phase} --by {by}")
        st.code(cmd, language="bash")


# ------------------------------------------------------------------------------------------------------ runs
def _runs_view(root: Path, entries: list[D.RunEntry], filtered: list[D.RunEntry]) -> None:
    import pandas as pd

    st.markdown(f"**{len(filtered)} run(s)** match the filters (of {len(entries)}).")
    rows = [{"status": ("✓ " if e.complete else "⚠ incomplete: " if not e.broken else "✗ ") + e.status,
             "prompt": e.prompt, "seed": e.seed, "method": e.method, "variant": e.variant, "model": e.model,
             "steps": e.steps, "path": e.rel, "error": e.error} for e in filtered]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    vs = _vs()
    if vs.run:
        try:
            target = resolve_under(root, vs.run)
            vs.run = relative_name(root, target)
        except UnsafePath as exc:
            st.warning(f"Refused `run={vs.run}` from the URL: {exc}. Only runs under the root can be opened.")
            vs.run = None
    rels = [e.rel for e in filtered]
    if vs.run and vs.run not in rels:
        st.warning(f"`{vs.run}` is not a run listed under the root (or the filters hide it).")
        vs.run = None
    if not rels:
        return
    rel = _widget(st.selectbox, "run", "Run details", rels, default=rels[0])
    e = D.entry_by_rel(entries, rel)
    if e is None:
        return
    _status_badge(e)
    if e.broken:
        st.error(f"`{e.rel}`: {e.error}", icon=":material/error:")
        return
    st.button(f"Compare the methods of this prompt and seed ({e.seed})", on_click=_open_unit, args=(e.prompt, e.seed))
    try:
        st.json(D.open_run(e.path).summary(), expanded=1)
    except Exception as exc:  # noqa: BLE001
        st.error(f"`{e.rel}`: cannot read this run ({type(exc).__name__}: {exc})", icon=":material/error:")


def _open_unit(prompt: str | None, seed: int | None) -> None:
    vs = _vs()
    vs.view, vs.prompt, vs.seed, vs.methods = "compare", prompt, seed, []


def _rel(path: str) -> str:
    """A run folder as the page names it: relative to the root."""
    root = st.session_state.get("_root")
    try:
        return relative_name(root, path) if root else str(path)
    except ValueError:
        return str(path)


# ------------------------------------------------------------------------------------------------------ export
def _export_panel(ctx: _Ctx) -> None:
    vs = _vs()
    if not st.toggle("Export figure", key="export_open",
                     help="Download the PDF/PNG that `attnlens figure` makes for this selection."):
        return
    with st.container(border=True):
        c1, c2, c3, c4 = st.columns(4)
        kind = _widget(st.radio, "export_kind", "Figure", EXPORT_KINDS, default="maps", container=c1, horizontal=True)
        fmt = _widget(st.radio, "export_format", "Format", EXPORT_FORMATS, default="pdf", container=c2,
                      horizontal=True)
        width = _widget(st.radio, "export_width", "Width", EXPORT_WIDTHS, default="auto", container=c3,
                        horizontal=True)
        steps_mode = _widget(st.radio, "export_steps", "Map columns", EXPORT_STEPS, default="current", container=c4,
                             horizontal=True, disabled=kind != "maps",
                             format_func={"current": "current step", "spread": "5 steps"}.get)
        complete = [e for e in ctx.readable if e.complete]
        left_out = [ctx.labels[e.rel] for e in ctx.runs if not e.complete]
        if left_out:
            st.caption(f"Incomplete runs are left out, as `attnlens figure` does without --partial: "
                       f"{', '.join(left_out)}.")
        words = [t for t in ctx.tokens if not t.startswith("#")]
        if kind == "maps" and len(words) < len(ctx.tokens):
            st.caption("Word pieces (#i) are not drawn by `attnlens figure maps`; only the selected words are.")
        metric, role = vs.metric, vs.role
        if kind in ("curves", "layers") and metric not in _all_metrics():
            metric = "jsd"
        if kind in ("curves", "layers") and role not in D.roles_for(metric):
            role = (D.roles_for(metric) or [None])[0]
        spec = D.ExportSpec(kind=kind, fmt=fmt, runs=tuple(str(e.path) for e in complete), width=width,
                            tokens=tuple(words) if kind == "maps" else (),
                            steps=(ctx.step,) if kind == "maps" and steps_mode == "current" else None,
                            layer=ctx.layer, phase=ctx.phase, metric=metric if kind in ("curves", "layers") else None,
                            role=role if kind in ("curves", "layers") else None, by=vs.by)
        problem = _export_problem(spec, ctx)
        if problem:
            st.info(problem)
            return
        keys = tuple(e.key for e in complete)
        st.download_button(f"Export figure ({fmt.upper()})", data=lambda: _export(spec, keys),
                           file_name=spec.file_name, mime=MIME[fmt], type="primary", key="export_button")
        st.code(D.export_command(spec), language="bash")


def _all_metrics() -> tuple[str, ...]:

    return METRICS


def _export_problem(spec: D.ExportSpec, ctx: _Ctx) -> str | None:
    """Why this export cannot be drawn (checked before offering the button), or None."""
    if not spec.runs:
        return "No complete run is selected: nothing to export."
    if spec.kind == "maps":
        for e in ctx.readable:
            if e.complete and spec.steps and spec.steps[0] not in ctx.infos[e.rel]["records"].get(spec.phase, {}):
                return f"Step {spec.steps[0]} has no '{spec.phase}' maps in {ctx.labels[e.rel]}."
        if len(spec.runs) > 12:
            return "Too many runs for a maps figure (12 at most): deselect some methods."
    if spec.kind == "losses" and not any((e.method or "none") != "none" for e in ctx.readable if e.complete):
        return "Only guided runs log loss terms: select a guided method."
    return None


__all__ = ["ROOT_ENV", "main", "root_from_args"]
