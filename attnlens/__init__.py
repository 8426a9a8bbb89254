"""attnlens: record, analyse and compare the cross-attention maps of guided text-to-image diffusion.

The whole workflow::

    import attnlens
    pipe = attnlens.load_pipeline()                  # the embedded default, or "CompVis/stable-diffusion-v1-4"
    run = attnlens.sample(pipe, "a red crown and a golden strawberry", method="syngen", seed=1, out="runs/x")
    run.maps(run.layers[0], step=10)                                     # (sample, head, token, y, x)

Module map (dependencies point down: nothing imports the CLI, the store knows nothing of models)::

    cli/            the command line (typer); the only place that imports the library lazily
    dashboard/      (top-level package) the Streamlit page over a folder of runs
    figures/        one FigureSpec, one draw(spec): used by `attnlens figure` and the dashboard export
    sweep, demo     run paths and reuse; the first-run demo
    testbed/        the shapes testbed: renderer, evaluator, training, the binding bench
    analysis/       metric tables (tokens, layers, kernels, runs, table, parquet); compare, report
    sampler         guided sampling (attnlens.sample); methods/ the guidance methods and their registry
    recording/      the recorder: attention processors, writer thread, Recorder (attnlens.record), intervene
    interventions/  edits of cross-attention probabilities: ops, Intervention specs, the Editor
    models/         the embedded models and load_pipeline
    store/          run stores: layout and the Manifest schema, fast chunk I/O, reader (Run), writer (RunWriter)
    parse, tokens, tokenizer, maps, metrics, selection, vocab, errors     pure helpers at the bottom

Words (phase, iteration, unit, role, pair, variant, aggregate, ...): ``docs/glossary.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import AttnlensError

#: the public API and the module each name lives in. Importing ``attnlens`` stays cheap (the command line answers
#: ``--help`` without loading torch); a name is imported on first use (PEP 562), and ``import attnlens.x`` works
#: as for any package.
_EXPORTS = {
    "GuidanceMethod": "methods", "LossOutput": "methods", "StepPlan": "methods", "available_methods": "methods",
    "get_method": "methods", "register_method": "methods",
    "DEFAULT_MODEL": "models", "load_pipeline": "models",
    "Recorder": "recording", "RecordingConfig": "recording", "record": "recording", "intervene": "recording",
    "Intervention": "interventions",
    "guided_sample": "sampler", "sample": "sampler",
    "Run": "store", "find_runs": "store", "open_run": "store",
}

if TYPE_CHECKING:  # what the lazy names are, for type checkers and editors
    from .methods import GuidanceMethod, LossOutput, StepPlan, available_methods, get_method, register_method
    from .models import DEFAULT_MODEL, load_pipeline
    from .interventions import Intervention
    from .recording import Recorder, RecordingConfig, intervene, record
    from .sampler import guided_sample, sample
    from .store import Run, find_runs, open_run


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    try:  # attnlens.store, attnlens.analysis, ...: submodules as attributes, imported on first use
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module 'attnlens' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "AttnlensError", "DEFAULT_MODEL", "GuidanceMethod", "LossOutput", "Recorder", "RecordingConfig", "Run", "StepPlan",
    "__version__", "available_methods", "find_runs", "get_method", "load_pipeline", "open_run", "record",
    "Intervention", "intervene",
    "register_method", "sample", "guided_sample",
]
