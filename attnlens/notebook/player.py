"""The step player in a notebook: the dashboard's own player (``dashboard/step_player/player.js``) as an anywidget.

:func:`player` reads the maps of every recorded step of one run or several (side by side, one column each) the way
the dashboard's Compare view does — ``dashboard.data.read_stack`` (``attnlens.analysis.layer_maps``) →
``dashboard.data.token_maps`` (``attnlens.analysis.unit_maps``) → ``dashboard.plots.scaled_map`` (p·h·w) →
``dashboard.plots.step_frames`` (RGBA PNGs on one shared [min, max] over every run and step) — and hands them to
:class:`StepPlayer`, whose front end is ``player.js`` itself followed by a small ES-module adapter. Moving the
slider swaps the images in the browser; the step on view is synced back to Python as ``StepPlayer.step``, and
setting ``step`` from Python moves the slider.

The notebook sits beside the dashboard at the top of the stack (it imports ``dashboard.data`` and
``dashboard.plots``, which import the library; nothing below imports this module).
"""

from __future__ import annotations

import hashlib
import html
from pathlib import Path
from typing import Any, Sequence

import anywidget
import numpy as np
import traitlets

import dashboard
from dashboard import data as D
from dashboard import plots as P

from ..analysis import variant_label
from ..errors import BadOption, EmptySelection
from ..store import PHASES, Run, open_run

#: the dashboard's step player: the one implementation of its JS and CSS
PLAYER_DIR = dashboard.APP.with_name("step_player")

#: how ``player.js`` (a classic script defining ``attnlensStepPlayer``) becomes an anywidget front end
_ADAPTER = """
export default {
  render({ model, el }) {
    const box = document.createElement("div");
    el.appendChild(box);
    const player = attnlensStepPlayer(box, {
      onStep: (step) => { model.set("step", step); model.save_changes(); },
    });
    const draw = () => player.render(Object.assign({}, model.get("args"), { step: model.get("step") }));
    const moved = () => {
      const step = model.get("step");
      if (step !== player.step()) {
        player.render(Object.assign({}, model.get("args"), { step: step, ack: player.reports() }));
      }
    };
    draw();
    model.on("change:args", draw);
    model.on("change:step", moved);
    return () => { model.off("change:args", draw); model.off("change:step", moved); };
  },
};
"""


def _read(name: str) -> str:
    return (PLAYER_DIR / name).read_text(encoding="utf-8")


class StepPlayer(anywidget.AnyWidget):
    """The step player widget. ``args`` is the player's payload (the JSON the dashboard sends its component:
    ``frames_id, steps, tokens, ncols, columns, phase, it``); ``step`` is the step on view (synced both ways).
    ``value_range`` is the shared colour scale (min, max) of attention × h·w; build one with :func:`player`.

    Outside a live notebook (a static rendering, nbconvert, GitHub) the widget cannot run: its HTML form shows the
    step on view as images."""

    _esm = _read("player.js") + _ADAPTER
    _css = _read("player.css")
    args = traitlets.Dict().tag(sync=True)
    step = traitlets.Int(0).tag(sync=True)

    def __init__(self, args: dict[str, Any], step: int, value_range: tuple[float, float] = (0.0, 1.0), **kwargs):
        super().__init__(args=args, step=int(step), **kwargs)
        self.value_range = value_range

    def _repr_mimebundle_(self, **kwargs):
        bundle = super()._repr_mimebundle_(**kwargs)
        data = bundle[0] if isinstance(bundle, tuple) else bundle
        if isinstance(data, dict):
            data["text/html"] = self.snapshot_html()
        return bundle

    def snapshot_html(self, step: int | None = None) -> str:
        """The maps of ``step`` (default: the step on view) as plain HTML images over each column's grey image:
        what a reader without a widget front end sees."""
        a = self.args
        steps = a.get("steps") or []
        s = self.step if step is None else int(step)
        if s not in steps:
            return "<p>no recorded step to show</p>"
        i = steps.index(s)
        cells = []
        for c in a.get("columns") or []:
            if c is None:
                continue
            f = (c.get("frames") or [None] * len(steps))[i]
            maps = []
            for k, name in enumerate(a.get("tokens") or []):
                uri = f[k] if f else None
                img = (f"<img src='{uri}' alt='{html.escape(name)}' width='128' height='128' "
                       f"style='position:absolute;left:0;top:0;image-rendering:auto'/>") if uri else ""
                maps.append(f"<div style='display:inline-block;margin:2px;text-align:center'>"
                            f"<div style='font-size:12px'>{html.escape(name)}</div>"
                            f"<div style='position:relative;width:128px;height:128px;background:url({c['under']});"
                            f"background-size:100% 100%'>{img}</div></div>")
            cells.append(f"<div style='display:inline-block;vertical-align:top;margin-right:12px'>"
                         f"<div style='font-size:13px;font-weight:600'>{html.escape(str(c.get('label', '')))}</div>"
                         + "".join(maps) + "</div>")
        lo, hi = self.value_range
        return (f"<div class='attnlens-player-snapshot'><div style='font-size:13px'>step {s} of "
                f"{steps[0]}..{steps[-1]} (layer {html.escape(str(a.get('layer')))}, phase "
                f"{html.escape(str(a.get('phase')))}; attention × h·w from {lo:.3g} to {hi:.3g})</div>"
                + "".join(cells) + "</div>")


def _as_runs(runs: Any) -> list[Run]:
    if isinstance(runs, (Run, str, Path)):
        runs = [runs]
    out = [r if isinstance(r, Run) else open_run(r) for r in runs]
    if not out:
        raise BadOption("no run given", hint="attnlens.notebook.player([run_a, run_b], ['red', 'crown'])")
    return out


def player_args(runs: Any, words: Sequence[str] | str | None = None, *, layer: str = "all", phase: str = "sample",
                iteration: int = 0, head: int | None = None, scale: str = "shared",
                labels: Sequence[str] | None = None) -> tuple[dict[str, Any], tuple[float, float]]:
    """The step player's payload for ``runs`` (one column each) and ``words`` (default: the first four analysed
    words of the first run's parse; ``#i`` is the word piece at position i), and the colour range it uses."""
    runs = _as_runs(runs)
    if phase not in PHASES:
        raise BadOption(f"unknown phase '{phase}'", hint=f"phases: {', '.join(PHASES)}")
    if scale not in ("shared", "each"):
        raise BadOption(f"unknown colour scale '{scale}'", hint="shared or each")
    if labels is not None and len(labels) != len(runs):
        raise BadOption(f"{len(labels)} labels for {len(runs)} runs", hint="give one label per run")
    known = D.known_parses(runs)
    parses = [D.parse_of(r, known) for r in runs]
    words = [words] if isinstance(words, str) else list(words or D.default_tokens(parses[0]))
    if not words:
        raise BadOption(f"no word to show for {runs[0].path}", hint="pass words=['red', 'crown']")
    per_run = []
    for r in runs:
        recs = D.records(r).get(phase, {})
        per_run.append(sorted(int(s) for s, its in recs.items() if iteration in its))
    steps = sorted({s for ss in per_run for s in ss})
    if not steps:
        raise EmptySelection(f"no '{phase}' maps (iteration {iteration}) in these runs",
                             hint="record the run first, or pick another phase")
    maps: dict[str, dict[int, list[np.ndarray]]] = {}
    keys = [f"{i}" for i in range(len(runs))]
    for key, r, parse, ss in zip(keys, runs, parses, per_run):
        if not ss:
            continue
        arr = D.read_stack(r, layer, ss, phase=phase, iteration=iteration, head=head)
        maps[key] = {s: [P.scaled_map(m) for m in D.token_maps(arr[i], parse, words)] for i, s in enumerate(ss)}
    frames, shared = P.step_frames(maps, steps, scale)
    columns = []
    for i, (key, r) in enumerate(zip(keys, runs)):
        ts = r.timesteps() if r.layers else np.array([])
        label = labels[i] if labels else f"{variant_label(r.manifest)} · seed {r.manifest.get('seed')}"
        under = P.data_uri(P.to_jpeg(P.under_image(D.image_array(r))), "image/jpeg")
        columns.append({"label": label, "under": under, "frames": frames.get(key, [None] * len(steps)),
                        "t": [int(ts[s]) if s < len(ts) and np.isfinite(ts[s]) else None for s in steps]})
    sig = repr(([str(r.path) for r in runs], [D.run_key(r.path, r.status) for r in runs], layer, phase,
                iteration, head, words, scale))
    args = {"frames_id": hashlib.sha1(sig.encode()).hexdigest()[:16], "step": steps[-1], "ack": 0, "steps": steps,
            "tokens": words, "ncols": len(runs), "columns": columns, "phase": phase, "it": int(iteration),
            "layer": layer, "column_labels": True}
    return args, shared


def player(runs: Any, words: Sequence[str] | str | None = None, *, step: int | None = None, layer: str = "all",
           phase: str = "sample", iteration: int = 0, head: int | None = None, scale: str = "shared",
           labels: Sequence[str] | None = None) -> StepPlayer:
    """A step player over ``runs`` (a run, a run folder, or several side by side) for ``words``.

    Args:
        runs: a ``Run``, a run folder, or a list of them (one column each).
        words (`list[str]`, *optional*): the words (or ``#i`` word pieces) shown, one row each; default the first
            four analysed words of the parse.
        step (`int`, *optional*): the step shown first (default: the last recorded step).
        layer (`str`, defaults to `"all"`): a layer name or an aggregate (``all``, ``res16``, ...).
        phase, iteration, head: which maps (head None: the head mean).
        scale (`str`, defaults to `"shared"`): ``shared`` (one colour scale over every run and step) or ``each``.

    Examples::

        >>> import attnlens
        >>> pipe = attnlens.load_pipeline("attnlens-tiny")
        >>> run_none = attnlens.sample(pipe, "a red crown", out="runs/none", num_inference_steps=4)
        >>> run_syngen = attnlens.sample(pipe, "a red crown", method="syngen", out="runs/syngen", num_inference_steps=4)
        >>> p = attnlens.notebook.player([run_none, run_syngen], ["red", "crown"])
        >>> p.step = 2                          # the slider moves with it, in the notebook
        >>> p.step
        2
    """
    args, shared = player_args(runs, words, layer=layer, phase=phase, iteration=iteration, head=head, scale=scale,
                               labels=labels)
    if step is not None:
        if int(step) not in args["steps"]:
            raise EmptySelection(f"step {step} has no '{phase}' maps",
                                 hint=f"recorded steps: {args['steps'][0]}..{args['steps'][-1]}")
        args["step"] = int(step)
    return StepPlayer(args, args["step"], shared)


__all__ = ["PLAYER_DIR", "StepPlayer", "player", "player_args"]
