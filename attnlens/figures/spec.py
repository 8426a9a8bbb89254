"""One figure spec and one ``draw(spec)``: what ``attnlens figure`` and the dashboard's "Export figure" both call.

A :class:`FigureSpec` holds everything that decides a figure (kind, sources, metrics, roles, layer, phase, steps,
tokens, baseline, width, ...); :func:`draw` loads exactly the data the figure needs from the sources (run folders,
roots or ``metrics.parquet`` files) and hands it to the figure function of that kind (``curves``, ``layers``,
``losses``, ``maps``). :meth:`FigureSpec.cli_args` is the ``attnlens figure`` command line that builds the same
spec, so the dashboard can show it and a test can replay it.
"""

from __future__ import annotations

import difflib
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Sequence

from matplotlib.figure import Figure

from ..analysis import HEADLINE, discover_runs, load_table
from ..errors import BadOption, EmptySelection
from ..selection import step_filter
from .curves import curves_figure
from .layers import layers_figure
from .losses import losses_figure
from .maps import maps_figure
from .style import FORMATS, KINDS, figure_width, save_figure

#: the most runs a maps figure shows (one row per run and word)
MAX_MAP_RUNS = 12
ITERATIONS = ("first", "last", "mean")


def _tuple(value: Any) -> tuple:
    if value is None:
        return ()
    if isinstance(value, (str, Path, int)):
        value = [value]
    out: list = []
    for v in value:
        out += [x.strip() for x in str(v).split(",") if x.strip()] if isinstance(v, str) else [v]
    return tuple(out)


@dataclass(frozen=True)
class FigureSpec:
    """What to draw. Defaults are the CLI's defaults.

    * ``kind``: ``maps`` | ``curves`` | ``layers`` | ``losses``; ``sources``: run folders, roots or Parquet tables
      (maps: run folders/roots only).
    * ``metrics``: curves: any number (default: the headline set of :data:`attnlens.analysis.HEADLINE`, each with
      its role; with ``role`` given, the headline metrics of that role); layers: exactly one.
    * ``role``, ``by`` (``method`` | ``variant``), ``layer`` (None: ``all``), ``phase``, ``tokens`` (maps: the words
      shown; otherwise the tokens kept), ``steps`` (a selection such as ``0:25``, ``::5``, ``0,10,20``, or a
      sequence of steps; maps: the columns, default five spread steps), ``baseline`` (curves: plot each group
      minus this one), ``terms`` and ``iteration`` (losses), ``groups`` (layers: panels), ``width`` (``column``,
      ``page`` or inches; None: column for curves, page otherwise), ``partial`` (include incomplete runs).
    """

    kind: str
    sources: tuple[str, ...]
    metrics: tuple[str, ...] = ()
    role: str | None = None
    by: str = "method"
    layer: str | None = None
    phase: str = "sample"
    tokens: tuple[str, ...] = ()
    steps: str | None = None
    baseline: str | None = None
    terms: tuple[str, ...] = ()
    iteration: str = "first"
    groups: tuple[str, ...] = ()
    width: str | None = None
    partial: bool = False

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "sources", tuple(str(s) for s in _tuple(self.sources)))
        for name in ("metrics", "tokens", "terms", "groups"):
            set_(self, name, tuple(str(x) for x in _tuple(getattr(self, name))))
        if self.steps is not None and not isinstance(self.steps, str):
            set_(self, "steps", ",".join(str(int(s)) for s in _tuple(self.steps)) or None)
        if self.width is not None:
            set_(self, "width", str(self.width))
        if self.layer == "":
            set_(self, "layer", None)

    # -------------------------------------------------------------------------------------------- checks
    def check(self) -> FigureSpec:
        """Validate what can be checked before loading any data (raises :class:`BadOption`); returns self."""
        if self.kind not in KINDS:

            close = difflib.get_close_matches(self.kind, KINDS, n=1)
            raise BadOption(f"unknown figure kind '{self.kind}'",
                            hint=(f"did you mean {close[0]}? " if close else "") + f"kinds: {', '.join(KINDS)}")
        if not self.sources:
            raise BadOption("no source given", hint=f"attnlens figure {self.kind} runs/ --out figure.pdf")
        figure_width(self.figure_width)
        if self.kind == "layers" and len(self.metrics) != 1:
            raise BadOption("layers needs exactly one --metric", hint="e.g. --metric entropy --role noun")
        if self.kind == "losses" and self.iteration not in ITERATIONS:
            raise BadOption(f"unknown iteration '{self.iteration}'", hint=", ".join(ITERATIONS))
        if self.baseline is not None and self.kind != "curves":
            raise BadOption(f"--baseline applies to curves, not {self.kind}", hint="drop --baseline")
        if self.kind == "maps":
            bad = [s for s in self.sources if s.endswith(".parquet")]
            if bad:
                raise BadOption(f"maps needs run folders, not a metrics table ('{bad[0]}')",
                                hint="pass the run folders to show (one per method)")
        return self

    @property
    def figure_width(self) -> str:
        """The width actually used: ``width``, or column for curves and page otherwise."""
        return self.width or ("column" if self.kind == "curves" else "page")

    # -------------------------------------------------------------------------------------------- CLI
    def cli_args(self, out: str | Path) -> list[str]:
        """The ``attnlens figure`` arguments (after ``attnlens figure``) that build this spec and write ``out``."""
        args = [self.kind, *self.sources, "--out", str(out)]
        default = FigureSpec(self.kind, self.sources)
        for f in fields(self):
            if f.name in ("kind", "sources"):
                continue
            value = getattr(self, f.name)
            if value == getattr(default, f.name):
                continue
            flag = "--" + {"metrics": "metric", "tokens": "token", "terms": "term", "groups": "group"}.get(
                f.name, f.name).replace("_", "-")
            if isinstance(value, bool):
                args.append(flag)
            elif isinstance(value, tuple):
                for v in value:
                    args += [flag, str(v)]
            else:
                args += [flag, str(value)]
        return args


# ------------------------------------------------------------------------------------------------ drawing
def headline_metrics(role: str | None = None, available: Sequence[str] | None = None) -> tuple[list[str], list]:
    """The headline (metric, role) pairs, optionally only those of ``role`` and of metrics in ``available``."""

    pairs = [(m, r) for m, r in HEADLINE if (role is None or r == role)
             and (available is None or m in available)]
    if not pairs:
        roles = sorted({r for _, r in HEADLINE})
        raise BadOption(f"no headline metric has role '{role}'" if role else "no headline metric in the data",
                        hint=f"pass --metric (headline roles: {', '.join(roles)})")
    return [m for m, _ in pairs], [r for _, r in pairs]


def _load(spec: FigureSpec, notes: list[str], **kwargs):

    df = load_table(list(spec.sources), partial=spec.partial, notes=notes, **kwargs)
    if not len(df):
        raise EmptySelection("no metric rows for this selection", hint="check --metric/--layer/--steps/--phase")
    return df


def select_steps(text: str | None, recorded: Sequence[int]) -> list[int] | None:
    """The recorded steps a selection keeps (None: no selection); a :class:`EmptySelection` if it keeps none."""
    if text is None:
        return None

    ok = step_filter(text)
    chosen = [s for s in recorded if ok(s)]
    if not chosen:
        raise EmptySelection(f"--steps {text} selects no recorded step",
                             hint=f"recorded: {recorded[0]}..{recorded[-1]}" if recorded else None)
    return chosen


def draw(spec: FigureSpec, notes: list[str] | None = None) -> Figure:
    """Load what ``spec`` needs and draw it. ``notes`` (a list) collects what was left out (incomplete runs,
    headline metrics missing from a table)."""
    spec.check()
    notes = [] if notes is None else notes
    w = spec.figure_width
    tokens = list(spec.tokens) or None
    if spec.kind == "maps":

        runs, found = discover_runs(list(spec.sources), partial=spec.partial)
        notes += found
        if len(runs) > MAX_MAP_RUNS:
            raise BadOption(f"{len(runs)} runs is too many rows for a maps figure",
                            hint="pass the run folders to show (one per method)")
        steps = select_steps(spec.steps, runs[0].recorded_steps(phase=spec.phase))
        return maps_figure(runs, tokens=tokens, steps=steps, layer=spec.layer or "all", phase=spec.phase, width=w)
    if spec.kind == "curves":

        if spec.metrics:
            metrics, roles = list(spec.metrics), spec.role
            df = _load(spec, notes, metrics=metrics, layers=[spec.layer or "all"], steps=spec.steps,
                       phases=[spec.phase])
        else:
            metrics, roles = headline_metrics(spec.role)
            df = _load(spec, notes, metrics=sorted(set(metrics)), layers=[spec.layer or "all"], steps=spec.steps,
                       phases=[spec.phase])
            have = set(df["metric"].unique())
            missing = [m for m in dict.fromkeys(metrics) if m not in have]
            if missing:
                notes.append(f"headline metric(s) without rows left out: {', '.join(missing)}")
            metrics, roles = headline_metrics(spec.role, available=have)
        return curves_figure(df, metrics, role=roles, by=spec.by, layer=spec.layer, phase=spec.phase, tokens=tokens,
                             width=w, baseline=spec.baseline)
    if spec.kind == "layers":

        df = _load(spec, notes, metrics=list(spec.metrics), steps=spec.steps, phases=[spec.phase])
        return layers_figure(df, spec.metrics[0], role=spec.role, by=spec.by, groups=list(spec.groups) or None,
                             phase=spec.phase, tokens=tokens, width=w)

    wanted = ["scalar/" + t.removeprefix("scalar/") for t in spec.terms] or ["scalar/*"]
    df = _load(spec, notes, metrics=wanted, steps=spec.steps)
    return losses_figure(df, terms=list(spec.terms) or None, by=spec.by, iteration=spec.iteration, width=w)


def render(spec: FigureSpec, out: str | Path, notes: list[str] | None = None) -> tuple[Path, Figure]:
    """``draw(spec)`` saved to ``out`` (PDF, SVG or PNG by suffix); returns (path, figure)."""

    out = Path(out)
    if out.suffix.lower().lstrip(".") not in FORMATS:
        raise BadOption(f"cannot write '{out.name}': unknown figure format '{out.suffix}'",
                        hint="use .pdf, .svg or .png")
    fig = draw(spec, notes)
    return save_figure(fig, out), fig


def figure_bytes(spec: FigureSpec, fmt: str, notes: list[str] | None = None) -> bytes:
    """The file ``render(spec, "figure.<fmt>")`` writes, as bytes (PDF/SVG/PNG are byte-for-byte deterministic)."""

    with tempfile.TemporaryDirectory(prefix="attnlens-figure-") as tmp:
        path, _ = render(spec, Path(tmp) / f"figure.{fmt}", notes)
        return path.read_bytes()


__all__ = ["FigureSpec", "ITERATIONS", "MAX_MAP_RUNS", "draw", "figure_bytes", "headline_metrics", "render",
           "select_steps"]
