"""The view state of the dashboard and its URL query encoding (pure; no Streamlit).

Every control of the page has one field here, and the URL query holds every field that differs from its default,
so a view can be shared or reopened: ``?prompt=a+red+crown&seed=1&tokens=red&tokens=crown&step=3&layer=res16``.
Lists use repeated keys. Decoding is forgiving: an unknown key is ignored, a malformed value falls back to the
default; the page then checks each value against what the root actually holds (a stale value is dropped).

No field is a filesystem path except ``run``, which the page resolves against the root with
:func:`dashboard.paths.resolve_under` (and refuses when it escapes the root).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping

VIEWS = ("compare", "metrics", "across", "runs")
VIEW_LABELS = {"compare": "Compare", "metrics": "Metrics", "across": "Across prompts", "runs": "Runs"}
SCALES = ("shared", "each")
BY = ("method", "variant")
EXPORT_KINDS = ("maps", "curves", "layers", "losses")
EXPORT_FORMATS = ("pdf", "png")
EXPORT_WIDTHS = ("auto", "column", "page")  # auto = what `attnlens figure` uses (column for curves)
EXPORT_STEPS = ("current", "spread")  # maps: the current step, or five steps spread over the run (the CLI default)

LIST_FIELDS = ("f_prompt", "f_seed", "f_method", "f_model", "f_status", "methods", "tokens")
INT_FIELDS = ("seed", "step", "it")


@dataclass
class ViewState:
    """What the page shows. ``None`` / empty list = "the default for what is loaded" (e.g. every method)."""

    view: str = "compare"
    # run browser filters (empty = no filter)
    f_prompt: list[str] = field(default_factory=list)
    f_seed: list[str] = field(default_factory=list)
    f_method: list[str] = field(default_factory=list)
    f_model: list[str] = field(default_factory=list)
    f_status: list[str] = field(default_factory=list)
    # the (prompt, seed) unit and its columns
    prompt: str | None = None
    seed: int | None = None
    methods: list[str] = field(default_factory=list)
    # maps
    tokens: list[str] = field(default_factory=list)
    layer: str = "all"
    phase: str = "sample"
    head: str = "mean"
    it: int = 0
    step: int | None = None
    scale: str = "shared"
    # metrics
    metric: str = "jsd"
    role: str | None = None
    by: str = "method"
    # runs view: one run's details (a path relative to the root)
    run: str | None = None
    # export
    export_kind: str = "maps"
    export_format: str = "pdf"
    export_width: str = "auto"
    export_steps: str = "current"

    def to_query(self) -> dict[str, str | list[str]]:
        """The non-default fields as a query dict (lists as lists of strings, the rest as strings)."""
        default = ViewState()
        out: dict[str, str | list[str]] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v == getattr(default, f.name) or v is None:
                continue
            if f.name in LIST_FIELDS:
                if v:
                    out[f.name] = [str(x) for x in v]
            else:
                out[f.name] = str(v)
        return out

    @classmethod
    def from_query(cls, query: Mapping[str, Any]) -> "ViewState":
        """Parse a query dict (values: a string or a list of strings, as ``st.query_params`` / AppTest give them).

        Unknown keys are ignored; malformed values keep the default; enumerations are checked here
        (``view``, ``scale``, ``by``, export options); everything that depends on the root is checked by the page.
        """
        s = cls()
        names = {f.name for f in fields(cls)}
        for key, raw in query.items():
            if key not in names:
                continue
            values = [str(x) for x in raw] if isinstance(raw, (list, tuple)) else [str(raw)]
            if key in LIST_FIELDS:
                setattr(s, key, [v for v in values if v != ""])
                continue
            if not values:
                continue
            v = values[-1]
            if key in INT_FIELDS:
                try:
                    setattr(s, key, int(v))
                except ValueError:
                    pass
                continue
            setattr(s, key, v)
        for key, allowed in (("view", VIEWS), ("scale", SCALES), ("by", BY), ("export_kind", EXPORT_KINDS),
                             ("export_format", EXPORT_FORMATS), ("export_width", EXPORT_WIDTHS),
                             ("export_steps", EXPORT_STEPS)):
            if getattr(s, key) not in allowed:
                setattr(s, key, getattr(cls(), key))
        if s.it < 0:
            s.it = 0
        return s


def query_problems(query: Mapping[str, Any]) -> list[str]:
    """What :meth:`ViewState.from_query` had to drop from ``query``, one line each: unknown keys, values that are not
    numbers where a number belongs, values outside an enumeration. (Values checked against the root — a prompt
    nobody recorded, a layer the runs lack, a step outside the schedule — are reported by the page.)"""
    names = {f.name for f in fields(ViewState)}
    enums = {"view": VIEWS, "scale": SCALES, "by": BY, "export_kind": EXPORT_KINDS, "export_format": EXPORT_FORMATS,
             "export_width": EXPORT_WIDTHS, "export_steps": EXPORT_STEPS}
    out = []
    for key, raw in query.items():
        values = [str(x) for x in raw] if isinstance(raw, (list, tuple)) else [str(raw)]
        if key not in names:
            out.append(f"unknown URL parameter `{key}` ignored")
            continue
        if not values or key in LIST_FIELDS:
            continue
        v = values[-1]
        if key in INT_FIELDS:
            try:
                if int(v) < 0:
                    out.append(f"`{key}={v}` is negative; ignored")
            except ValueError:
                out.append(f"`{key}={v}` is not a whole number; ignored")
        elif key in enums and v not in enums[key]:
            out.append(f"`{key}={v}` is not one of {', '.join(enums[key])}; ignored")
    return out


def query_equal(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two query dicts encode the same state (a one-element list equals its string)."""

    def norm(q: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
        return {k: tuple(str(x) for x in v) if isinstance(v, (list, tuple)) else (str(v),) for k, v in q.items()}

    return norm(a) == norm(b)


__all__ = ["BY", "EXPORT_FORMATS", "EXPORT_KINDS", "EXPORT_STEPS", "EXPORT_WIDTHS", "SCALES", "VIEWS", "VIEW_LABELS",
           "ViewState", "query_equal", "query_problems"]
