"""attnlens in a notebook: runs that show themselves, maps inline, DAAM's heat map, and the dashboard's step player.

The whole workflow (``docs/notebooks/quickstart.ipynb``)::

    import attnlens
    pipe = attnlens.load_pipeline()
    run = attnlens.sample(pipe, "a red circle and a blue square", method="syngen", out="runs/x",
                          num_inference_steps=10)
    run_none = attnlens.sample(pipe, "a red circle and a blue square", out="runs/x-none", num_inference_steps=10)
    run                                 # prompt, method, image, layers, steps, size (Run._repr_html_)
    run.show("red", step=5)             # the maps figure of one word at one step, inline
    run.word_heatmap("red")             # DAAM's heat map over the colour image (mean over the steps)
    attnlens.notebook.player([run_none, run], ["red", "circle"])     # the step player, runs side by side

* :mod:`.maps` — :func:`show` and :func:`word_heatmap`: the figure functions of ``attnlens.figures`` (the same
  pictures as ``attnlens figure maps``); every attnlens figure displays itself inline (``_repr_png_``).
* :mod:`.player` — :func:`player` and :class:`StepPlayer`: the dashboard's step player
  (``dashboard/step_player/player.js``) as an anywidget, fed by the dashboard's own map and frame functions.

``Run.show``, ``Run.word_heatmap`` and ``Run.player`` call these.
"""

from __future__ import annotations

from .maps import show, word_heatmap
from .player import StepPlayer, player, player_args

__all__ = ["StepPlayer", "player", "player_args", "show", "word_heatmap"]
