"""Per-family adapters of the guided sampler: what differs between SD 1.x/2.x, SDXL, SD3, Flux and PixArt-Σ.

The sampler (:mod:`attnlens.sampler`) owns one denoising loop; an adapter answers, for one pipeline family, the
questions whose answers differ: how the prompt is encoded (and what extra conditioning the denoiser takes), how the
initial latent and the schedule are made, what one forward of the denoiser looks like (for sampling, with or without
classifier-free guidance, and for guidance: the conditional branch alone), how the scheduler steps and how a latent
is decoded. Each adapter follows its diffusers pipeline's ``__call__`` (diffusers 0.3x–0.42) operation for
operation, so that ``method="none"`` gives the latents of ``pipe(...)`` bit for bit:

=========  =================================  ============================================================
family     pipeline                           what its adapter adds to the SD 1.x/2.x loop
=========  =================================  ============================================================
``sd``     ``StableDiffusionPipeline``        —
``sdxl``   ``StableDiffusionXLPipeline``      pooled text embedding and time ids (``added_cond_kwargs``)
``sd3``    ``StableDiffusion3Pipeline``       flow matching (``FlowMatchEulerDiscreteScheduler``), pooled
                                              projections, joint attention; timesteps per sample
``flux``   ``FluxPipeline``                   no CFG (a guidance *embedding* instead), packed 2×2 latents,
                                              text/image position ids, dynamic shift of the schedule
``pixart`` ``PixArtSigmaPipeline``            T5 text with its attention mask, learned-sigma output halved
``sana``   ``SanaPipeline``                   Gemma-2 text behind the pipeline's instruction, its mask,
                                              ``timestep_scale``, float32 latents, ``AutoencoderDC``
=========  =================================  ============================================================

Conditioning is held in a :class:`Conditioning`: the keyword arguments of the denoiser for the conditional branch
(``cond``) and for the batched sampling forward (``batched``: ``[uncond, cond]`` with CFG).

The per-family *guidance* defaults (which layers feed a method's loss, at what resolution, which text positions)
are :func:`method_defaults`; docs/methods.md ("Families") says where each comes from.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import numpy as np
import torch

from .errors import ConfigError

FAMILIES = ("sd", "sdxl", "sd3", "flux", "pixart", "sana")


@dataclass
class Conditioning:
    """The denoiser's text conditioning for one prompt.

    Attributes:
        cond: keyword arguments of the denoiser for the conditional branch alone (batch 1): the guidance forward.
        batched: keyword arguments of the sampling forward (``[uncond, cond]`` along the batch with CFG, else
            ``cond``).
        cfg: whether the sampling forward carries the two CFG halves.
        dtype: the dtype of the text embedding (the latents are made in it, as the pipelines do).
    """

    cond: dict[str, Any]
    batched: dict[str, Any]
    cfg: bool
    dtype: torch.dtype
    extra: dict[str, Any] = field(default_factory=dict)


class FamilyAdapter:
    """The SD 1.x/2.x adapter (``StableDiffusionPipeline.__call__``) and the base of the others.

    Subclasses override the steps whose operations differ; every method works on the pipeline's components only
    (never calls the pipeline's ``__call__``).
    """

    family: ClassVar[str] = "sd"
    denoiser_name: ClassVar[str] = "unet"
    #: the tokenizer whose pieces index the text positions of the guidance maps (what a parse is made with)
    text_tokenizer_name: ClassVar[str] = "tokenizer"

    def __init__(self, pipe):
        self.pipe = pipe

    @property
    def text_tokenizer(self):
        return getattr(self.pipe, self.text_tokenizer_name)

    # -- sizes ------------------------------------------------------------------------------------------------------
    @property
    def denoiser(self):
        return getattr(self.pipe, self.denoiser_name)

    @property
    def device(self) -> torch.device:
        return self.denoiser.device

    def default_size(self) -> tuple[int, int]:
        """The pipeline's native (height, width) in pixels."""
        side = self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor
        return side, side

    def size_multiple(self) -> int:
        """Heights and widths must be multiples of this (the VAE's factor, times the patch size for DiTs)."""
        return self.pipe.vae_scale_factor

    def latent_hw(self, latents: torch.Tensor) -> tuple[int, int]:
        """The spatial (h, w) of a latent as the recorder derives map sizes from it."""
        return tuple(latents.shape[-2:])

    def uses_cfg(self, guidance_scale: float) -> bool:
        return guidance_scale > 1.0

    def stored_latent(self, latents: torch.Tensor) -> torch.Tensor:
        """The latent as a run stores it, ``(1, C, h, w)`` (Flux unpacks its 2×2 patches)."""
        return latents

    # -- setup ------------------------------------------------------------------------------------------------------
    def encode(self, prompt: str, negative_prompt: str | None, cfg: bool, height: int, width: int) -> Conditioning:
        with torch.no_grad():
            cond, uncond = self.pipe.encode_prompt(prompt, self.device, 1, cfg, negative_prompt=negative_prompt)
        embeds = torch.cat([uncond, cond]) if cfg else cond
        return Conditioning(cond={"encoder_hidden_states": cond}, batched={"encoder_hidden_states": embeds},
                            cfg=cfg, dtype=cond.dtype)

    def prepare(self, conditioning: Conditioning, n_steps: int, height: int, width: int,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Set the schedule and draw the initial latent (in the pipeline's order); returns (latents, timesteps)."""
        pipe = self.pipe
        pipe.scheduler.set_timesteps(n_steps, device=self.device)
        latents = pipe.prepare_latents(1, pipe.unet.config.in_channels, height, width, conditioning.dtype, self.device,
                                       generator)
        conditioning.extra["step"] = pipe.prepare_extra_step_kwargs(generator, 0.0)
        return latents, pipe.scheduler.timesteps

    # -- forwards ---------------------------------------------------------------------------------------------------
    def model_input(self, latents: torch.Tensor, t) -> torch.Tensor:
        return self.pipe.scheduler.scale_model_input(latents, t)

    def call(self, latents: torch.Tensor, t, kwargs: dict[str, Any]) -> torch.Tensor:
        """One denoiser forward on ``latents`` (already scaled) with conditioning ``kwargs``."""
        return self.pipe.unet(latents, t, **kwargs, return_dict=False)[0]

    def guidance_forward(self, z: torch.Tensor, t, conditioning: Conditioning) -> torch.Tensor:
        """The denoiser on the conditional branch alone (batch 1): the forward whose maps a guidance loss reads."""
        return self.call(self.model_input(z, t), t, conditioning.cond)

    def sample_forward(self, latents: torch.Tensor, t, conditioning: Conditioning, guidance_scale: float,
                       wrap=None) -> torch.Tensor:
        """The sampling forward and classifier-free guidance: the noise (or velocity) the scheduler steps with.
        ``wrap`` is a context manager factory entered around the denoiser call (the recorder's step context)."""
        model_input = torch.cat([latents] * 2) if conditioning.cfg else latents
        model_input = self.model_input(model_input, t)
        if wrap is not None:
            with wrap():
                noise = self.call(model_input, t, conditioning.batched)
        else:
            noise = self.call(model_input, t, conditioning.batched)
        if conditioning.cfg:
            noise_uncond, noise_text = noise.chunk(2)
            noise = noise_uncond + guidance_scale * (noise_text - noise_uncond)
        return self.postprocess_noise(noise, latents)

    def postprocess_noise(self, noise: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        return noise

    def step(self, noise: torch.Tensor, t, latents: torch.Tensor, conditioning: Conditioning) -> torch.Tensor:
        return self.pipe.scheduler.step(noise, t, latents, **conditioning.extra.get("step", {}), return_dict=False)[0]

    # -- output -----------------------------------------------------------------------------------------------------
    def decode(self, latents: torch.Tensor, generator: torch.Generator, height: int, width: int):
        pipe = self.pipe
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False, generator=generator)[0]
        return pipe.image_processor.postprocess(image, output_type="pil", do_denormalize=[True])[0]


class SDXLAdapter(FamilyAdapter):
    """``StableDiffusionXLPipeline.__call__``: two CLIP encoders, the pooled embedding and the time ids go to the
    UNet as ``added_cond_kwargs`` (original size = target size = the requested size, crop (0, 0))."""

    family = "sdxl"

    def default_size(self) -> tuple[int, int]:
        side = self.pipe.default_sample_size * self.pipe.vae_scale_factor
        return side, side

    def encode(self, prompt, negative_prompt, cfg, height, width) -> Conditioning:
        pipe = self.pipe
        with torch.no_grad():
            pe, npe, pooled, npooled = pipe.encode_prompt(prompt=prompt, device=self.device, num_images_per_prompt=1,
                                                          do_classifier_free_guidance=cfg,
                                                          negative_prompt=negative_prompt)
        proj = (int(pooled.shape[-1]) if pipe.text_encoder_2 is None else pipe.text_encoder_2.config.projection_dim)
        time_ids = pipe._get_add_time_ids((height, width), (0, 0), (height, width), dtype=pe.dtype,
                                          text_encoder_projection_dim=proj)
        cond = {"encoder_hidden_states": pe.to(self.device),
                "added_cond_kwargs": {"text_embeds": pooled.to(self.device), "time_ids": time_ids.to(self.device)}}
        if cfg:
            batched = {"encoder_hidden_states": torch.cat([npe, pe], dim=0).to(self.device),
                       "added_cond_kwargs": {"text_embeds": torch.cat([npooled, pooled], dim=0).to(self.device),
                                             "time_ids": torch.cat([time_ids, time_ids], dim=0).to(self.device)}}
        else:
            batched = cond
        return Conditioning(cond=cond, batched=batched, cfg=cfg, dtype=pe.dtype)

    def prepare(self, conditioning, n_steps, height, width, generator):
        latents, timesteps = super().prepare(conditioning, n_steps, height, width, generator)
        if self.pipe.unet.config.time_cond_proj_dim is not None:
            raise ConfigError("SDXL UNets with a guidance-scale embedding (LCM-distilled) are not supported by the "
                              "guided sampler", hint="use a regular SDXL checkpoint")
        if hasattr(self.pipe.scheduler, "set_begin_index"):
            self.pipe.scheduler.set_begin_index(0)
        return latents, timesteps

    def decode(self, latents, generator, height, width):
        pipe = self.pipe
        vae = pipe.vae
        mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
        if mean is not None and std is not None:
            mean = torch.tensor(mean).view(1, 4, 1, 1).to(latents.device, latents.dtype)
            std = torch.tensor(std).view(1, 4, 1, 1).to(latents.device, latents.dtype)
            latents = latents * std / vae.config.scaling_factor + mean
        else:
            latents = latents / vae.config.scaling_factor
        upcast = vae.dtype == torch.float16 and vae.config.force_upcast
        image = vae.to(torch.float32).decode(latents.float(), return_dict=False)[0] if upcast else \
            vae.decode(latents, return_dict=False)[0]
        if upcast:
            vae.to(torch.float16)
        if getattr(pipe, "watermark", None) is not None:
            image = pipe.watermark.apply_watermark(image)
        return pipe.image_processor.postprocess(image, output_type="pil")[0]


class SD3Adapter(FamilyAdapter):
    """``StableDiffusion3Pipeline.__call__``: CLIP-L + CLIP-G + T5 (joint text sequence: the 77 CLIP positions,
    then the T5 pieces), pooled projections, flow matching (no ``scale_model_input``; the timestep is expanded to the
    batch), decoding with the VAE's shift factor."""

    family = "sd3"
    denoiser_name = "transformer"
    max_sequence_length: int = 256

    def default_size(self):
        side = self.pipe.default_sample_size * self.pipe.vae_scale_factor
        return side, side

    def size_multiple(self) -> int:
        return self.pipe.vae_scale_factor * self.pipe.transformer.config.patch_size

    def encode(self, prompt, negative_prompt, cfg, height, width) -> Conditioning:
        with torch.no_grad():
            pe, npe, pooled, npooled = self.pipe.encode_prompt(
                prompt=prompt, prompt_2=None, prompt_3=None, negative_prompt=negative_prompt,
                do_classifier_free_guidance=cfg, device=self.device, num_images_per_prompt=1,
                max_sequence_length=self.max_sequence_length)
        cond = {"encoder_hidden_states": pe, "pooled_projections": pooled}
        batched = ({"encoder_hidden_states": torch.cat([npe, pe], dim=0),
                    "pooled_projections": torch.cat([npooled, pooled], dim=0)} if cfg else cond)
        return Conditioning(cond=cond, batched=batched, cfg=cfg, dtype=pe.dtype)

    def _schedule_kwargs(self, latents: torch.Tensor, seq_len: int) -> dict[str, Any]:
        config = self.pipe.scheduler.config
        if not config.get("use_dynamic_shifting", None):
            return {}
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        mu = calculate_shift(seq_len, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                             config.get("base_shift", 0.5), config.get("max_shift", 1.16))
        return {"mu": mu}

    def prepare(self, conditioning, n_steps, height, width, generator):
        pipe = self.pipe
        latents = pipe.prepare_latents(1, pipe.transformer.config.in_channels, height, width, conditioning.dtype,
                                       self.device, generator)
        p = pipe.transformer.config.patch_size
        kwargs = self._schedule_kwargs(latents, (latents.shape[-2] // p) * (latents.shape[-1] // p))
        pipe.scheduler.set_timesteps(n_steps, device=self.device, **kwargs)
        return latents, pipe.scheduler.timesteps

    def model_input(self, latents, t):
        return latents

    def call(self, latents, t, kwargs):
        return self.pipe.transformer(hidden_states=latents, timestep=t.expand(latents.shape[0]), **kwargs,
                                     joint_attention_kwargs=None, return_dict=False)[0]

    def step(self, noise, t, latents, conditioning):
        return self.pipe.scheduler.step(noise, t, latents, return_dict=False)[0]

    def decode(self, latents, generator, height, width):
        pipe = self.pipe
        latents = (latents / pipe.vae.config.scaling_factor) + pipe.vae.config.shift_factor
        image = pipe.vae.decode(latents, return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type="pil")[0]


class FluxAdapter(SD3Adapter):
    """``FluxPipeline.__call__``: no classifier-free guidance (a distilled guidance *embedding* carries the scale;
    ``guidance_scale`` fills it), latents packed 2×2 into a sequence with image position ids, T5 text only in the
    attention (CLIP only pooled), a dynamically shifted flow-matching schedule, timesteps divided by 1000."""

    family = "flux"
    max_sequence_length = 512
    text_tokenizer_name = "tokenizer_2"  # the attention sees T5 only

    def size_multiple(self) -> int:
        return self.pipe.vae_scale_factor * 2

    def latent_hw(self, latents):
        return self._hw

    def stored_latent(self, latents):
        return self.pipe._unpack_latents(latents, self._hw[0] * self.pipe.vae_scale_factor,
                                         self._hw[1] * self.pipe.vae_scale_factor, self.pipe.vae_scale_factor)

    def uses_cfg(self, guidance_scale: float) -> bool:
        return False  # Flux-dev/schnell are guidance-distilled; "true CFG" with a negative prompt is not supported

    def encode(self, prompt, negative_prompt, cfg, height, width) -> Conditioning:
        with torch.no_grad():
            pe, pooled, text_ids = self.pipe.encode_prompt(prompt=prompt, prompt_2=None, device=self.device,
                                                           num_images_per_prompt=1,
                                                           max_sequence_length=self.max_sequence_length)
        cond = {"encoder_hidden_states": pe, "pooled_projections": pooled, "txt_ids": text_ids}
        return Conditioning(cond=cond, batched=cond, cfg=False, dtype=pe.dtype)

    def prepare(self, conditioning, n_steps, height, width, generator):
        pipe = self.pipe
        latents, image_ids = pipe.prepare_latents(1, pipe.transformer.config.in_channels // 4, height, width,
                                                  conditioning.dtype, self.device, generator)
        conditioning.cond["img_ids"] = image_ids
        f = pipe.vae_scale_factor * 2
        self._hw = (2 * (int(height) // f), 2 * (int(width) // f))
        sigmas = np.linspace(1.0, 1 / n_steps, n_steps)
        if getattr(pipe.scheduler.config, "use_flow_sigmas", False):
            sigmas = None
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        config = pipe.scheduler.config
        mu = calculate_shift(latents.shape[1], config.get("base_image_seq_len", 256),
                             config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                             config.get("max_shift", 1.15))
        if sigmas is None:
            pipe.scheduler.set_timesteps(n_steps, device=self.device, mu=mu)
        else:
            pipe.scheduler.set_timesteps(sigmas=sigmas, device=self.device, mu=mu)
        if pipe.transformer.config.guidance_embeds:
            guidance = torch.full([1], conditioning.extra["guidance_scale"], device=self.device, dtype=torch.float32)
            conditioning.cond["guidance"] = guidance.expand(latents.shape[0])
        else:
            conditioning.cond["guidance"] = None
        pipe.scheduler.set_begin_index(0)
        return latents, pipe.scheduler.timesteps

    def call(self, latents, t, kwargs):
        timestep = t.expand(latents.shape[0]).to(latents.dtype)
        transformer = self.pipe.transformer
        ctx = transformer.cache_context("cond") if hasattr(transformer, "cache_context") else _null()
        with ctx:
            return transformer(hidden_states=latents, timestep=timestep / 1000, **kwargs, joint_attention_kwargs=None,
                               return_dict=False)[0]

    def sample_forward(self, latents, t, conditioning, guidance_scale, wrap=None):
        if wrap is not None:
            with wrap():
                return self.call(latents, t, conditioning.cond)
        return self.call(latents, t, conditioning.cond)

    def decode(self, latents, generator, height, width):
        pipe = self.pipe
        latents = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
        return super().decode(latents, generator, height, width)


class PixArtAdapter(FamilyAdapter):
    """``PixArtSigmaPipeline.__call__`` (without resolution binning: the requested size is sampled as given): T5
    text with its attention mask (negative prompt ``""``), DPM-Solver/DDPM-style schedulers with
    ``scale_model_input``, the timestep expanded to the batch, the learned-sigma half of the output dropped."""

    family = "pixart"
    denoiser_name = "transformer"
    max_sequence_length = 300

    def default_size(self):
        side = self.pipe.transformer.config.sample_size * self.pipe.vae_scale_factor
        return side, side

    def size_multiple(self) -> int:
        return self.pipe.vae_scale_factor * self.pipe.transformer.config.patch_size

    #: the dtype of the initial latent (None: the text embedding's, as PixArt-Σ's pipeline makes it)
    latent_dtype: ClassVar[torch.dtype | None] = None

    def prompt_kwargs(self) -> dict[str, Any]:
        """Extra keyword arguments of the pipeline's ``encode_prompt``."""
        return {}

    def added_cond(self) -> dict[str, Any]:
        """Extra keyword arguments of the transformer (PixArt-Σ: no micro-conditions)."""
        return {"added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}

    def encode(self, prompt, negative_prompt, cfg, height, width) -> Conditioning:
        with torch.no_grad():
            pe, mask, npe, nmask = self.pipe.encode_prompt(prompt, cfg, negative_prompt=negative_prompt or "",
                                                           num_images_per_prompt=1, device=self.device,
                                                           clean_caption=False,
                                                           max_sequence_length=self.max_sequence_length,
                                                           **self.prompt_kwargs())
        extra = self.added_cond()
        cond = {"encoder_hidden_states": pe, "encoder_attention_mask": mask, **extra}
        batched = ({"encoder_hidden_states": torch.cat([npe, pe], dim=0),
                    "encoder_attention_mask": torch.cat([nmask, mask], dim=0), **extra} if cfg else cond)
        return Conditioning(cond=cond, batched=batched, cfg=cfg, dtype=self.latent_dtype or pe.dtype)

    def prepare(self, conditioning, n_steps, height, width, generator):
        pipe = self.pipe
        pipe.scheduler.set_timesteps(n_steps, device=self.device)
        latents = pipe.prepare_latents(1, pipe.transformer.config.in_channels, height, width, conditioning.dtype,
                                       self.device, generator)
        conditioning.extra["step"] = pipe.prepare_extra_step_kwargs(generator, 0.0)
        return latents, pipe.scheduler.timesteps

    def call(self, latents, t, kwargs):
        timestep = t if torch.is_tensor(t) else torch.tensor([t], device=latents.device)
        if timestep.ndim == 0:
            timestep = timestep[None].to(latents.device)
        return self.pipe.transformer(latents, timestep=timestep.expand(latents.shape[0]), **kwargs,
                                     return_dict=False)[0]

    def postprocess_noise(self, noise, latents):
        if self.pipe.transformer.config.out_channels // 2 == latents.shape[1]:
            return noise.chunk(2, dim=1)[0]
        return noise

    def decode(self, latents, generator, height, width):
        pipe = self.pipe
        image = pipe.vae.decode(latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor, return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type="pil")[0]


class SanaAdapter(PixArtAdapter):
    """``SanaPipeline.__call__`` (without resolution binning): Gemma-2 text with its attention mask, the prompt
    behind the pipeline's default ``complex_human_instruction`` (the encoder reads instruction + prompt; the
    pipeline keeps the first position and the last ``max_sequence_length − 1``), the timestep times the
    transformer's ``timestep_scale``, float32 latents (the transformer's dtype only for its call, its output back to
    float32), the learned-sigma half dropped after CFG, the scheduler's extra step arguments, ``AutoencoderDC``
    decoding."""

    family = "sana"
    latent_dtype = torch.float32

    def instruction(self) -> list[str]:
        """The pipeline's default ``complex_human_instruction`` (read from its ``__call__``, so it follows the
        installed diffusers)."""
        return list(inspect.signature(type(self.pipe).__call__).parameters["complex_human_instruction"].default)

    def prompt_kwargs(self) -> dict[str, Any]:
        return {"complex_human_instruction": self.instruction()}

    def added_cond(self) -> dict[str, Any]:
        return {}

    def text_columns(self, prompt: str) -> list[int]:
        """The key column of each live-map position, so that a word sits where a parse with the Gemma tokenizer
        puts it (``<bos>`` at 0, prompt piece k at k + 1): 0 (``<bos>``); then for each piece of the prompt
        tokenised alone, the first kept column whose characters overlap the piece's (the pipeline tokenises
        instruction + the lower-cased prompt, so the first piece may carry the instruction's trailing space, ``▁a``
        for ``a``, or follow a lone ``▁`` column: prompt piece k then sits at column k + 2); then every column after
        the last prompt column (padding, masked). Columns of the instruction are left out."""
        tok = self.pipe.tokenizer
        tok.padding_side = "right"
        chi = "\n".join(self.instruction())
        n = self.max_sequence_length
        length = len(tok.encode(chi)) + n - 2
        text = self.pipe._text_preprocessing(prompt, clean_caption=False)[0]  # lower-cased and stripped
        full = tok(chi + text, padding="max_length", max_length=length, truncation=True,
                   return_offsets_mapping=True)["offset_mapping"]
        kept = [full[0]] + list(full[len(full) - n + 1:])
        shift = len(chi) - (len(prompt) - len(prompt.lstrip()))  # sequence characters → the prompt's
        spans = [(a - shift, b - shift) for a, b in kept]
        alone = tok(prompt, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        columns = [0]
        for a, b in alone:
            hit = next((c for c, (x, y) in enumerate(spans) if c > 0 and y > x and x < b and y > a), None)
            if hit is None:  # cut off by max_sequence_length: the rest of the prompt is not attended
                break
            columns.append(hit)
        return columns + list(range(columns[-1] + 1, n))

    def model_input(self, latents, t):
        return latents

    def call(self, latents, t, kwargs):
        transformer = self.pipe.transformer
        dtype = transformer.dtype
        timestep = t.expand(latents.shape[0]) * transformer.config.timestep_scale
        kwargs = {**kwargs, "encoder_hidden_states": kwargs["encoder_hidden_states"].to(dtype=dtype)}
        return transformer(latents.to(dtype=dtype), **kwargs, timestep=timestep, return_dict=False,
                           attention_kwargs=None)[0].float()


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


#: pipeline class name → adapter (subclasses of these pipelines resolve through their bases)
_BY_PIPELINE: dict[str, type[FamilyAdapter]] = {
    "StableDiffusionPipeline": FamilyAdapter,
    "StableDiffusionXLPipeline": SDXLAdapter,
    "StableDiffusion3Pipeline": SD3Adapter,
    "FluxPipeline": FluxAdapter,
    "PixArtSigmaPipeline": PixArtAdapter,
    "SanaPipeline": SanaAdapter,
}


def pipeline_family(pipe) -> str:
    """The family of a pipeline (``sd``, ``sdxl``, ``sd3``, ``flux``, ``pixart``), from its class or a base class.

    Raises:
        ConfigError: a pipeline of no supported family.
    """
    return adapter_class(pipe).family


def adapter_class(pipe) -> type[FamilyAdapter]:
    for cls in type(pipe).__mro__:
        if cls.__name__ in _BY_PIPELINE:
            return _BY_PIPELINE[cls.__name__]
    raise ConfigError(f"guided sampling does not support {type(pipe).__name__}",
                      hint="supported: " + ", ".join(_BY_PIPELINE))


def adapter_for(pipe) -> FamilyAdapter:
    """The adapter of ``pipe``'s family (see :data:`FAMILIES`)."""
    return adapter_class(pipe)(pipe)


# ----------------------------------------------------------------------------------------------------------------
# Per-family guidance defaults
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FamilyDefaults:
    """Where a family's guidance losses read their maps, by default.

    Attributes:
        resolution: ``"method"``: each method's own default (SD 1.x/2.x: 16, the released value); ``"coarsest"``:
            the side of the model's coarsest cross-attention maps (SDXL at 1024 px: 32, i.e. latent/4 as 16 is for
            SD 1.x at 512 px; the DiTs: the patch grid, where every block has the same size).
        text: which text positions the words map to: ``clip`` (the 77 CLIP positions), ``t5`` (the T5 pieces) or
            ``gemma`` (Sana: the Gemma pieces, see ``SanaAdapter.text_columns``).
        source: where the choice comes from (shown in docs/methods.md).
    """

    resolution: str
    text: str
    source: str


FAMILY_DEFAULTS: dict[str, FamilyDefaults] = {
    "sd": FamilyDefaults("method", "clip", "the released code of each method (16×16 at 512 px)"),
    "sdxl": FamilyDefaults("coarsest", "clip", "attnlens: the coarsest cross-attention maps (32×32 at 1024 px: "
                                               "latent/4, as 16×16 is for SD 1.x at 512 px)"),
    "sd3": FamilyDefaults("coarsest", "clip", "gsn-factory (grimalPaul/gsn-factory): all 24 joint blocks, maps at "
                                              "the patch grid (latent/2)"),
    "flux": FamilyDefaults("coarsest", "t5", "gsn-factory: all double-stream blocks at the patch grid; Flux's "
                                             "attention sees T5 pieces only"),
    "pixart": FamilyDefaults("coarsest", "t5", "attnlens: every cross-attention block at the patch grid; T5 pieces "
                                               "(PixArt-Σ's only text encoder)"),
    "sana": FamilyDefaults("coarsest", "gemma", "attnlens (no released guidance port for Sana): every cross-attention "
                                                "block at the patch grid; Gemma pieces at the positions of a parse "
                                                "with the Gemma tokenizer"),
}


def method_defaults(family: str, config_cls: Any, resolutions: Mapping[str, tuple[int, int]]) -> dict[str, Any]:
    """The option overrides a method gets on ``family``, given the model's map sizes ``{layer: (h, w)}``:
    ``{"resolution": side}`` for a method whose ``Config`` has a ``resolution`` field, on a family whose default
    is the coarsest maps; empty for SD 1.x/2.x (the released defaults). The user's options win over these.

    Examples::

        >>> from attnlens.adapters import method_defaults
        >>> from attnlens.methods.syngen import SynGen
        >>> sdxl = {"down_blocks.1.attentions.0.transformer_blocks.0.attn2": (64, 64),
        ...         "down_blocks.2.attentions.0.transformer_blocks.0.attn2": (32, 32)}
        >>> method_defaults("sdxl", SynGen.Config, sdxl)
        {'resolution': 32}
        >>> method_defaults("sd", SynGen.Config, sdxl)
        {}
    """
    d = FAMILY_DEFAULTS[family]
    fields = {f.name for f in dataclasses.fields(config_cls)} if dataclasses.is_dataclass(config_cls) else set()
    sides = sorted({h for h, w in resolutions.values() if h == w})
    if d.resolution != "coarsest" or "resolution" not in fields or not sides:
        return {}
    return {"resolution": sides[0]}
