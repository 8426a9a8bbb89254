"""The contract between guidance methods and the guided sampler.

A method is a small object with a frozen, JSON-serialisable config. The sampler (``attnlens.sampler``) owns the
loop; a method only answers three questions:

* ``plan(i, num_timesteps)`` — does step ``i`` get guidance, with which step size and refinement cap?
* ``loss(maps, parse, i)`` — the loss on the live (autograd-connected) cross-attention maps of one sample;
* ``refine(i, out)`` — given the loss just computed, should the sampler run another refinement pass at step ``i``?

The sampler applies plain gradient descent ``z ← z − α_i ∂L/∂z`` (no normalisation or clipping, as the released
code), skips an update whose loss is exactly 0 or whose loss/gradient is not finite, and records every term.

Refinement loop at step ``i`` (reproduces Attend-and-Excite's ``_perform_iterative_refinement_step`` update for
update, without its redundant first forward)::

    out = forward_and_loss(z)                       # iteration 0
    if plan.max_refinement > 0 and method.refine(i, out):
        k = 0
        while True:
            prev = out
            z = update(z, out); k += 1
            out = forward_and_loss(z)               # iteration k
            if k >= plan.max_refinement or not method.refine(i, prev):
                break
    z = update(z, out)                              # the step's own update
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import torch


@dataclass(frozen=True)
class StepPlan:
    """What the sampler does at one step: the step size α_i and the refinement cap (0 = no refinement)."""

    step_size: float
    max_refinement: int = 0


@dataclass
class LossOutput:
    """A method's loss at one forward pass.

    Attributes:
        loss: 0-d tensor connected to the latent through the maps.
        terms: named scalar parts of the loss (tensors or floats), recorded per step and iteration.
        indicator: the number the method's refinement rule looks at (A&E: the loss; D&B: min TV), if any.
    """

    loss: torch.Tensor
    terms: dict[str, Any] = field(default_factory=dict)
    indicator: float | None = None
    step_loss: torch.Tensor | None = None  # the step's own update descends this instead of ``loss`` (InitNO)


class GuidanceMethod:
    """Base class of guidance methods. Subclasses set ``name``, ``Config`` and implement ``loss``.

    ``maps`` handed to ``loss`` is ``{layer_name: Tensor(heads, h, w, 77)}`` for the layers returned by
    ``layers`` — softmax over all 77 text positions, autograd-connected to the latent, one sample (the
    conditional text embedding only, no CFG).
    """

    name: ClassVar[str] = "base"
    #: why the method runs on UNet pipelines only (SD 1.x/2.x, SDXL), or None: the sampler refuses it on the
    #: transformer families before anything is written
    unet_only: ClassVar[str | None] = None

    @dataclass(frozen=True)
    class Config:
        pass

    def __init__(self, config: Any = None, **overrides: Any):
        if config is None:
            config = self.Config()
        if overrides:
            known = {f.name for f in dataclasses.fields(self.Config)}
            unknown = sorted(set(overrides) - known)
            if unknown:
                raise ValueError(
                    f"unknown option(s) {unknown} for method '{self.name}'; valid options: {sorted(known)}"
                )
            config = dataclasses.replace(config, **overrides)
        self.config = config

    def hyperparameters(self) -> dict[str, Any]:
        """Every hyperparameter, JSON-serialisable (stored in the run manifest)."""
        return _jsonable(dataclasses.asdict(self.config))

    def layers(self, resolutions: Mapping[str, tuple[int, int]]) -> list[str]:
        """The cross-attention layers (diffusers module paths) whose live maps ``loss`` needs."""
        return []

    def plan(self, i: int, num_timesteps: int) -> StepPlan | None:
        """The plan for loop index ``i`` of ``num_timesteps`` (51 for PNDM at 50 steps), or None for no guidance."""
        return None

    def loss(self, maps: Mapping[str, torch.Tensor], parse: Any, i: int) -> LossOutput:
        raise NotImplementedError

    def idle_reason(self, parse: Any) -> str | None:
        """Why this method cannot act on the prompt of ``parse`` (nothing to bind or excite), or None: such a run is
        the unguided one, and the sampler says so instead of running silently."""
        return None

    def refine(self, i: int, out: LossOutput) -> bool:
        """Whether another refinement pass should run at step ``i`` after seeing ``out``."""
        return False

    #: whether the method reads live attention maps (False for a method that only installs an attention hook)
    needs_maps: ClassVar[bool] = True

    def self_attention_layers(self, resolutions: Mapping[str, tuple[int, int]]) -> list[str]:
        """Cross-attention layers (``attn2`` paths) whose sibling ``attn1`` self-attention probabilities the loss
        also needs; they reach ``loss`` in ``maps`` under the ``attn1`` path, shaped ``(heads, h, w, h·w)``."""
        return []

    def initial_noise(self, search: Any) -> torch.Tensor | None:
        """A hook before the denoising loop: return a replacement for the initial latent, or None to keep it.

        ``search`` (``attnlens.sampler.NoiseSearch``) holds ``latents`` and ``parse`` and offers ``forward(z, it)``
        (a grad-enabled conditional UNet forward at the first timestep, recorded as phase ``noise_search``,
        iteration ``it``, returning the live maps), ``draw()`` (fresh noise from the run's generator) and
        ``log(it, values)`` (scalars)."""
        return None

    def attention_hook(self, pipe: Any, prompt: str, parse: Any):
        """A context manager installing the method's own attention processors for one sample (entered by
        ``attnlens.sample`` before the recorder, so that recording wraps them), or None."""
        return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
