"""``attnlens.intervene``: edit cross-attention probabilities during any pipeline call or guided sample.

    >>> import attnlens, torch
    >>> pipe = attnlens.load_pipeline("attnlens-tiny")
    >>> with attnlens.intervene(pipe, ["swap red blue steps=0:2 layers=res16"]):
    ...     out = pipe("a red cube and a blue ball", num_inference_steps=3, height=64, width=64,
    ...                generator=torch.Generator().manual_seed(0), output_type="np")

It is a ``Recorder`` without a store that carries interventions: it swaps the ``attn2`` processors for the
recorder's and restores the very same objects on exit, also when the body raises. Around ``attnlens.sample`` or
``attnlens.record``, the inner recorder takes the interventions over (one processor per layer does both: the edited
probabilities are what the layer uses and what is recorded, and the run's manifest lists the interventions); inside
``attnlens.record``, the interventions are added to that recorder for the block.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..errors import ConfigError
from ..interventions import Intervention, as_interventions
from .processor import RecordingProcessor
from .recorder import Recorder, cross_attention_layers


class intervene:  # noqa: N801  (used like a function: `with attnlens.intervene(pipe, [...])`)
    """Apply ``interventions`` to every UNet forward of ``pipe`` inside the block.

    Args:
        pipe: a diffusers pipeline with a ``unet`` (SD 1.x, 2.x, SDXL).
        interventions: ``Intervention`` objects, their text forms (``"swap red blue steps=0:10 layers=res16"``) or
            dicts (docs/interventions.md has the grammar).
        prompts (`list[str]`, *optional*): the prompts whose words the interventions name; by default they are read
            from the text encoder's input of each pipeline call.
    """

    def __init__(self, pipe, interventions: Sequence[Intervention | str | dict[str, Any]] | Intervention | str,
                 prompts: list[str] | None = None):
        self.pipe = pipe
        self.items = as_interventions(interventions)
        if not self.items:
            raise ConfigError("attnlens.intervene needs at least one intervention",
                              hint='e.g. attnlens.intervene(pipe, ["swap red blue steps=0:10"])')
        self.prompts = prompts
        self._host: Recorder | None = None
        self._own: Recorder | None = None

    def __enter__(self) -> "intervene":
        if self._host is not None or self._own is not None:
            raise ConfigError("this intervention block is already active")
        active = _active_recorder(self.pipe)
        if active is not None:
            active.push_interventions(self.items)
            self._host = active
        else:
            rec = Recorder(self.pipe, None, prompts=self.prompts, interventions=self.items)
            rec._intervene_only = True
            rec.__enter__()
            self._own = rec
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        host, own = self._host, self._own
        self._host = self._own = None
        if host is not None:
            host.pop_interventions(len(self.items))
        if own is not None:
            own.__exit__(exc_type, exc, tb)


def _active_recorder(pipe) -> Recorder | None:
    for module in cross_attention_layers(pipe.unet).values():
        if isinstance(module.processor, RecordingProcessor):
            return module.processor.recorder
    return None
