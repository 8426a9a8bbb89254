"""The guided sampler: one readable denoising loop over a pipeline's components that any guidance method plugs into.

One loop serves every family (SD 1.x/2.x, SDXL, SD3, Flux, PixArt-Σ); what differs between them (prompt encoding,
latent preparation, ``scheduler.set_timesteps``, the denoiser's forward with or without classifier-free guidance,
``scheduler.step``, decoding) is the family's adapter (:mod:`attnlens.adapters`), which follows its diffusers
pipeline's ``__call__`` (diffusers 0.3x–0.42). Before the sampling forward of every step that the method's ``plan``
selects, the loop runs the guidance update of the released methods:

1. a separate, grad-enabled denoiser forward on the **conditional branch only** (batch 1, no CFG), recorded as phase
   ``guidance`` with its ``iteration``; the method's layers keep their autograd graph (``rec.live_maps``);
2. ``loss = method.loss(maps, parse, i)``; ``z ← z − α_i ∂L/∂z`` (plain gradient descent), with the refinement
   loop described in ``attnlens.methods.base``;
3. then the ordinary CFG forward (phase ``sample``) and scheduler step on the updated latent.

Only cross-attention probabilities are computed explicitly, and only in ``attn2`` layers that are recorded or that
the loss needs; every other attention layer keeps its fused kernel (the released code computes every layer's
attention explicitly, self-attention included, on every call).

With ``method="none"`` the loop performs exactly the operations of ``pipe(...)``, so latents are bit-identical to
a plain pipeline call with the same generator. The live maps come from the recorder (UNet families) or from
:class:`attnlens.live_text_maps.LiveTextMaps` (SD3, Flux, PixArt-Σ).
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .adapters import Conditioning, FamilyAdapter, adapter_for, method_defaults, pipeline_family
from .errors import AttnlensError, BadOption, ConfigError, EmptySelection
from .live_text_maps import SITES as TEXT_MAP_FAMILIES
from .live_text_maps import LiveTextMaps
from .methods import GuidanceMethod, LossOutput, get_method
from .parse import parse_prompt
from .recording import Recorder, RecordingConfig
from .selection import step_predicate
from .store import Run, open_run
from .tokens import check_prompt

ProgressFn = Callable[[int, int], None]


@dataclass
class SampleResult:
    """What ``guided_sample`` returns: the PIL image, the final latent and the per-step log."""

    image: Any
    latents: torch.Tensor
    log: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def _grad(loss: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    return torch.autograd.grad(loss, [latents], retain_graph=False)[0]


def guidance_forward(pipe, recorder: Recorder, method: GuidanceMethod, parse: Any, latents: torch.Tensor, t,
                     cond: torch.Tensor | Conditioning, step: int, iteration: int = 0,
                     adapter: FamilyAdapter | None = None) -> tuple[torch.Tensor, LossOutput]:
    """One grad-enabled denoiser forward on the conditional branch only, and the method's loss on its live maps.

    Returns the latent leaf (``requires_grad``) and the ``LossOutput``; ``∂loss/∂latent`` is then
    ``torch.autograd.grad(out.loss, [z])``. The forward is recorded as phase ``guidance``, iteration ``iteration``.
    ``recorder.need_live`` must hold ``method.layers(recorder.resolutions())``. ``cond`` is the family's
    ``Conditioning`` (``adapter.encode``), or, for SD 1.x/2.x, the conditional text embedding itself.
    """
    adapter = adapter or adapter_for(pipe)
    if torch.is_tensor(cond):
        cond = Conditioning(cond={"encoder_hidden_states": cond}, batched={}, cfg=False, dtype=cond.dtype)
    z = latents.detach().requires_grad_(True)
    with recorder.context(step, float(t), phase="guidance", iteration=iteration), torch.enable_grad():
        adapter.guidance_forward(z, t, cond)
        out = method.loss(recorder.live_maps, parse, step)
    return z, out


def check_sampling_options(*, seed: int | None, num_inference_steps: int, guidance_scale: float,
                           height: int | None, width: int | None) -> None:
    """Refuse values no sampler can use, with the option's name: a seed outside torch's generator range, fewer than
    one step, a guidance scale that is not a finite number ≥ 0, a height or width that is not positive."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not -2**63 <= seed < 2**64):
        raise BadOption(f"seed {seed!r} is not an integer in [-2^63, 2^64)", hint="pass a seed like 0, 1, 42")
    if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise BadOption(f"the number of steps must be at least 1, got {num_inference_steps!r}")
    if not math.isfinite(float(guidance_scale)) or guidance_scale < 0:
        raise BadOption(f"guidance scale must be a finite number ≥ 0, got {guidance_scale!r}",
                        hint="7.5 is Stable Diffusion's usual value; 1 disables classifier-free guidance")
    for name, v in (("height", height), ("width", width)):
        if v is not None and (not isinstance(v, int) or v <= 0):
            raise BadOption(f"{name} must be a positive number of pixels, got {v!r}",
                            hint="leave it out for the model's native size")


def guided_sample(
    pipe,
    prompt: str,
    *,
    method: GuidanceMethod | None = None,
    parse: Any = None,
    recorder: Recorder | None = None,
    seed: int | None = 0,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    height: int | None = None,
    width: int | None = None,
    negative_prompt: str | None = None,
    progress: ProgressFn | None = None,
) -> SampleResult:
    """Sample one image with an optional guidance method, recording through ``recorder`` if given.

    Args:
        pipe: a pipeline of a supported family (``attnlens.adapters``): SD 1.x/2.x, SDXL, SD3, Flux, PixArt-Σ.
        prompt (`str`): the prompt.
        method (`GuidanceMethod`, *optional*): None or ``none`` for plain sampling.
        parse (`Parse`, *optional*): the prompt's parse, required by methods that bind words.
        recorder (`Recorder`, *optional*): an *entered* recorder (``with attnlens.record(...) as rec``).
        seed (`int`, *optional*, defaults to 0): seeds a ``torch.Generator`` on the pipeline's device.

    Shapes:
        latents: (1, C, H/f, W/f).
    """
    adapter = adapter_for(pipe)
    check_sampling_options(seed=seed, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                           height=height, width=width)
    device = adapter.device
    default_h, default_w = adapter.default_size()
    height, width = height or default_h, width or default_w
    multiple = adapter.size_multiple()
    if height % multiple or width % multiple:
        raise ConfigError(f"height and width must be multiples of {multiple}, got {height}×{width}")
    generator = torch.Generator(device=device.type if device.type != "mps" else "cpu")
    generator = generator.manual_seed(seed) if seed is not None else generator
    do_cfg = adapter.uses_cfg(guidance_scale)
    guided = method is not None and method.name != "none"
    t0 = time.perf_counter()

    conditioning = adapter.encode(prompt, negative_prompt, do_cfg, height, width)
    conditioning.extra["guidance_scale"] = float(guidance_scale)
    latents, timesteps = adapter.prepare(conditioning, num_inference_steps, height, width, generator)
    n = len(timesteps)

    if recorder is not None:
        recorder.latent_hw = adapter.latent_hw(latents)
        recorder.n_steps = n
        recorder.set_batch_layout(do_cfg)
        if guided:
            recorder.need_live = set(method.layers(recorder.resolutions()))
            if not recorder.need_live:
                res = sorted({r[0] for r in recorder.resolutions().values()})
                raise EmptySelection(f"method '{method.name}' found no cross-attention layers it can use",
                                    hint=f"this model has maps at resolutions {res}; set the method's resolution option")
    elif guided:
        raise ConfigError("guided sampling needs a recorder (use attnlens.sample or attnlens.record(pipe, None))")

    log: list[dict[str, Any]] = []
    warned = False
    t_guid = 0.0

    def forward_loss(z: torch.Tensor, i: int, t, it: int) -> tuple[torch.Tensor, LossOutput]:
        return guidance_forward(pipe, recorder, method, parse, z, t, conditioning, i, it, adapter=adapter)

    def update(z: torch.Tensor, out: LossOutput, i: int, it: int, step_size: float) -> torch.Tensor:
        nonlocal warned
        loss = out.loss
        entry = {"loss": float(loss.detach()), **{k: float(v.detach()) if torch.is_tensor(v) else float(v)
                                                    for k, v in out.terms.items()}}
        applied = 0.0
        grad_norm = float("nan")
        if not torch.isfinite(loss.detach()):
            skip = True
        elif float(loss.detach()) == 0.0 or not loss.requires_grad:
            skip, grad_norm = True, 0.0
        else:
            g = _grad(loss, z)
            grad_norm = float(g.detach().norm())
            skip = not math.isfinite(grad_norm)
            if not skip:
                z = z.detach() - step_size * g
                applied = 1.0
        if not math.isfinite(entry["loss"]) or not math.isfinite(grad_norm):
            entry["nonfinite"] = 1.0
            if not warned:
                warnings.warn(f"non-finite loss or gradient at step {i} (iteration {it}); update skipped", stacklevel=2)
                warned = True
        entry.update(grad_norm=grad_norm, step_size=step_size, update_applied=applied)
        recorder.log_scalars(i, it, entry)
        log.append({"step": i, "iteration": it, **entry})
        return z.detach()

    for i, t in enumerate(timesteps):
        plan = method.plan(i, n) if guided else None
        if plan is not None:
            tg = time.perf_counter()
            z, out = forward_loss(latents, i, t, 0)
            it = 0
            if plan.max_refinement > 0 and method.refine(i, out):
                while True:
                    prev = out
                    z = update(z, out, i, it, plan.step_size)
                    it += 1
                    z, out = forward_loss(z, i, t, it)
                    if it >= plan.max_refinement or not method.refine(i, prev):
                        break
            latents = update(z, out, i, it, plan.step_size)
            recorder.log_scalars(i, 0, {"refinement_iterations": it})
            t_guid += time.perf_counter() - tg
        if recorder is not None:
            recorder.record_latent(i, adapter.stored_latent(latents))
        with torch.no_grad():
            wrap = (lambda: recorder.context(i, float(t), phase="sample")) if recorder is not None else None
            noise = adapter.sample_forward(latents, t, conditioning, guidance_scale, wrap=wrap)
            latents = adapter.step(noise, t, latents, conditioning)
        if progress is not None:
            progress(i + 1, n)

    if not torch.isfinite(latents).all():
        raise AttnlensError("the final latent is not finite (NaN/inf); the image would be blank",
                            hint="lower the method's step_size, or use fp32 (--dtype fp32)")
    with torch.no_grad():
        image = adapter.decode(latents, generator, height, width)
    if recorder is not None:
        recorder.record_final_latent(adapter.stored_latent(latents))
    total = time.perf_counter() - t0
    return SampleResult(image=image, latents=latents, log=log,
                        timings={"total_s": total, "guidance_s": t_guid, "steps": n})


def live_maps_for(pipe) -> Recorder | LiveTextMaps:
    """What gives a guidance forward its live maps on ``pipe`` (not entered, no storage): the recorder for the UNet
    families, ``LiveTextMaps`` for SD3, Flux and PixArt-Σ."""
    return LiveTextMaps(pipe) if pipeline_family(pipe) in TEXT_MAP_FAMILIES else Recorder(pipe, None)


def family_method(pipe, name: str, options: dict[str, Any] | None, height: int, width: int) -> GuidanceMethod:
    """The method ``name`` with the family defaults of ``pipe`` at ``height``×``width`` pixels
    (``attnlens.adapters.method_defaults``: the map resolution on SDXL and the DiTs) under the user's ``options``,
    which win."""
    options = dict(options or {})
    m = get_method(name, **options)
    family = pipeline_family(pipe)
    if family == "sd" or m.name == "none":
        return m
    probe = live_maps_for(pipe)  # not entered: only the layer sizes for this image size
    probe.latent_hw = (height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    defaults = {k: v for k, v in method_defaults(family, type(m.config), probe.resolutions()).items()
                if k not in options and getattr(m.config, k) != v}
    return get_method(name, **options, **defaults) if defaults else m


def sample(
    pipe,
    prompt: str,
    *,
    method: str | GuidanceMethod = "none",
    method_options: dict[str, Any] | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    height: int | None = None,
    width: int | None = None,
    spacy_model: str | None = None,
    bind: list[str] | None = None,
    include_entities: bool = False,
    recording: RecordingConfig | None = None,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    manifest: dict[str, Any] | None = None,
) -> Run | SampleResult:
    """Parse, guide, sample and record one (prompt, seed): the library form of ``attnlens record``.

    Args:
        pipe: a pipeline from ``attnlens.load_pipeline``.
        prompt (`str`): the prompt (at most 75 word pieces; longer prompts are truncated with a warning).
        method (`str` or `GuidanceMethod`, defaults to `"none"`): ``none``, ``syngen``, ``syngen-entropy``,
            ``attend-excite``, ``divide-bind``, a registered name, or ``path/to/file.py:function``.
        method_options (`dict`, *optional*): hyperparameter overrides, e.g. ``{"step_size": 10}``.
        seed (`int`, defaults to 0): generator seed.
        out (`str`, *optional*): run folder; None samples without storing.
        bind (`list[str]`, *optional*): manual sets ``["red>crown", "golden>strawberry"]`` overriding the parse.

    Returns:
        The opened ``Run`` when ``out`` is given, else the ``SampleResult``.

    Examples::

        >>> import attnlens
        >>> pipe = attnlens.load_pipeline()
        >>> run = attnlens.sample(pipe, "a red crown and a golden strawberry", method="syngen",
        ...                       seed=1, out="runs/crown-syngen-1", num_inference_steps=10)
        >>> run.manifest["method"]["name"]
        'syngen'
    """
    check_sampling_options(seed=seed, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                           height=height, width=width)
    prompt_info = check_prompt(prompt, pipe.tokenizer)
    adapter = adapter_for(pipe)
    default_h, default_w = adapter.default_size()
    height, width = height or default_h, width or default_w
    m = method if isinstance(method, GuidanceMethod) else family_method(pipe, method, method_options, height, width)
    parse = None
    if m.name != "none" or bind:

        parse = parse_prompt(prompt_info.text, tokenizer=adapter.text_tokenizer, spacy_model=spacy_model, bind=bind,
                             include_entities=include_entities)
        idle = m.idle_reason(parse) if m.name != "none" else None
        if idle:  # the run equals the unguided one: say so, here and in the manifest
            note = f"{m.name}: {idle}; this run is the same as --method none"
            prompt_info.warnings.append(note)
            warnings.warn(note, stacklevel=2)
    info: dict[str, Any] = {
        "prompt": prompt,
        "seed": seed,
        "steps": num_inference_steps,
        "guidance_scale": guidance_scale,
        "method": {"name": m.name, "hyperparameters": m.hyperparameters()},
        "parse": parse.to_dict() if parse is not None else None,
        "bind": list(bind) if bind else None,
        "prompt_warnings": prompt_info.warnings,
        **(manifest or {}),
    }
    cfg = recording or RecordingConfig()
    if cfg.steps is not None:
        wanted = step_predicate(cfg.steps)
        if not any(wanted(i) for i in range(num_inference_steps)):
            raise EmptySelection(f"the step selection {cfg.to_dict()['steps']!r} keeps none of the "
                                 f"{num_inference_steps} denoising steps (0..{num_inference_steps - 1})",
                                 hint="select steps inside the schedule, e.g. --steps 0:10, or leave --steps out")
    rec = Recorder(pipe, out, config=cfg, prompts=[prompt_info.text], seeds=[seed], manifest=info, overwrite=overwrite)
    dit = adapter.family in TEXT_MAP_FAMILIES  # live maps for the loss from LiveTextMaps, the store from rec
    with rec, (LiveTextMaps(pipe, store=rec) if dit else contextlib.nullcontext(rec)) as live:
        rec.annotate(height=height, width=width)
        result = guided_sample(pipe, prompt_info.text, method=m, parse=parse, recorder=live, seed=seed,
                               num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                               height=height, width=width, progress=progress)
        rec.annotate(timings=result.timings)
        rec.save_images([result.image], seeds=[seed])
    if out is None:
        return result
    return open_run(out)
