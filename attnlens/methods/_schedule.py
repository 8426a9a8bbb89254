"""Step schedules that were written for 50 denoising steps: say what they become at another number of steps.

The released methods fix their schedules in loop indices of a 50-step sampler: SynGen guides i < 25, Attend-and-
Excite and Divide & Bind i < 25 with refinement at i = 0, 10, 20, CONFORM i < 30 with refinement at 0, 10, 20. At
20 steps "i < 25" is every step and the refinement at i = 20 never happens, so the run is not the released method
any more; at 100 steps guidance stops a quarter of the way in. :func:`schedule_note` words that for a warning.
"""

from __future__ import annotations

from typing import Any, Mapping

class ScheduleWarning(UserWarning):
    """A method's 50-step schedule means something else at this number of steps (:func:`schedule_note`)."""


#: the number of denoising steps the released schedules were written for
RELEASED_STEPS = 50
#: hyperparameters holding "guide while i < N"
_LAST_KEYS = ("intervention_steps", "max_iter_to_alter")
#: hyperparameters holding the loop indices at which something happens
_AT_KEYS = ("thresholds", "refinement_at", "bind_weights")


def schedule_note(method: str, hyperparameters: Mapping[str, Any], n_steps: int) -> str | None:
    """A warning when ``method``'s schedule (in 50-step loop indices) changes meaning at ``n_steps``; else None.

    Examples::

        >>> schedule_note("syngen", {"intervention_steps": 25}, 20)[:63]
        'syngen: its schedule was written for 50 steps (guides i < 25); '
        >>> schedule_note("syngen", {"intervention_steps": 25}, 50) is None
        True
    """
    if n_steps == RELEASED_STEPS:
        return None
    last = next((hyperparameters[k] for k in _LAST_KEYS if isinstance(hyperparameters.get(k), int)), None)
    if last is None:
        return None
    at: set[int] = set()
    for k in _AT_KEYS:
        v = hyperparameters.get(k)
        keys = v.keys() if isinstance(v, Mapping) else v if isinstance(v, (list, tuple)) else ()
        at |= {int(x) for x in keys if str(x).lstrip("-").isdigit()}
    lost = sorted(i for i in at if i >= n_steps)
    fraction = last / RELEASED_STEPS
    if n_steps < RELEASED_STEPS and last < n_steps and not lost:
        return None  # the schedule still fits; its fraction of the run differs, which is not worth a warning
    what = [f"guides i < {last}"] + ([f"acts at i = {', '.join(map(str, sorted(at)))}"] if at else [])
    effect = []
    if last >= n_steps:
        effect.append(f"at {n_steps} steps it guides every step")
    elif n_steps > RELEASED_STEPS:
        effect.append(f"at {n_steps} steps it stops after {last / n_steps:.0%} of the run (released: {fraction:.0%})")
    if lost:
        effect.append(f"step(s) {', '.join(map(str, lost))} never come")
    key = next(k for k in _LAST_KEYS if isinstance(hyperparameters.get(k), int))
    scaled = max(1, round(fraction * n_steps))
    return (f"{method}: its schedule was written for {RELEASED_STEPS} steps ({'; '.join(what)}); "
            f"{'; '.join(effect)}. For the released proportion pass -O {key}={scaled}, or --n-steps {RELEASED_STEPS}")
