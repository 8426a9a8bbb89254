"""The guided sampler: one readable denoising loop over a pipeline's components that any guidance method plugs into.

One loop serves every family (SD 1.x/2.x, SDXL, SD3, Flux, PixArt-Σ, Sana); what differs between them (prompt encoding,
latent preparation, ``scheduler.set_timesteps``, the denoiser's forward with or without classifier-free guidance,
``scheduler.step``, decoding) is the family's adapter (:mod:`attnlens.adapters`), which follows its diffusers
pipeline's ``__call__`` (diffusers 0.3x–0.42). Before the sampling forward of every step that the method's ``plan``
selects, the loop runs the guidance update of the released methods:

1. a separate, grad-enabled denoiser forward on the **conditional branch only** (batch 1, no CFG), recorded as phase
   ``guidance`` with its ``iteration``; the method's layers keep their autograd graph (``rec.live_maps``);
2. ``loss = method.loss(maps, parse, i)``; ``z ← z − α_i ∂L/∂z`` (plain gradient descent), with the refinement
   loop described in ``attnlens.methods.base``;
3. then the ordinary CFG forward (phase ``sample``) and scheduler step on the updated latent.

Two more hook points, both methods' and both optional: before the loop, ``method.initial_noise(NoiseSearch)`` may
replace the initial latent (InitNO's noise search, recorded as phase ``noise_search``); around the whole sample,
``method.attention_hook(pipe, prompt, parse)`` may install the method's own attention processors (Structured
Diffusion), entered by ``sample`` before the recorder so that recording wraps them. The step's own update descends
``LossOutput.step_loss`` when a method sets it (InitNO: the cross-attention term), the refinement passes ``loss``.

Only cross-attention probabilities are computed explicitly, and only in ``attn2`` layers that are recorded or that
the loss needs (plus the ``attn1`` self-attention of the layers a method asks for, in its grad-enabled forwards); every other attention layer keeps its fused kernel (the released code computes every layer's
attention explicitly, self-attention included, on every call).

With ``method="none"`` the loop performs exactly the operations of ``pipe(...)``, so latents are bit-identical to
a plain pipeline call with the same generator. The live maps come from the recorder (UNet families) or from
:class:`attnlens.live_text_maps.LiveTextMaps` (SD3, Flux, PixArt-Σ, Sana).
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .adapters import Conditioning, FamilyAdapter, adapter_for, method_defaults, pipeline_family
from .cost import LargeRunWarning, available_memory, check_run_cost, free_disk, run_cost
from .errors import AttnlensError, BadOption, ConfigError, EmptySelection
from .interventions import Editor, Intervention, as_interventions
from .live_text_maps import SITES as TEXT_MAP_FAMILIES
from .live_text_maps import LiveTextMaps, check_guide_text
from .methods import GuidanceMethod, LossOutput, get_method
from .models.registry import model_info
from .models.shapes import unknown_words
from .methods._schedule import ScheduleWarning, schedule_note
from .parse import parse_prompt, suspicious_parse
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


@dataclass
class NoiseSearch:
    """What a method's ``initial_noise`` hook may use: the hook point for searches of the initial noise (InitNO).

    Attributes:
        latents: the initial latent the sampler drew, ``(1, C, h, w)``.
        parse: the prompt's parse.
    """

    pipe: Any
    recorder: Recorder
    latents: torch.Tensor
    parse: Any
    t: Any
    conditioning: Any  # attnlens.adapters.Conditioning
    generator: torch.Generator
    adapter: Any = None  # attnlens.adapters.FamilyAdapter

    def forward(self, z: torch.Tensor, iteration: int) -> dict[str, torch.Tensor]:
        """A grad-enabled denoiser forward of ``z`` (kept in the graph) on the conditional branch at the first
        timestep, recorded as phase ``noise_search``, iteration ``iteration``; returns the live maps."""
        with self.recorder.context(0, float(self.t), phase="noise_search", iteration=iteration), torch.enable_grad():
            self.adapter.guidance_forward(z, self.t, self.conditioning)
            return dict(self.recorder.live_maps)

    def draw(self) -> torch.Tensor:
        """Fresh initial noise from the run's generator (the next draw of its stream), shaped like ``latents``."""
        _, c, h, w = self.latents.shape
        f = self.pipe.vae_scale_factor
        return self.pipe.prepare_latents(1, c, h * f, w * f, self.latents.dtype, self.latents.device, self.generator)

    def log(self, iteration: int, values: dict[str, float]) -> None:
        """Store scalars of search iteration ``iteration`` (at step 0) as ``noise_search_<name>``."""
        self.recorder.log_scalars(0, iteration, {f"noise_search_{k}": v for k, v in values.items()})


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
        if hasattr(recorder, "set_prompt"):  # LiveTextMaps: Sana's key columns, SD3's CLIP ↔ T5 alignment
            recorder.set_prompt(prompt)
        if guided:
            recorder.need_live = set(method.layers(recorder.resolutions()))
            self_layers = method.self_attention_layers(recorder.resolutions())
            if self_layers and not hasattr(recorder, "watch_self_attention"):
                raise ConfigError(f"method '{method.name}' needs self-attention maps, which attnlens takes from UNet "
                                  "pipelines only (SD 1.x/2.x, SDXL)", hint="use another method on this model")
            if self_layers:
                recorder.watch_self_attention(self_layers)
            if not recorder.need_live and method.needs_maps:
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

    def update(z: torch.Tensor, out: LossOutput, i: int, it: int, step_size: float, final: bool = False) -> torch.Tensor:
        nonlocal warned
        loss = out.step_loss if final and out.step_loss is not None else out.loss
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

    if guided:
        found = method.initial_noise(NoiseSearch(pipe, recorder, latents, parse, timesteps[0], conditioning, generator,
                                                 adapter=adapter))
        if found is not None:
            latents = found.detach()
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
            latents = update(z, out, i, it, plan.step_size, final=True)
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


def check_interventions(pipe, edits: Sequence[Intervention], prompt: str, num_inference_steps: int,
                        height: int | None, width: int | None) -> None:
    """Refuse, before anything is written, interventions that cannot apply to this call: a word that is not in the
    prompt, a layer selection that matches nothing, a patch source of another model, image size or schedule."""
    tok = pipe.tokenizer
    editor = Editor(edits)
    editor.check_tokens(tok.convert_ids_to_tokens(tok(prompt, truncation=True).input_ids))
    f = pipe.vae_scale_factor
    height = height or pipe.unet.config.sample_size * f
    width = width or pipe.unet.config.sample_size * f
    probe = Recorder(pipe, None)  # only for the layers' resolutions at this latent size; never entered
    probe.latent_hw = (height // f, width // f)
    pipe.scheduler.set_timesteps(num_inference_steps, device=pipe.unet.device)
    editor.bind(list(probe.attn2), probe.resolutions(), (height, width), n_steps=len(pipe.scheduler.timesteps),
                timesteps=[float(t) for t in pipe.scheduler.timesteps], model_id=model_info(pipe).get("id"))


def check_method_family(method: GuidanceMethod, family: str) -> None:
    """Refuse, with a one-line error naming the method and the family, a method that runs on UNet pipelines only
    (``GuidanceMethod.unet_only``) on a transformer family (SD3, Flux, PixArt-Σ, Sana)."""
    if method.unet_only and family not in ("sd", "sdxl"):
        raise ConfigError(f"method '{method.name}' does not run on {family}: {method.unet_only}",
                          hint="every other built-in method runs on this model (syngen, attend-excite, "
                               "divide-bind, conform, ...); or use an SD 1.x/2.x or SDXL model")


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
    interventions: Sequence[Intervention | str | dict[str, Any]] | None = None,
    guide_text: str | None = None,
) -> Run | SampleResult:
    """Parse, guide, sample and record one (prompt, seed): the library form of ``attnlens record``.

    Args:
        pipe: a pipeline from ``attnlens.load_pipeline``.
        prompt (`str`): the prompt (at most 75 word pieces; longer prompts are truncated with a warning).
        method (`str` or `GuidanceMethod`, defaults to `"none"`): ``none``, ``syngen``, ``syngen-entropy``,
            ``attend-excite``, ``divide-bind``, ``initno``, ``structured``, a registered name, or
            ``path/to/file.py:function``.
        method_options (`dict`, *optional*): hyperparameter overrides, e.g. ``{"step_size": 10}``.
        seed (`int`, defaults to 0): generator seed.
        out (`str`, *optional*): run folder; None samples without storing.
        bind (`list[str]`, *optional*): manual sets ``["red>crown", "golden>strawberry"]`` overriding the parse.
        interventions (`list`, *optional*): edits of the cross-attention probabilities (``Intervention`` objects,
            their text forms such as ``"swap red blue steps=0:10 layers=res16"``, or dicts; docs/interventions.md),
            applied in the guidance and sampling forwards and listed in the manifest.
        guide_text (`str`, *optional*): SD3 only: the text positions a method's words map to, ``clip`` (the
            default), ``t5`` or ``both`` (the mean of a word's CLIP and T5 maps; docs/methods.md, "Families");
            stored as the manifest's ``method.guide_text``. Other families refuse it.

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
    check_guide_text(adapter.family, guide_text)
    default_h, default_w = adapter.default_size()
    height, width = height or default_h, width or default_w
    unknown = unknown_words(model_info(pipe).get("id"), prompt)
    if unknown:  # a testbed model draws only its own small world: say which words it cannot draw
        note = (f"{model_info(pipe).get('id')} never saw {', '.join(repr(w) for w in unknown[:6])} in training (its "
                "world: six colours, four shapes, big/small, 'and', 'next to'); their maps and the image mean little")
        prompt_info.warnings.append(note)
        warnings.warn(note, stacklevel=2)
    m = method if isinstance(method, GuidanceMethod) else family_method(pipe, method, method_options, height, width)
    check_method_family(m, adapter.family)
    parse = None
    if m.name != "none" or bind:

        # the pieces the loss's maps index: SD3 guided on T5 (--guide-text t5) is parsed with its T5 tokenizer
        tokenizer = pipe.tokenizer_3 if guide_text == "t5" else adapter.text_tokenizer
        parse = parse_prompt(prompt_info.text, tokenizer=tokenizer, spacy_model=spacy_model, bind=bind,
                             include_entities=include_entities)
        odd = suspicious_parse(parse) if m.name != "none" and not bind else None
        if odd:
            prompt_info.warnings.append(odd)
            warnings.warn(odd, stacklevel=2)
        note = schedule_note(m.name, m.hyperparameters(), num_inference_steps) if m.name != "none" else None
        if note:  # a schedule written for 50 steps means something else here: say so, here and in the manifest
            prompt_info.warnings.append(note)
            warnings.warn(note, ScheduleWarning, stacklevel=2)
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
        "method": {"name": m.name, "hyperparameters": m.hyperparameters(),
                   **({"guide_text": guide_text} if guide_text else {})},
        "parse": parse.to_dict() if parse is not None else None,
        "bind": list(bind) if bind else None,
        "prompt_warnings": prompt_info.warnings,
        **(manifest or {}),
    }
    edits = as_interventions(interventions)
    if edits and getattr(pipe, "unet", None) is None:
        raise ConfigError(f"interventions edit UNet cross-attention (SD 1.x/2.x, SDXL); {adapter.family} runs can be "
                          "recorded and guided, not yet intervened on", hint="leave out the interventions for this model")
    if edits:
        check_interventions(pipe, edits, prompt_info.text, num_inference_steps, height, width)
    cfg = recording or RecordingConfig()
    if cfg.steps is not None:
        wanted = step_predicate(cfg.steps)
        if not any(wanted(i) for i in range(num_inference_steps)):
            raise EmptySelection(f"the step selection {cfg.to_dict()['steps']!r} keeps none of the "
                                 f"{num_inference_steps} denoising steps (0..{num_inference_steps - 1})",
                                 hint="select steps inside the schedule, e.g. --steps 0:10, or leave --steps out")
    # refuse what cannot fit and announce what is unusually large, before anything is written (attnlens.cost)
    cost = run_cost(pipe, height=height, width=width, n_steps=num_inference_steps, config=cfg,
                    n_tokens=len(prompt_info.pieces) + 2, cfg=guidance_scale > 1)
    for note in check_run_cost(cost, memory=available_memory(pipe.device), disk=free_disk(out)):
        warnings.warn(note, LargeRunWarning, stacklevel=2)
    rec = Recorder(pipe, out, config=cfg, prompts=[prompt_info.text], seeds=[seed], manifest=info, overwrite=overwrite,
                   interventions=edits)
    dit = adapter.family in TEXT_MAP_FAMILIES  # live maps for the loss from LiveTextMaps, the store from rec
    with contextlib.ExitStack() as hooks:
        hook = m.attention_hook(pipe, prompt_info.text, parse) if m.name != "none" else None
        if hook is not None:  # the method's processors first: the recorder wraps them, so maps stay the real ones
            hooks.enter_context(hook)
        hooks.enter_context(rec)
        live = hooks.enter_context(LiveTextMaps(pipe, text=guide_text, store=rec) if dit else
                                   contextlib.nullcontext(rec))
        rec.annotate(height=height, width=width)
        result = guided_sample(pipe, prompt_info.text, method=m, parse=parse, recorder=live, seed=seed,
                               num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                               height=height, width=width, progress=progress)
        rec.annotate(timings=result.timings)
        rec.save_images([result.image], seeds=[seed])
    if out is None:
        return result
    return open_run(out)
