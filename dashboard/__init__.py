"""The attnlens dashboard: a Streamlit page over a folder of recorded runs (``attnlens dashboard ROOT``).

Layout of this package (``docs/dashboard.md``):

* :mod:`dashboard.app` — the Streamlit script (``streamlit run dashboard/app.py -- --root ROOT``); it only calls
  :func:`dashboard.ui.main`.
* :mod:`dashboard.ui` — the page: run browser, comparison view, metric view, across-prompts view, figure export.
  Everything Streamlit-specific (widgets, caching, the URL query, the step player's declaration) lives here.
* ``dashboard/step_player/index.html`` — the Compare view's step player: a Streamlit custom component in plain
  HTML/JS (no build step) that swaps the maps of every step in the browser and reports the step to the page.
* :mod:`dashboard.data` — reading the root: the run index, maps of a token at a step and layer, the parse, the
  metric and comparison tables, figure export. No Streamlit; it calls ``attnlens.store``, ``attnlens.analysis``,
  ``attnlens.compare``, ``attnlens.figures`` and ``attnlens.metrics`` and never computes a metric itself.
* :mod:`dashboard.plots` — pure plotting functions (numpy / plotly in, images / plotly figures out).
* :mod:`dashboard.state` — the view state and its URL query encoding.
* :mod:`dashboard.paths` — path safety: everything named in the URL is resolved against the root.
* :mod:`dashboard.fixtures` — tiny recorded roots for the tests and the benchmark (never imported by the page).
* :mod:`dashboard.benchmark` — first paint and step-slider redraw timings (``python -m dashboard.benchmark``).

The package ships in the attnlens wheel beside ``attnlens`` (``step_player/index.html`` as package data), and
``attnlens dashboard`` serves :data:`APP`, the ``app.py`` of whichever ``dashboard`` is imported: the installed one,
or the checkout's in an editable install.
"""

from __future__ import annotations

from pathlib import Path

APP = Path(__file__).resolve().with_name("app.py")  # the Streamlit script

__all__ = ["APP"]
