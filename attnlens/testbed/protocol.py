"""The benchmark protocol: a fixed validation / test split of the held-out prompts, the number of units a paired
comparison needs, and step sizes chosen on validation (``attnlens bench calibrate``, ``attnlens bench power``).

**Split.** Every distinct held-out two-object caption (:func:`attnlens.testbed.bench.heldout_prompts`) belongs to
``val`` or ``test`` by its own text, independently of how many prompts a benchmark takes:

    split(caption) = "val" if int(sha256(caption)[:8], 16) mod 4 == 0 else "test"

(about one caption in four is validation; of the 420 distinct captions 100-odd). The rule was fixed, and written
into docs/testbed.md, before any result on ``test`` was computed. Step sizes are chosen on ``val``; results are
reported on ``test``.

**Power.** Outcomes are binary per image, and variants are compared paired on (prompt, seed) units. For a paired
difference δ in a rate (e.g. misbinding) with discordant-pair probability ψ (the chance that the two variants
disagree on a unit), the two-sided McNemar test at level α reaches power 1 − β with (Connor 1987)

    n = ( z_{1−α/2} · √ψ  +  z_{1−β} · √(ψ − δ²) )²  /  δ²

units (:func:`paired_units`). ψ ≥ |δ| always; ψ is estimated from a pilot (:func:`discordance`) or assumed.

**Calibration.** For each guided method, the step size (``STEP_PARAM``) × each factor of a grid is run on the
validation prompts; the chosen factor maximises the ``objective`` (default ``bound``: every object drawn and none
wearing another object's colour), ties broken by ``success``, then by the factor closest to the released 1
(:func:`choose_factor`). ``calibration.json`` holds the choice and the validation table; ``attnlens bench binding
--split test --calibration calibration.json`` then reports the released default and the calibrated value side by
side.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from statistics import NormalDist
from typing import Any, Sequence

from ..errors import AttnlensError, BadOption

SPLITS = ("all", "val", "test")
#: one caption in VAL_MODULUS is validation
VAL_MODULUS = 4


def split_of(caption: str) -> str:
    """``val`` or ``test``: the fixed split of a held-out caption (see the module docstring)."""
    h = int(hashlib.sha256(caption.encode("utf-8")).hexdigest()[:8], 16)
    return "val" if h % VAL_MODULUS == 0 else "test"


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise BadOption(f"unknown split '{split}'", hint=f"choose one of: {', '.join(SPLITS)}")
    return split


def paired_units(delta: float, discordant: float, *, alpha: float = 0.05, power: float = 0.8) -> int:
    """Units needed to detect a paired difference ``delta`` in a binary outcome (two-sided McNemar test at level
    ``alpha`` with power ``power``) when the variants disagree on a unit with probability ``discordant`` (ψ):

        n = ⌈ (z_{1−α/2} √ψ + z_{1−β} √(ψ − δ²))² / δ² ⌉   (Connor 1987)

    >>> paired_units(0.10, 0.25)
    194
    >>> paired_units(0.10, 0.10)   # every disagreement in one direction: the smallest ψ possible
    77
    """
    d = abs(float(delta))
    psi = float(discordant)
    if not 0 < d < 1:
        raise BadOption(f"the difference to detect must be in (0, 1), got {delta}", hint="e.g. --delta 0.1")
    if not d <= psi <= 1:
        raise BadOption(f"the discordant-pair rate must lie in [|δ|, 1] = [{d:g}, 1], got {discordant}",
                        hint="a difference δ needs at least |δ| of the units to disagree; e.g. --discordant 0.25")
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise BadOption("alpha and power must lie in (0, 1)", hint="e.g. --alpha 0.05 --power 0.8")
    z = NormalDist()
    za, zb = z.inv_cdf(1 - alpha / 2), z.inv_cdf(power)
    return math.ceil((za * math.sqrt(psi) + zb * math.sqrt(max(psi - d * d, 0.0))) ** 2 / (d * d))


def discordance(outcomes, metric: str, a: str, b: str, *, by: str = "variant") -> dict[str, float]:
    """How often variants ``a`` and ``b`` disagree on ``metric`` over the (prompt, seed) units both have:
    ``{"n": units, "discordant": ψ̂, "b_only": P(b true, a false), "a_only": P(a true, b false),
    "delta": mean(b) − mean(a)}``."""
    sub = outcomes[outcomes[by].isin([a, b])]
    wide = sub.pivot_table(index=["prompt", "seed"], columns=by, values=metric, aggfunc="first").dropna()
    if a not in wide or b not in wide or not len(wide):
        raise AttnlensError(f"no (prompt, seed) unit has both '{a}' and '{b}'",
                            hint="give a pilot outcomes table with both variants")
    va, vb = wide[a].astype(bool), wide[b].astype(bool)
    n = len(wide)
    return {"n": float(n), "discordant": float((va != vb).mean()), "b_only": float((vb & ~va).mean()),
            "a_only": float((va & ~vb).mean()), "delta": float(vb.mean() - va.mean())}


def choose_factor(table: Sequence[dict[str, Any]], objective: str = "bound", tiebreak: str = "success") -> dict:
    """The row of ``table`` (one per factor: ``{"factor", objective, tiebreak, ...}``) with the highest
    ``objective``, then the highest ``tiebreak``, then the factor closest to 1 on a log scale."""
    if not table:
        raise AttnlensError("nothing to choose from: the calibration grid is empty", hint="give factors, e.g. 1,4,16")
    return max(table, key=lambda r: (round(float(r[objective]), 12), round(float(r[tiebreak]), 12),
                                     -abs(math.log(float(r["factor"])))))


def read_calibration(path: str | Path) -> dict[str, float]:
    """``method → factor`` from a ``calibration.json`` written by :func:`attnlens.testbed.bench.run_calibration`."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
        chosen = {str(m): float(v["factor"]) for m, v in data["chosen"].items()}
    except FileNotFoundError:
        raise BadOption(f"no calibration file at '{p}'", hint="run `attnlens bench calibrate --out DIR` first") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise BadOption(f"'{p}' is not a calibration file (expected {{\"chosen\": {{method: {{\"factor\": x}}}}}})",
                        hint="pass the calibration.json that `attnlens bench calibrate` wrote") from None
    for m, f in chosen.items():
        if not f > 0 or not math.isfinite(f):
            raise BadOption(f"'{p}': the factor of '{m}' must be a positive number, got {f}",
                            hint="run `attnlens bench calibrate` again")
    return chosen


__all__ = ["SPLITS", "VAL_MODULUS", "check_split", "choose_factor", "discordance", "paired_units",
           "read_calibration", "split_of"]
