"""attnlens: record, analyse and compare the cross-attention maps of guided text-to-image diffusion.

The whole workflow::

    import attnlens
    pipe = attnlens.load_pipeline()                  # the embedded default, or "CompVis/stable-diffusion-v1-4"
    run = attnlens.sample(pipe, "a red crown and a golden strawberry", method="syngen", seed=1, out="runs/x")
    run.maps(run.layers[0], step=10)                                     # (sample, head, token, y, x)
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import AttnlensError
from .methods import GuidanceMethod, LossOutput, StepPlan, available_methods, get_method, register_method
from .models import DEFAULT_MODEL, load_pipeline
from .recorder import Recorder, RecordingConfig, record
from .sampler import guided_sample, sample
from .store import Run, find_runs, open_run

__all__ = [
    "AttnlensError", "DEFAULT_MODEL", "GuidanceMethod", "LossOutput", "Recorder", "RecordingConfig", "Run", "StepPlan",
    "__version__", "available_methods", "find_runs", "get_method", "load_pipeline", "open_run", "record",
    "register_method", "sample", "guided_sample",
]
