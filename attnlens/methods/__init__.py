"""Guidance methods: one module per method, all registered by name (see ``registry``).

Module map (imports point down the list; a method module imports ``_shared``, ``_config``, ``base`` and
``registry``, never another method module):

* ``base`` — the contract with the sampler (``GuidanceMethod``, ``StepPlan``, ``LossOutput``);
* ``registry`` — name → method, user losses from ``path/to/file.py:function``;
* ``_shared`` — what several methods compute alike: the released divergences (``released_symmetric_kl``,
  ``released_jensen_shannon``), smoothing and token softmax, subject selection, step schedules;
* ``_config`` — the config checkers;
* ``none``, ``syngen``, ``syngen_entropy``, ``attend_excite``, ``divide_bind``, ``conform``, ``ebama``, ``a_star``,
  ``predicated``, ``initno`` (a noise-search hook before the loop), ``structured`` (an attention-processor hook, no
  loss) — one method each, registered on import below.
"""

from . import attend_excite, conform, divide_bind, ebama, none, syngen, syngen_entropy  # noqa: F401  (registers the built-ins)
from . import a_star, predicated  # noqa: F401  (issue 17: A-STAR, Predicated Diffusion)
from . import initno, structured  # noqa: F401  (issue 17: InitNO, Structured Diffusion)
from .base import GuidanceMethod, LossOutput, StepPlan
from .registry import available_methods, get_method, register_method

__all__ = ["GuidanceMethod", "LossOutput", "StepPlan", "available_methods", "get_method", "register_method"]
