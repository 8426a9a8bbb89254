"""``maps``: attention maps over the final image, rows = runs × words, columns = the colour image, then steps; and
``word_heatmap_figure``: one word's map over the colour image (DAAM's heat map overlay)."""

from __future__ import annotations

from typing import Any, Sequence

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from ..analysis import layer_maps, run_selection, unit_maps, variant_label
from ..errors import BadOption, EmptySelection
from ..maps import resample
from ..store import Run, open_run
from .style import OVERLAY_CMAP, _new_figure, _panel, _styled, figure_width


def _grey_image(run, sample: int, size: int) -> np.ndarray:
    img = run.image(sample)
    if img is None:
        return np.full((size, size), 0.5)

    try:
        g = img.convert("L").resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(g, dtype=np.float64) / 255.0
    finally:
        img.close()


def _colour_image(run, sample: int, size: int) -> np.ndarray | None:
    """The run's final image as RGB floats in [0, 1], ``size``×``size`` (bilinear), or None without an image."""
    img = run.image(sample)
    if img is None:
        return None
    try:
        rgb = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(rgb, dtype=np.float64) / 255.0
    finally:
        img.close()


def _upsample(m: np.ndarray, size: int) -> np.ndarray:


    return resample(torch.from_numpy(m), size, mode="bilinear").numpy()


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)


def word_maps(run: Run, words: Sequence[str] | None, steps: Sequence[int], *, layer: str = "all",
              phase: str = "sample", sample: int = 0) -> list[tuple[str, np.ndarray]]:
    """Each word's spatial distribution scaled by its pixel count, p·h·w (1 = uniform), at ``steps``:
    ``[(label, (step, h, w) array)]``, one per word (default: the first two analysed words of the run's parse).

    The map selection of every attention picture (the maps figure, the word heat map, the notebook's ``run.show``):
    ``layer_maps`` (a layer or an aggregate such as ``all``, heads averaged) → ``unit_maps`` (a word = the mean of
    its word pieces) → p = m / Σ_xy m. A map with no mass is NaN.
    """
    sel = run_selection(run, sample)
    words = list(words) if words else [u.label for u in sel.units[:2]]
    if not words:
        raise BadOption(f"no word to show for {run.path}", hint="pass --token WORD")
    x = layer_maps(run, layer, list(steps), phase=phase, sample=sample)  # (S, K, h, w)
    u = unit_maps(x, sel)
    out = []
    for w in words:
        j = sel.unit(w)
        m = u[:, j]
        p = (m / m.sum(dim=(-2, -1), keepdim=True)) * (m.shape[-2] * m.shape[-1])
        out.append((sel.units[j].label, p.numpy()))
    return out


def _check_steps(run: Run, steps: Sequence[int], phase: str) -> None:
    have = set(run.recorded_steps(phase=phase))
    missing = [s for s in steps if s not in have]
    if missing:
        raise EmptySelection(f"step {missing[0]} has no '{phase}' maps in {run.path}",
                             hint=f"recorded steps: {min(have)}..{max(have)}" if have else None)


@_styled
def maps_figure(runs: Sequence[Any], tokens: Sequence[str] | None = None, steps: Sequence[int] | None = None, *,
                layer: str = "all", phase: str | Sequence[str] = "sample", sample: int = 0,
                width: str | float = "page", labels: Sequence[str] | None = None, cell_pixels: int = 128,
                alpha: float = 0.85, image: bool = True) -> Figure:
    """Attention maps over the final image: rows = runs × ``tokens``, columns = the final image in colour
    (``image=True``; not a data panel), then ``steps``.

    Each cell shows the run's final image in grey with the word's spatial distribution p over it (``layer``:
    a layer name or an aggregate, default ``all``; bilinearly upsampled to the image; colour = ``inferno`` of
    p·h·w, i.e. 1 = uniform attention, on one [min, max] scale shared by the whole figure, opacity growing
    with the value).
    ``tokens`` default to the first two analysed words of each run's parse; ``steps`` to five recorded steps
    spread over the run. ``phase`` may be a list with one phase per run: the same run twice with
    ``["guidance", "sample"]`` shows its maps before and after each step's guidance update. ``labels``: one row
    label per run (default: variant and seed).
    """

    runs = [r if isinstance(r, Run) else open_run(r) for r in runs]
    if not runs:
        raise BadOption("no run given", hint="attnlens figure maps RUN [RUN ...]")
    phases = [phase] * len(runs) if isinstance(phase, str) else list(phase)
    if len(phases) != len(runs):
        raise BadOption(f"{len(phases)} phases for {len(runs)} runs", hint="give one phase per run")
    recorded = runs[0].recorded_steps(phase=phases[0])
    if not recorded:
        raise EmptySelection(f"{runs[0].path} has no '{phases[0]}' maps")
    if steps is None:
        idx = np.unique(np.linspace(0, len(recorded) - 1, min(5, len(recorded))).round().astype(int))
        steps = [recorded[i] for i in idx]
    steps = list(steps)
    rows_spec = []  # (run, row label, unit map stack (S, h, w))
    for i, (run, phase) in enumerate(zip(runs, phases)):
        _check_steps(run, steps, phase)
        name = labels[i] if labels else f"{variant_label(run.manifest)} · seed {run.manifest.get('seed')}"
        for label, p in word_maps(run, tokens, steps, layer=layer, phase=phase, sample=sample):
            rows_spec.append((run, f"{name}\n{label}", p))
    finite = np.concatenate([r[2][np.isfinite(r[2])] for r in rows_spec])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if vmax <= vmin:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    cmap = matplotlib.colormaps[OVERLAY_CMAP]
    n_rows, n_cols = len(rows_spec), len(steps) + int(image)
    w = figure_width(width)
    cell = (w - 1.9) / n_cols
    fig = _new_figure(w, 0.45 + cell * n_rows)
    grid = fig.subplots(n_rows, n_cols, squeeze=False)
    axes = grid[:, 1:] if image else grid  # the map panels (the colour bar spans these)
    timesteps = runs[0].timesteps() if runs[0].layers else None
    for r, (run, label, stack) in enumerate(rows_spec):
        base = _grey_image(run, sample, cell_pixels)
        if image:  # the final image in colour, left of the row's maps (not a data panel)
            ax = grid[r][0]
            rgb = _colour_image(run, sample, cell_pixels)
            ax.imshow(rgb if rgb is not None else np.full((cell_pixels, cell_pixels, 3), 0.5),
                      interpolation="nearest")
            _bare(ax)
            if r == 0:
                ax.set_title("image" if rgb is not None else "no image")
            ax.set_ylabel(label, rotation=0, ha="right", va="center", labelpad=4)
        for c, s in enumerate(steps):
            ax = axes[r][c]
            m = (_upsample(stack[c], cell_pixels) - vmin) / (vmax - vmin)
            m = np.clip(np.nan_to_num(m, nan=0.0), 0.0, 1.0)
            heat = cmap(m)[..., :3]
            a = (alpha * m)[..., None]
            rgb = (1 - a) * (0.25 + 0.5 * base[..., None]) + a * heat
            ax.imshow(rgb, interpolation="nearest")
            _bare(ax)
            if r == 0:
                t = f"step {s}"
                if timesteps is not None and s < len(timesteps) and np.isfinite(timesteps[s]):
                    t += f"\nt={int(timesteps[s])}"
                ax.set_title(t)
            if c == 0 and not image:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", labelpad=4)
            _panel(fig, ax)
    sm = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(vmin, vmax), cmap=cmap)
    cb = fig.colorbar(sm, ax=axes.ravel().tolist(), shrink=0.8, aspect=25, pad=0.01)
    cb.set_label("attention × h·w (1 = uniform)")
    cb.outline.set_linewidth(0.4)
    return fig


@_styled
def word_heatmap_figure(run: Any, word: str, step: int | Sequence[int] | None = None, *, layer: str = "all",
                        phase: str = "sample", sample: int = 0, width: str | float = "column", pixels: int = 256,
                        alpha: float = 0.5) -> Figure:
    """DAAM's heat map: one word's attention, upsampled to the image and laid over the final image in colour.

    The map is the word's p·h·w of :func:`word_maps` (1 = uniform attention) at ``step``, or its mean over several
    steps; ``step=None`` averages every recorded step of ``phase`` (DAAM's "global" heat map aggregates over time
    steps and layers in the same way: here the layers are ``layer``, default the ``all`` aggregate). It is
    bilinearly upsampled to ``pixels``×``pixels``, coloured with ``inferno`` on its own [min, max] and drawn over
    the image with opacity ``alpha`` (DAAM's ``plot_overlay``); the colour bar gives the values.
    """
    run = run if isinstance(run, Run) else open_run(run)
    recorded = run.recorded_steps(phase=phase)
    if not recorded:
        raise EmptySelection(f"{run.path} has no '{phase}' maps")
    steps = recorded if step is None else ([int(step)] if np.ndim(step) == 0 else [int(s) for s in step])
    if not steps:
        raise BadOption("no step given", hint=f"recorded steps: {recorded[0]}..{recorded[-1]}")
    _check_steps(run, steps, phase)
    ((label, stack),) = word_maps(run, [word], steps, layer=layer, phase=phase, sample=sample)
    with np.errstate(all="ignore"):
        m = np.nanmean(stack, axis=0) if np.isfinite(stack).any() else stack[0]
    heat = _upsample(np.nan_to_num(m, nan=0.0), pixels)
    finite = heat[np.isfinite(heat)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if vmax <= vmin:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    rgb = _colour_image(run, sample, pixels)
    w = figure_width(width)
    fig = _new_figure(w, w * 0.86)
    ax = _panel(fig, fig.add_subplot(1, 1, 1))
    ax.imshow(rgb if rgb is not None else np.full((pixels, pixels, 3), 0.5), interpolation="bilinear")
    im = ax.imshow(heat, cmap=OVERLAY_CMAP, alpha=alpha, vmin=vmin, vmax=vmax, interpolation="nearest")
    _bare(ax)
    if len(steps) == 1:
        when = f"step {steps[0]}"
        ts = run.timesteps() if run.layers else None
        if ts is not None and steps[0] < len(ts) and np.isfinite(ts[steps[0]]):
            when += f" (t={int(ts[steps[0]])})"
    else:
        when = f"mean of {len(steps)} steps ({steps[0]}..{steps[-1]})"
    ax.set_title(f"“{label}” · {layer} · {when}")
    cb = fig.colorbar(im, ax=ax, shrink=0.8, aspect=25, pad=0.02)
    cb.solids.set_alpha(1.0)
    cb.set_label("attention × h·w (1 = uniform)")
    cb.outline.set_linewidth(0.4)
    return fig
