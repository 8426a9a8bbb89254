"""``attnlens bench calibrate``: choose each guided method's step size on the validation prompts.

For every method, its step size (``STEP_PARAM``: SynGen's ``step_size``, A&E's and D&B's ``scale_factor``) times
each factor of the grid is run on the ``val`` split's held-out prompts × seeds (the binding benchmark with
``split="val"``; ``none`` is run too, as the reference), every image is scored by the evaluator, and
:func:`attnlens.testbed.protocol.choose_factor` picks the factor with the best ``objective`` (default ``bound``).
``OUT/calibration.json`` holds the choice, the grid and the validation table; ``OUT/calibration.md`` the table.
The test split is never touched: ``attnlens bench binding --split test --calibration OUT/calibration.json``
reports there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import BadOption
from ..methods import get_method
from .bench import OUTCOMES, STEP_PARAM, run_binding_bench
from .protocol import choose_factor

DEFAULT_FACTORS = (0.25, 1.0, 4.0, 16.0)


def run_calibration(
    model: str | Any,
    out: str | Path,
    *,
    methods: Sequence[str] = ("syngen",),
    factors: Sequence[float] = DEFAULT_FACTORS,
    prompts: int = 24,
    seeds: Sequence[int] = (0, 1),
    steps: int = 50,
    guidance_scale: float = 7.5,
    objective: str = "bound",
    tiebreak: str = "success",
    overrides: dict[str, dict[str, Any]] | None = None,
    runs_root: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Calibrate ``methods`` on the validation split and write ``OUT/calibration.{json,md}``; returns the JSON
    document (``chosen``: method → ``{"param", "factor", "value", objective, tiebreak}``; ``table``: every
    (method, factor) row). Resumable: complete runs are reused."""

    guided = [m for m in methods if m != "none"]
    bad = [m for m in guided if m not in STEP_PARAM]
    if bad:
        raise BadOption(f"'{bad[0]}' has no step size to calibrate",
                        hint=f"calibrate one of: {', '.join(sorted(STEP_PARAM))}")
    if not guided:
        raise BadOption("no method to calibrate", hint="e.g. --method syngen")
    for key in (objective, tiebreak):
        if key not in OUTCOMES:
            raise BadOption(f"unknown objective '{key}'", hint=f"choose one of: {', '.join(OUTCOMES)}")
    factors = sorted({float(f) for f in factors})
    if not factors or any(not f > 0 for f in factors):
        raise BadOption("the factors must be positive numbers", hint="e.g. --factors 0.25,1,4,16")
    out = Path(out)
    res = run_binding_bench(model, out, prompts=prompts, seeds=seeds, methods=["none", *guided],
                            sweep=factors, steps=steps, guidance_scale=guidance_scale, overrides=overrides,
                            analyse=False, runs_root=runs_root, progress=progress, log=log, split="val")
    o = res.outcomes
    table, chosen = [], {}
    for m in guided:
        param = STEP_PARAM[m]
        base = float(get_method(m).hyperparameters()[param])
        rows = []
        for f in factors:
            value = base * f
            label = m if f == 1.0 else f"{m} {param}={value:g}"
            sub = o[o["variant"] == label]
            row = {"method": m, "param": param, "factor": f, "value": value, "label": label, "n": int(len(sub)),
                   **{k: float(sub[k].astype(float).mean()) for k in OUTCOMES}}
            rows.append(row)
        best = choose_factor(rows, objective, tiebreak)
        chosen[m] = {k: best[k] for k in ("param", "factor", "value", "label", objective, tiebreak)}
        table += rows
    none = o[o["variant"] == "none"]
    reference = {k: float(none[k].astype(float).mean()) for k in OUTCOMES}
    doc = {"split": "val", "objective": objective, "tiebreak": tiebreak, "factors": factors,
           "prompts": sorted(set(o["prompt"])), "seeds": [int(s) for s in seeds], "steps": steps,
           "guidance_scale": guidance_scale, "model": str(model if isinstance(model, str) else "pipe"),
           "none": reference, "chosen": chosen, "table": table}
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration.json").write_text(json.dumps(doc, indent=2))
    (out / "calibration.md").write_text(calibration_markdown(doc))
    return doc


def calibration_markdown(doc: dict[str, Any]) -> str:
    """The validation table of a calibration: one row per (method, factor), the chosen one in bold."""
    keys = [doc["objective"], *[k for k in ("success", "misbinding", "leakage", "neglect") if k != doc["objective"]]]
    lines = ["| method | factor | value | " + " | ".join(keys) + " |", "|---|---:|---:|" + "---:|" * len(keys),
             "| none | – | – | " + " | ".join(f"{doc['none'][k]:.3f}" for k in keys) + " |"]
    for r in doc["table"]:
        mark = "**" if doc["chosen"][r["method"]]["factor"] == r["factor"] else ""
        lines.append(f"| {mark}{r['method']}{mark} | {mark}{r['factor']:g}{mark} | {r['param']}={r['value']:g} | "
                     + " | ".join(f"{r[k]:.3f}" for k in keys) + " |")
    n_units = len(doc["prompts"]) * len(doc["seeds"])
    lines += ["", f"Validation split: {len(doc['prompts'])} prompts × {len(doc['seeds'])} seeds = {n_units} units, "
                  f"{doc['steps']} steps. Chosen (bold): highest `{doc['objective']}`, then `{doc['tiebreak']}`, "
                  "then the factor closest to the released 1.", ""]
    return "\n".join(lines)


__all__ = ["DEFAULT_FACTORS", "calibration_markdown", "run_calibration"]
