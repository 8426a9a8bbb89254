"""What an intervention is: a frozen, JSON-serialisable spec, its one-line text form, and its label.

Text grammar (the CLI's ``--intervene``; one intervention per string)::

    OP TOKEN... [VALUE] [steps=SEL] [layers=L[,L...]] [phases=P[,P]] [box=r0,c0,r1,c1]

    ablate red                     zero red's column, renormalise each row
    scale red 2                    red's column × 2, renormalise
    swap red blue                  exchange red's and blue's columns
    copy circle red                red's column := circle's (SOURCE TARGET), renormalise
    mask red box=0,0,0.5,0.5       red only inside the box (rows r0:r1, cols c0:c1; fractions or image pixels)
    patch runs/x/none-seed0        the maps recorded in that run (same model and schedule)

A TOKEN is a word of the prompt (its word pieces) or an integer text position (``0`` is ``<sot>``). ``steps`` takes
the selection syntax of ``--steps`` (``0:10``, ``0,5,9``, ``3``); ``layers`` names, globs (``up_blocks.*``) and
resolution groups (``res16`` or ``16``); ``phases`` is ``sample`` (the sampling forward's conditional half) and/or
``guidance`` (a guidance method's grad-enabled forward). Leaving a key out selects everything.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import BadOption
from ..selection import parse_steps

OPS = ("ablate", "scale", "swap", "copy", "mask", "patch")
PHASES = ("sample", "guidance")
_ARITY = {"ablate": "1+", "scale": "1+", "swap": "2", "copy": "2", "mask": "1+", "patch": "0"}
_USAGE = {
    "ablate": "ablate WORD [WORD...]", "scale": "scale WORD [WORD...] FACTOR", "swap": "swap WORD WORD",
    "copy": "copy SOURCE TARGET", "mask": "mask WORD [WORD...] box=r0,c0,r1,c1", "patch": "patch RUN_FOLDER",
}

Token = str | int


@dataclass(frozen=True)
class Intervention:
    """One edit of the cross-attention probabilities, at the selected layers, steps and phases.

    Args:
        op (`str`): ``ablate`` | ``scale`` | ``swap`` | ``copy`` | ``mask`` | ``patch``.
        tokens (`tuple`): words or text positions: the edited tokens (``ablate``, ``scale``, ``mask``), the two
            tokens (``swap``), or ``(source, target)`` (``copy``); empty for ``patch``.
        factor (`float`, *optional*): the multiplier of ``scale`` (≥ 0).
        box (`tuple`, *optional*): ``mask``'s region ``(r0, c0, r1, c1)``, rows ``r0:r1`` and columns ``c0:c1``,
            in image pixels, or fractions of the image when all four are in [0, 1].
        region (`numpy.ndarray`, *optional*): ``mask``'s region as an (H, W) array of weights in [0, 1] (any size;
            it is resized to each layer's resolution by area averaging). Not in the text form.
        source (`str`, *optional*): ``patch``'s run folder.
        layers: layer filter (None: every cross-attention layer); see ``attnlens.selection.select_layers``.
        steps (`str`, *optional*): step selection text (``0:10``); None: every step.
        phases (`tuple`, defaults to both): ``sample`` and/or ``guidance``.
    """

    op: str
    tokens: tuple[Token, ...] = ()
    factor: float | None = None
    box: tuple[float, float, float, float] | None = None
    region: Any = field(default=None, compare=False)
    source: str | None = None
    layers: tuple[str | int, ...] | None = None
    steps: str | None = None
    phases: tuple[str, ...] = PHASES

    def __post_init__(self):
        if self.op not in OPS:
            raise BadOption(f"unknown intervention '{self.op}'", hint=f"choose one of: {', '.join(OPS)}")
        object.__setattr__(self, "tokens", tuple(_token(t) for t in self.tokens))
        n, arity = len(self.tokens), _ARITY[self.op]
        if (arity == "1+" and n < 1) or (arity not in ("1+",) and n != int(arity)):
            raise BadOption(f"'{self.op}' takes {arity.replace('+', ' or more')} token(s), got {n}",
                            hint=f"usage: {_USAGE[self.op]}")
        if self.op == "swap" and self.tokens[0] == self.tokens[1]:
            raise BadOption(f"swap needs two different tokens, got '{self.tokens[0]}' twice", hint="e.g. swap red blue")
        if self.op == "scale":
            if self.factor is None or not np.isfinite(self.factor) or self.factor < 0:
                raise BadOption(f"scale needs a factor ≥ 0, got {self.factor}", hint="e.g. scale red 2")
            object.__setattr__(self, "factor", float(self.factor))
        elif self.factor is not None:
            raise BadOption(f"'{self.op}' takes no factor", hint=f"usage: {_USAGE[self.op]}")
        if self.op == "mask":
            if (self.box is None) == (self.region is None):
                raise BadOption("mask needs exactly one region: box=r0,c0,r1,c1 or a region array",
                                hint="e.g. mask red box=0,0,0.5,0.5 (fractions) or box=0,0,32,32 (pixels)")
            if self.box is not None:
                box = tuple(float(v) for v in self.box)
                if len(box) != 4 or box[2] <= box[0] or box[3] <= box[1] or min(box) < 0:
                    raise BadOption(f"box {self.box} is not r0,c0,r1,c1 with r0 < r1 and c0 < c1, all ≥ 0",
                                    hint="e.g. box=0,0,0.5,0.5")
                object.__setattr__(self, "box", box)
            else:
                region = np.asarray(self.region, dtype=np.float32)
                if region.ndim != 2 or region.min() < 0 or region.max() > 1:
                    raise BadOption("a mask region must be a 2-D array of weights in [0, 1]",
                                    hint="e.g. a boolean (H, W) mask of the object")
                object.__setattr__(self, "region", region)
        elif self.box is not None or self.region is not None:
            raise BadOption(f"'{self.op}' takes no region", hint=f"usage: {_USAGE[self.op]}")
        if (self.op == "patch") != (self.source is not None):
            raise BadOption("patch needs a source run folder (and only patch takes one)", hint=f"usage: {_USAGE['patch']}")
        if self.layers is not None:
            layers = (self.layers,) if isinstance(self.layers, (str, int)) else tuple(self.layers)
            object.__setattr__(self, "layers", tuple(int(x) if isinstance(x, str) and x.isdigit() else x for x in layers))
        if self.steps is not None:
            object.__setattr__(self, "steps", str(self.steps))
            parse_steps(self.steps)  # refuses what it cannot read
        phases = (self.phases,) if isinstance(self.phases, str) else tuple(self.phases)
        bad = [p for p in phases if p not in PHASES]
        if bad or not phases:
            raise BadOption(f"unknown phase(s) {bad or phases}", hint=f"choose from: {', '.join(PHASES)}")
        object.__setattr__(self, "phases", tuple(p for p in PHASES if p in phases))

    # -- serialisation ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON (what the manifest stores). A region array is stored by shape and a digest."""
        d: dict[str, Any] = {"op": self.op, "tokens": list(self.tokens)}
        if self.factor is not None:
            d["factor"] = self.factor
        if self.box is not None:
            d["box"] = list(self.box)
        if self.region is not None:
            d["region"] = {"shape": list(self.region.shape),
                           "sha1": hashlib.sha1(np.ascontiguousarray(self.region).tobytes()).hexdigest()[:12]}
        if self.source is not None:
            d["source"] = self.source
        d["layers"] = list(self.layers) if self.layers is not None else None
        d["steps"] = self.steps
        d["phases"] = list(self.phases)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Intervention":
        if not isinstance(d, dict) or "op" not in d:
            raise BadOption(f"an intervention spec must be an object with an 'op', got {d!r}",
                            hint='e.g. {"op": "swap", "tokens": ["red", "blue"], "steps": "0:10"}')
        known = {"op", "tokens", "factor", "box", "region", "source", "layers", "steps", "phases"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise BadOption(f"unknown key(s) {unknown} in intervention spec", hint=f"known: {', '.join(sorted(known))}")
        if isinstance(d.get("region"), dict):
            raise BadOption("a region array cannot be read back from its digest; pass the array again")
        kw = {k: v for k, v in d.items() if v is not None}
        for k in ("tokens", "box", "layers", "phases"):
            if k in kw and not isinstance(kw[k], (list, tuple, str)):
                raise BadOption(f"'{k}' must be a list in intervention spec {d!r}")
        if isinstance(kw.get("tokens"), str):
            kw["tokens"] = [kw["tokens"]]
        return cls(**kw)

    def label(self) -> str:
        """A short, exact description: ``swap(red,blue; steps 0:10; res16)``."""
        args = [str(t) for t in self.tokens]
        if self.op == "scale":
            args.append(f"×{self.factor:g}")
        if self.box is not None:
            args.append("box " + ",".join(f"{v:g}" for v in self.box))
        if self.region is not None:
            args.append("region " + "×".join(str(s) for s in self.region.shape))
        if self.source is not None:
            args.append(Path(self.source).name if len(self.source) > 30 else self.source)
        parts = [",".join(args)] if args else []
        if self.steps is not None:
            parts.append(f"steps {self.steps}")
        if self.layers is not None:
            parts.append(",".join(f"res{x}" if isinstance(x, int) else str(x) for x in self.layers))
        if self.phases != PHASES:
            parts.append(",".join(self.phases))
        return f"{self.op}(" + "; ".join(parts) + ")"


def _token(t: Any) -> Token:
    if isinstance(t, bool):
        raise BadOption(f"token {t!r} is neither a word nor a position")
    if isinstance(t, (int, np.integer)):
        if t < 0:
            raise BadOption(f"token position {t} is negative", hint="positions count from 0 (<sot>)")
        return int(t)
    t = str(t).strip()
    if not t:
        raise BadOption("an empty token", hint="name a word of the prompt or a position")
    return int(t) if t.isdigit() else t


_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def parse_intervention(text: str) -> Intervention:
    """Read one intervention from its text form (see the module docstring). Bad text raises ``BadOption`` naming
    what is wrong.

    >>> parse_intervention("swap red blue steps=0:10 layers=res16").label()
    'swap(red,blue; steps 0:10; res16)'
    >>> parse_intervention("mask red box=0,0,0.5,0.5").to_dict()["box"]
    [0.0, 0.0, 0.5, 0.5]
    """
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise BadOption(f"cannot read intervention '{text}': {exc}") from None
    if not words:
        raise BadOption("empty intervention", hint='e.g. --intervene "swap red blue steps=0:10 layers=res16"')
    op, rest = words[0].lower(), words[1:]
    if op not in OPS:
        raise BadOption(f"unknown intervention '{words[0]}' in '{text}'", hint=f"choose one of: {', '.join(OPS)}")
    kw: dict[str, Any] = {}
    positional = []
    for w in rest:
        key, eq, value = w.partition("=")
        if not eq:
            positional.append(w)
            continue
        key = key.strip().lower()
        if key in kw:
            raise BadOption(f"'{key}=' given twice in '{text}'")
        if key == "steps":
            kw["steps"] = value
        elif key == "layers":
            kw["layers"] = [v for v in value.split(",") if v]
        elif key == "phases":
            kw["phases"] = [v for v in value.split(",") if v]
        elif key == "box" and op == "mask":
            try:
                kw["box"] = tuple(float(v) for v in value.split(","))
            except ValueError:
                raise BadOption(f"cannot read box '{value}'", hint="box=r0,c0,r1,c1, e.g. box=0,0,0.5,0.5") from None
            if len(kw["box"]) != 4:
                raise BadOption(f"box '{value}' needs 4 numbers", hint="box=r0,c0,r1,c1")
        elif key in ("factor", "k") and op == "scale":
            kw["factor"] = _number(value, text)
        else:
            raise BadOption(f"unknown key '{key}=' for {op} in '{text}'",
                            hint="keys: steps=, layers=, phases=" + (", box=" if op == "mask" else "")
                                 + (", factor=" if op == "scale" else ""))
    if op == "scale" and "factor" not in kw:
        if len(positional) < 2 or not _NUMBER.fullmatch(positional[-1]):
            raise BadOption(f"scale needs a factor in '{text}'", hint=f"usage: {_USAGE['scale']}, e.g. scale red 2")
        kw["factor"] = _number(positional.pop(), text)
    if op == "patch":
        if len(positional) != 1:
            raise BadOption(f"patch takes one run folder in '{text}'", hint=f"usage: {_USAGE['patch']}")
        kw["source"] = positional.pop()
    return Intervention(op=op, tokens=tuple(positional), **kw)


def _number(value: str, text: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise BadOption(f"'{value}' is not a number in '{text}'") from None


def as_interventions(items: Sequence[Intervention | str | dict[str, Any]] | Intervention | str | None) -> list[Intervention]:
    """Interventions from specs, their text forms or their dicts (one or a list)."""
    if items is None:
        return []
    if isinstance(items, (Intervention, str, dict)):
        items = [items]
    out = []
    for it in items:
        if isinstance(it, Intervention):
            out.append(it)
        elif isinstance(it, str):
            out.append(parse_intervention(it))
        elif isinstance(it, dict):
            out.append(Intervention.from_dict(it))
        else:
            raise BadOption(f"not an intervention: {it!r}", hint='an Intervention, a text like "swap red blue", or a dict')
    return out


def read_spec_file(path: str | Path) -> list[Intervention]:
    """Interventions from a JSON or TOML file: a list of specs (dicts or text lines), or ``{"intervention": [...]}``
    (TOML: ``[[intervention]]`` tables)."""
    path = Path(path)
    if not path.is_file():
        raise BadOption(f"intervention file '{path}' not found", hint="pass a .json or .toml file of specs")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".toml":
            data: Any = tomllib.loads(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001  (json and toml raise their own errors)
        raise BadOption(f"cannot read intervention file '{path}': {exc}",
                        hint="JSON: a list of specs; TOML: [[intervention]] tables") from None
    if isinstance(data, dict):
        data = data.get("intervention", data.get("interventions"))
    if not isinstance(data, list) or not data:
        raise BadOption(f"'{path}' holds no list of interventions",
                        hint='JSON: [{"op": "swap", "tokens": ["red", "blue"]}]; TOML: [[intervention]] op = "swap"')
    return as_interventions(data)


def label_of(items: Sequence[Intervention | dict[str, Any]]) -> str:
    """The interventions' part of a variant label: ``swap(red,blue; steps 0:10) + ablate(red)``."""
    labels = []
    for it in items:
        if isinstance(it, dict):
            region = it.get("region")
            try:  # a region array is stored by its shape: a stand-in of that shape labels it the same way
                it = Intervention.from_dict({k: v for k, v in it.items() if k != "region"}
                                            | ({"region": np.ones(region["shape"])} if isinstance(region, dict) else {}))
            except (BadOption, KeyError, TypeError, ValueError):
                labels.append(str(it.get("op", "?")) + "(?)")
                continue
        labels.append(it.label())
    return " + ".join(labels)
