"""Applying interventions inside a UNet forward: which ones are active at a (layer, step, phase), tokens resolved to
text positions, boxes resized to each layer's grid, patch maps read from the source run.

The recorder's attention processor calls :meth:`Editor.apply` with the probabilities of the prompt's samples; what
it returns is what the layer multiplies with the values and what the recorder stores.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, NotFoundError
from ..selection import select_layers, step_filter
from ..store import Run, open_run
from ..tokens import word_positions_in
from . import ops
from .spec import Intervention


class Editor:
    """The active interventions of one recorder, in the order given (each edits the previous one's result)."""

    def __init__(self, interventions: Sequence[Intervention] = ()):
        self.items: list[Intervention] = list(interventions)
        self._steps = [step_filter(it.steps) for it in self.items]
        self._layers: list[set[str]] | None = None
        self._regions: dict[tuple[int, tuple[int, int]], torch.Tensor] = {}
        self._positions: dict[tuple[int, tuple[str, ...]], list[list[int]]] = {}
        self._sources: dict[int, Run] = {}
        self.image_hw: tuple[int, int] | None = None

    def __bool__(self) -> bool:
        return bool(self.items)

    def extend(self, items: Sequence[Intervention]) -> None:
        self.items += list(items)
        self._steps += [step_filter(it.steps) for it in items]
        self._layers = None

    def remove_last(self, n: int) -> None:
        del self.items[len(self.items) - n:]
        del self._steps[len(self._steps) - n:]
        self._layers = None

    # -- binding to a model and schedule ---------------------------------------------------------------------------
    def bind(self, layers: list[str], resolutions: dict[str, tuple[int, int]], image_hw: tuple[int, int], *,
             n_steps: int, timesteps: Sequence[float] | None, model_id: str | None) -> None:
        """Resolve the layer selections on this UNet and check patch sources against the model and schedule."""
        self.image_hw = image_hw
        self._regions = {}
        self._layers = [set(select_layers(layers, list(it.layers) if it.layers is not None else None, resolutions))
                        for it in self.items]
        for k, it in enumerate(self.items):
            if it.op == "patch" and k not in self._sources:
                self._sources[k] = _checked_source(it.source, resolutions, timesteps, model_id)

    @property
    def bound(self) -> bool:
        return self._layers is not None

    def active(self, layer: str, step: int, phase: str) -> list[int]:
        """Indices of the interventions that edit ``layer`` at ``step`` in ``phase``."""
        if not self.items or self._layers is None:
            return []
        return [k for k, it in enumerate(self.items)
                if phase in it.phases and layer in self._layers[k] and self._steps[k](step)]

    def check_tokens(self, pieces: Sequence[str]) -> None:
        """Refuse early (before sampling) a word that is not in the prompt or a position beyond it."""
        for k in range(len(self.items)):
            self._resolve(k, tuple(pieces), len(pieces))

    # -- the edit -----------------------------------------------------------------------------------------------
    def apply(self, which: Sequence[int], layer: str, step: int, phase: str, iteration: int, p: torch.Tensor,
              hw: tuple[int, int], pieces: Sequence[Sequence[str]], first: int = 0) -> torch.Tensor:
        """Edit ``p`` ``(samples, heads, Q, K)``: sample ``s`` is the prompt's sample ``first + s`` (its word pieces
        ``pieces[first + s]``). Returns ``p`` itself when no edit changes anything."""
        out = p
        for k in which:
            it = self.items[k]
            if it.op == "patch":
                out = self._patch(k, out, layer, step, phase, iteration, first)
                continue
            rows = []
            for s in range(out.shape[0]):
                row_pieces = tuple(pieces[min(first + s, len(pieces) - 1)])
                pos = self._resolve(k, row_pieces, out.shape[-1])
                rows.append(self._edit_one(k, it, out[s], pos, hw))
            if any(r is not out[s] for s, r in enumerate(rows)):
                out = torch.stack(rows)
        return out

    def _edit_one(self, k: int, it: Intervention, p: torch.Tensor, pos: list[list[int]], hw) -> torch.Tensor:
        flat = [i for group in pos for i in group]
        if it.op == "ablate":
            return ops.ablate(p, flat)
        if it.op == "scale":
            return ops.scale(p, flat, it.factor)
        if it.op == "swap":
            a, b = pos
            if len(a) != len(b):
                raise ConfigError(f"swap: '{it.tokens[0]}' has {len(a)} word piece(s), '{it.tokens[1]}' {len(b)}",
                                  hint="swap words of the same number of pieces, or name positions")
            return ops.swap(p, a, b)
        if it.op == "copy":
            src, dst = pos
            if len(src) != 1 and len(src) != len(dst):
                raise ConfigError(f"copy: '{it.tokens[0]}' has {len(src)} word pieces, '{it.tokens[1]}' {len(dst)}",
                                  hint="copy from a one-piece word, or between words of the same number of pieces")
            if src == dst:
                return p
            return ops.copy(p, src, dst)
        if it.op == "mask":
            return ops.mask(p, flat, self._region(k, it, hw).to(p.device))
        raise ConfigError(f"unknown intervention '{it.op}'")

    def _resolve(self, k: int, pieces: tuple[str, ...], n_keys: int) -> list[list[int]]:
        key = (k, pieces)
        hit = self._positions.get(key)
        if hit is not None:
            return hit
        groups = []
        for tok in self.items[k].tokens:
            if isinstance(tok, int):
                if tok >= n_keys:
                    raise ConfigError(f"token position {tok} is beyond the {n_keys} text positions",
                                      hint="positions count from 0 (<sot>)")
                groups.append([tok])
                continue
            found = word_positions_in(pieces, tok)
            if found is None:
                shown = " ".join(p for p in pieces if p not in ("<|endoftext|>",))
                raise NotFoundError(f"'{tok}' ({self.items[k].label()}) is not a word of the prompt",
                                    hint=f"word pieces: {shown}")
            groups.append(found)
        self._positions[key] = groups
        return groups

    def _region(self, k: int, it: Intervention, hw: tuple[int, int]) -> torch.Tensor:
        """The mask's weight per query of a layer of grid ``hw``: the fraction of each cell inside the box, or the
        region array area-resized to the grid. Shape ``(h·w,)``."""
        cached = self._regions.get((k, hw))
        if cached is not None:
            return cached
        h, w = hw
        if it.box is not None:
            r0, c0, r1, c1 = it.box
            if max(it.box) > 1:  # pixels: to fractions of the image
                if self.image_hw is None:
                    raise ConfigError("a box in pixels needs the image size")
                H, W = self.image_hw
                r0, r1, c0, c1 = r0 / H, r1 / H, c0 / W, c1 / W
            rows = _cover(r0, r1, h)
            cols = _cover(c0, c1, w)
            region = torch.outer(rows, cols)
        else:
            src = torch.from_numpy(it.region)[None, None]
            region = F.interpolate(src, size=(h, w), mode="area")[0, 0] if tuple(src.shape[-2:]) != (h, w) else src[0, 0]
        region = region.reshape(-1).to(torch.float32)
        self._regions[(k, hw)] = region
        return region

    def _patch(self, k: int, p: torch.Tensor, layer: str, step: int, phase: str, iteration: int, first: int) -> torch.Tensor:
        run = self._sources[k]
        if (step, iteration) not in _recorded(run, phase) or layer not in run.layers:
            return p  # the source has no map here: nothing to patch
        src = torch.from_numpy(run.maps(layer, step, phase=phase, iteration=iteration))  # (S, Hs, t, y, x)
        S, Hs, t = src.shape[:3]
        src = src.flatten(3).transpose(-1, -2).to(p.dtype)  # (S, Hs, Q, t)
        idx = [min(first + s, S - 1) for s in range(p.shape[0])]
        src = src[idx].to(p.device)
        if Hs not in (1, p.shape[1]):
            raise ConfigError(f"patch: the source has {Hs} heads at {layer}, this model {p.shape[1]}")
        if src.shape[2] != p.shape[2] or t > p.shape[3]:
            raise ConfigError(f"patch: the source's maps at {layer} are {tuple(src.shape[2:])}, here {tuple(p.shape[2:])}",
                              hint="patch from a run of the same model, image size and prompt length")
        out = p.clone() if t < p.shape[3] else None
        src = src.expand(p.shape[0], p.shape[1], -1, -1)
        if out is None:
            return src.contiguous()
        out[..., :t] = src
        return out


def _cover(a: float, b: float, n: int) -> torch.Tensor:
    """Fraction of each of ``n`` equal cells of [0, 1] that lies inside [a, b]."""
    edges = torch.arange(n + 1, dtype=torch.float64) / n
    lo, hi = edges[:-1], edges[1:]
    return ((torch.clamp(torch.minimum(hi, torch.tensor(b)) - torch.maximum(lo, torch.tensor(a)), min=0)) * n).float()


def _recorded(run: Run, phase: str) -> set[tuple[int, int]]:
    recs = (run.manifest.get("records") or {}).get(phase) or {}
    return {(int(s), int(i)) for s, its in recs.items() for i in its}


def _checked_source(source: str, resolutions: dict[str, tuple[int, int]],
                    timesteps: Sequence[float] | None, model_id: str | None) -> Run:
    try:
        run = open_run(source)
    except NotFoundError as exc:
        raise NotFoundError(f"patch source: {exc.message}", hint="record it first: attnlens record PROMPT --heads all "
                                                                 "--dtype fp32 --tokens all --out ...") from None
    m = run.manifest
    src_model = (m.get("model") or {}).get("id") or m.get("model_id")
    if model_id is not None and src_model is not None and src_model != model_id:
        raise ConfigError(f"patch source '{source}' was recorded on model '{src_model}', this is '{model_id}'",
                          hint="patch only between runs of the same model")
    if timesteps is not None and run.layers:
        ts = np.asarray(run.timesteps(), dtype=np.float64)
        mine = np.asarray([float(t) for t in timesteps], dtype=np.float64)
        steps = [s for s, _ in _recorded(run, "sample") if s < len(ts)]
        if len(ts) != len(mine) or any(ts[s] != mine[s] for s in steps):
            raise ConfigError(f"patch source '{source}' was recorded with another schedule ({len(ts)} denoising "
                              f"forwards, timesteps {_head(ts)}; this call {len(mine)}, {_head(mine)})",
                              hint="patch between runs of the same scheduler and step count")
    for layer in run.layers:
        if layer not in resolutions:
            raise ConfigError(f"patch source '{source}' has layer {layer}, which this model lacks",
                              hint="patch only between runs of the same model")
        if tuple(run.resolution(layer)) != tuple(resolutions[layer]):
            raise ConfigError(f"patch source '{source}' has {layer} at {run.resolution(layer)}, here "
                              f"{resolutions[layer]}", hint="patch between runs of the same image size")
    return run




def _head(ts: np.ndarray) -> str:
    return ",".join(f"{t:g}" for t in ts[:3]) + (",…" if len(ts) > 3 else "")
