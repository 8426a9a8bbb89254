"""A run's maps inline in a notebook: thin calls of the figure functions, so that a notebook, ``attnlens figure``
and the dashboard's export draw the same picture from the same map selection (``attnlens.figures.word_maps``)."""

from __future__ import annotations

from typing import Any, Sequence

from matplotlib.figure import Figure

from ..figures import maps_figure, word_heatmap_figure
from ..store import Run, open_run


def _steps(step: int | Sequence[int] | None) -> list[int] | None:
    if step is None:
        return None
    if isinstance(step, (int,)) or hasattr(step, "__index__"):
        return [int(step)]
    return [int(s) for s in step]


def _words(word: str | Sequence[str] | None) -> list[str] | None:
    if word is None:
        return None
    return [word] if isinstance(word, str) else list(word)


def show(runs: Any, word: str | Sequence[str] | None = None, step: int | Sequence[int] | None = None, *,
         layer: str = "all", phase: str = "sample", sample: int = 0, width: str | float | None = None,
         labels: Sequence[str] | None = None) -> Figure:
    """The maps of ``word`` in one run (or several, one row each) as a figure that shows itself inline.

    It is :func:`attnlens.figures.maps_figure` (what ``attnlens figure maps`` draws): the final image in colour,
    then the word's attention × h·w over the image in grey at each step. ``word``: a word or a list (default:
    the first two analysed words); ``step``: an int, a list, or None for five steps spread over the run;
    ``layer``: a layer name or an aggregate (``all``, ``res16``, ...). ``width``: ``column``, ``page`` or inches
    (default: column for one step, page otherwise).
    """
    runs = [runs] if isinstance(runs, (Run, str)) or hasattr(runs, "__fspath__") else list(runs)
    runs = [r if isinstance(r, Run) else open_run(r) for r in runs]
    steps = _steps(step)
    if width is None:
        width = "column" if steps is not None and len(steps) <= 2 else "page"
    return maps_figure(runs, tokens=_words(word), steps=steps, layer=layer, phase=phase, sample=sample,
                       width=width, labels=labels)


def word_heatmap(run: Any, word: str, step: int | Sequence[int] | None = None, *, layer: str = "all",
                 phase: str = "sample", sample: int = 0, width: str | float = "column", alpha: float = 0.5
                 ) -> Figure:
    """DAAM's heat map of ``word`` over the run's final image in colour (:func:`attnlens.figures.word_heatmap_figure`):
    at ``step``, the mean over a list of steps, or (None) over every recorded step."""
    return word_heatmap_figure(run, word, step, layer=layer, phase=phase, sample=sample, width=width, alpha=alpha)


__all__ = ["show", "word_heatmap"]
