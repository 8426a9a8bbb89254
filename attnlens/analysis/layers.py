"""Layer plans and layer reads: which recorded layers and aggregates (``res<h>``, ``all``) a table has, the
head-averaged maps of a layer or aggregate, and which records a run holds."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch

from .. import metrics as M
from ..errors import EmptySelection
from ..selection import select_layers
from ..store import PHASES, Run
from ..vocab import AGGREGATE_ALL
from .kernels import MetricBlock, map_metrics
from .tokens import Selection

_RES_RE = re.compile(r"^res(\d+)(?:x(\d+))?$")


@dataclass(frozen=True)
class LayerPlan:
    """Which layers are read, which are emitted individually, and which aggregates are formed."""

    read: tuple[str, ...]
    emit: tuple[str, ...]
    aggregates: tuple[tuple[str, tuple[str, ...], tuple[int, int]], ...]  # (name, members, size)


def _res_name(hw: tuple[int, int]) -> str:
    return f"res{hw[0]}" if hw[0] == hw[1] else f"res{hw[0]}x{hw[1]}"


def plan_layers(resolutions: dict[str, tuple[int, int]], specs: Sequence[str | int] | None = None) -> LayerPlan:
    """Resolve layer specs: layer names, globs (``up_blocks.*``), resolutions (``16``: the layers at 16×16),
    and aggregates ``all`` / ``res<h>``. ``None`` = every layer plus every aggregate."""

    names = list(resolutions)
    if not names:
        return LayerPlan((), (), ())
    by_res: dict[tuple[int, int], list[str]] = {}
    for n in names:
        by_res.setdefault(tuple(resolutions[n]), []).append(n)
    all_size = (max(r[0] for r in by_res), max(r[1] for r in by_res))
    aggs: dict[str, tuple[tuple[str, ...], tuple[int, int]]] = {}
    if specs is None:
        emit = list(names)
        for hw in sorted(by_res, reverse=True):
            aggs[_res_name(hw)] = (tuple(by_res[hw]), hw)
        aggs[AGGREGATE_ALL] = (tuple(names), all_size)
    else:
        emit_specs: list[str | int] = []
        for spec in specs:
            text = str(spec).strip()
            m = _RES_RE.match(text)
            if text == AGGREGATE_ALL:
                aggs[AGGREGATE_ALL] = (tuple(names), all_size)
            elif m:
                hw = (int(m.group(1)), int(m.group(2) or m.group(1)))
                if hw not in by_res:
                    raise EmptySelection(f"no layers at {hw[0]}×{hw[1]} for aggregate '{text}'",
                                        hint=f"resolutions: {', '.join(_res_name(r) for r in sorted(by_res))}")
                aggs[text] = (tuple(by_res[hw]), hw)
            else:
                emit_specs.append(int(text) if text.isdigit() else text)
        emit = select_layers(names, emit_specs, resolutions) if emit_specs else []
    read = [n for n in names if n in emit or any(n in members for members, _ in aggs.values())]
    return LayerPlan(tuple(read), tuple(emit), tuple((k, v[0], v[1]) for k, v in aggs.items()))


def layer_maps(run: Run, layer: str, steps: Sequence[int], phase: str = "sample", iteration: int = 0,
               sample: int = 0) -> torch.Tensor:
    """Head-averaged float64 maps ``(S, token, h, w)`` of a layer or an aggregate (``all``, ``res<h>``) at
    ``steps``; reads only those chunks. Used by the figures (and the dashboard)."""
    plan = plan_layers(run.resolutions(), [layer])
    steps = list(steps)
    if plan.aggregates:
        name, members, size = plan.aggregates[0]
        total = None
        for n in members:
            x = _resize(_head_mean(run, n, steps, phase, iteration, sample), size)
            total = x if total is None else total + x
        return total / len(members)
    return _head_mean(run, plan.emit[0], steps, phase, iteration, sample)


def _head_mean(run: Run, layer: str, steps: Sequence[int], phase: str, iteration: int, sample: int) -> torch.Tensor:
    """One sample's maps ``(S, token, y, x)`` float64, averaged over heads (every head the same weight)."""
    return torch.from_numpy(run.read(layer, steps, phase, iteration, sample=sample)).mean(dim=1)


def _aggregate_metrics(parts: Sequence[torch.Tensor], size: tuple[int, int], n_layers: int, sel: Selection,
                       metrics: Iterable[str]) -> dict[str, MetricBlock]:
    """Metrics of an aggregate: the per-resolution layer sums ``parts`` resampled to ``size``, summed, divided by
    the number of layers (resampling is linear, so this is the mean of the resampled layers)."""
    total = None
    for part in parts:
        r = _resize(part, size)
        total = r if total is None else total + r
    return map_metrics(total / n_layers, sel, metrics)


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return M.resample_maps(x, size, mode="bilinear", renormalize=False)


def available_records(run: Run, layers: Sequence[str] | None = None,
                      arrays: dict[str, Any] | None = None) -> tuple[dict[tuple[str, int], list[int]], int | None]:
    """``{(phase, iteration): [steps]}`` with data in every layer of ``layers``, and the last complete step
    (every layer has its ``sample`` map for every step up to it; None if no step).

    A complete run trusts its manifest's record index; an incomplete one (``partial``) is checked chunk by chunk
    and cut at its last complete step, so a step the writer was still writing is never analysed."""
    records = run.manifest.get("records")
    layers = list(run.layers if layers is None else layers)
    arrays = {n: (arrays or {}).get(n) or run.array(n) for n in layers}
    out: dict[tuple[str, int], list[int]] = {}
    if run.complete and records:
        for ph, by_step in records.items():
            for s, its in by_step.items():
                for it in its:
                    out.setdefault((ph, int(it)), []).append(int(s))
        for k in out:
            out[k].sort()
        sample_steps = out.get(("sample", 0), [])
        return out, (sample_steps[-1] if sample_steps else None)
    first = arrays[layers[0]] if layers else None
    if first is None:
        return {}, None
    ph_s = PHASES.index("sample")
    last = None
    for s in range(first.shape[0]):
        if all(run.has_chunk(n, s, ph_s, 0) for n in arrays):
            last = s
        else:
            break
    if last is None:
        return {}, None
    candidates: dict[tuple[str, int], list[int]] = {}
    if records:
        for ph, by_step in records.items():
            for s, its in by_step.items():
                for it in its:
                    if int(s) <= last:
                        candidates.setdefault((ph, int(it)), []).append(int(s))
    else:
        n_it = first.shape[2]
        for ph in PHASES:
            for it in range(n_it if ph == "guidance" else 1):
                candidates[(ph, it)] = list(range(last + 1))
    for (ph, it), steps in candidates.items():
        ok = [s for s in sorted(steps)
              if all(run.has_chunk(n, s, ph, it) for n in arrays)]
        if ok:
            out[(ph, it)] = ok
    return out, last
