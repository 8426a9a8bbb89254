"""Record the cross-attention maps of a diffusers pipeline: a context manager over a pipeline the user already has.

    >>> import attnlens, torch
    >>> pipe = attnlens.load_pipeline()                                  # embedded default
    >>> with attnlens.record(pipe, "runs/demo", prompts=["a red crown"], seeds=[0]) as rec:
    ...     out = pipe("a red crown", num_inference_steps=10, generator=torch.Generator().manual_seed(0))
    ...     rec.save_images(out.images)

Only the processors of the recorded sites are replaced, per module: the UNet's cross-attention (``attn2``) with
``RecordingProcessor``, the transformer families' joint or cross-attention (SD3, Flux, PixArt-Σ, Sana; see
:mod:`attnlens.recording.dit`) with ``DiTRecordingProcessor``; the originals (the very same objects) are put back
on exit, also when the body raises. When a guidance method asks for self-attention maps, the
``attn1`` processors of its layers are wrapped too (``watch_self_attention``). Each record is tagged with the loop index
``step``, the scheduler ``timestep``, the ``phase`` (``sample``: the ordinary CFG forward, conditional half;
``sample_uncond``: its unconditional half, on request; ``guidance``: a grad-enabled forward of a guidance method;
``noise_search``: a forward of an initial-noise search)
and the ``iteration`` (refinement pass within a step).

Step identity: attnlens's own sampler sets it explicitly (``rec.context``). Inside a plain ``pipe(...)`` call the
recorder counts the sampling forwards of the UNet and checks each one against ``pipe.scheduler.timesteps`` (so a
stray extra UNet call is detected rather than silently shifting steps); a repeated timestep (PNDM's 961) is fine
because steps are loop indices, never timestep values.
"""

from __future__ import annotations

import contextlib
import functools
import math
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .._version import __version__
from ..environment import library_versions
from ..interventions import Editor, Intervention, as_interventions
from ..errors import AttnlensError, BadOption, ConfigError, StoreError
from ..models import denoiser, model_family, model_info
from ..selection import select_layers, step_predicate
from ..store import STATUS_COMPLETE, STATUS_FAILED, RunWriter, Sample, layer_sort_key
from ..store.layout import STATUS_INTERRUPTED
from ..textctx import Segment, layout_dict, select_positions
from .dit import SITE_RULES, DiTRecordingProcessor, dit_sites, site_kind
from .processor import RecordingProcessor
from .self_attention import SelfAttentionProcessor
from .writer import _PinnedPool, _Writer


#: phases whose forwards are grad-enabled and hand live maps to a guidance method
LIVE_PHASES = ("guidance", "noise_search")


def cross_attention_layers(unet) -> dict[str, Any]:
    """``{module path: Attention}`` of every cross-attention (``attn2``) module of ``unet``, in execution order."""
    found = {name: m for name, m in unet.named_modules() if name.endswith("attn2") and hasattr(m, "set_processor")}
    return {name: found[name] for name in sorted(found, key=layer_sort_key)}


def recording_sites(pipe) -> dict[str, Any]:
    """``{module path: attention module}`` of the sites ``attnlens.record`` records on ``pipe``: the UNet's ``attn2``
    modules, or the transformer families' sites (:func:`attnlens.recording.dit.dit_sites`)."""
    family = model_family(pipe)
    net = denoiser(pipe)
    return dit_sites(net, family) if family in SITE_RULES else cross_attention_layers(net)


#: family → [(encoder, pipeline's text encoder attribute, tokenizer attribute)] of the text sequence, in order
TEXT_SEGMENTS = {
    "sd3": [("clip", "text_encoder", "tokenizer"), ("t5", "text_encoder_3", "tokenizer_3")],
    "flux": [("t5", "text_encoder_2", "tokenizer_2")],
    "pixart": [("t5", "text_encoder", "tokenizer")],
    "sana": [("gemma", "text_encoder", "tokenizer")],
}
#: family → what the pipeline divides the scheduler's timestep by before the transformer sees it
TIMESTEP_DIVISOR = {"flux": 1000.0}


def spatial_shape(query_len: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """Derive a layer's (h, w) from its query length and the latent size (never guessed)."""
    H, W = latent_hw
    factor = math.sqrt(H * W / query_len)
    f = int(round(factor))
    if f < 1 or H % f or W % f or (H // f) * (W // f) != query_len:
        raise ConfigError(f"cannot derive the spatial shape of a layer with {query_len} queries from a {H}×{W} latent")
    return H // f, W // f


@dataclass(frozen=True)
class RecordingConfig:
    """What to record. Frozen and JSON-serialisable (stored in the manifest).

    Args:
        heads (`str`, defaults to `"mean"`): ``"mean"`` over heads, or ``"all"`` heads.
        tokens (`str`, defaults to `"prompt"`): ``"prompt"`` (``<sot>`` through ``<eot>``) or ``"all"`` 77 positions.
        layers: layer filter (see ``select_layers``); None records every attn2 layer.
        steps: step filter (see ``step_predicate``); None records every step.
        dtype (`str`, defaults to `"fp16"`): ``"fp16"`` or ``"fp32"`` on disk.
        uncond (`bool`, defaults to False): also record the unconditional CFG half (phase ``sample_uncond``).
        guidance (`bool`, defaults to True): record guidance-phase maps.
    """

    heads: str = "mean"
    tokens: str = "prompt"
    layers: Any = None
    steps: Any = None
    dtype: str = "fp16"
    uncond: bool = False
    guidance: bool = True

    def __post_init__(self):
        for field, value, valid in (("heads", self.heads, ("mean", "all")), ("tokens", self.tokens, ("prompt", "all")),
                                    ("dtype", self.dtype, ("fp16", "fp32"))):
            if value not in valid:
                raise BadOption(f"unknown {field} option '{value}'", hint=f"choose one of: {', '.join(valid)}")

    def to_dict(self) -> dict[str, Any]:
        def plain(v):
            if v is None or isinstance(v, (str, int, bool)):
                return v
            if isinstance(v, slice):
                return f"{v.start or ''}:{v.stop or ''}" + (f":{v.step}" if v.step else "")
            if callable(v):
                return f"<callable {getattr(v, '__name__', '?')}>"
            return [plain(x) for x in v]

        return {k: plain(getattr(self, k)) for k in ("heads", "tokens", "layers", "steps", "dtype", "uncond", "guidance")}


class Recorder:
    """Records cross-attention maps into a run store while a pipeline runs. Use through ``attnlens.record``.

    Attributes:
        layers: the recorded layer names (diffusers module paths of the attn2 modules).
        live_maps: during a guidance forward, ``{layer: Tensor(heads, h, w, 77)}`` of the current sample with
            autograd graph, for the layers the guidance method asked for (``need_live``).
    """

    def __init__(self, pipe, store: str | Path | RunWriter | None, *, config: RecordingConfig | None = None,
                 prompts: list[str] | None = None, seeds: list[int | None] | None = None,
                 manifest: dict[str, Any] | None = None, overwrite: bool = False, queue_size: int | None = None,
                 interventions: Sequence[Intervention | str | dict[str, Any]] | None = None):
        self.pipe = pipe
        self.editor = Editor(as_interventions(interventions))
        self._intervene_only = False  # set by attnlens.intervene: a recorder that only carries interventions
        self.unet = denoiser(pipe)  # the denoising network: a UNet, or a transformer (DiT / MM-DiT)
        self.family = model_family(pipe)
        self.dit = self.family in SITE_RULES
        self.config = config or RecordingConfig()
        self._store_arg = store
        self._manifest_extra = dict(manifest or {})
        self._overwrite = overwrite
        self._queue_size = queue_size
        self.prompts = list(prompts) if prompts is not None else None
        self.seeds = list(seeds) if seeds is not None else None
        self.attn2 = recording_sites(pipe)  # the sites: {module path: attention module}
        if not self.attn2:
            raise ConfigError(f"{type(self.unet).__name__} has no cross-attention (attn2) modules to record")
        self.text_len = 0  # transformer families: length of the text sequence the sites attend to
        self._encoder_ids: dict[str, list[list[int]]] = {}  # first input_ids seen by each text encoder
        self._encoder_calls: dict[str, int] = {}
        self._text_layout: dict[str, Any] | None = None
        self._text_index: dict[Any, torch.Tensor] = {}
        self._entered = False
        self._originals: dict[str, Any] = {}
        self._hooks: list[Any] = []
        self.store: RunWriter | None = None
        self._writer: _Writer | None = None
        self._pool: _PinnedPool | None = None
        self._pending: list[tuple] = []  # items for the writer, handed over once per UNet forward
        self._hw: dict[int, tuple[int, int]] = {}  # query length → (h, w) for the current latent size
        self._dtype = torch.float16 if self.config.dtype == "fp16" else torch.float32
        # per-forward context
        self.step = -1
        self.timestep: float | None = None
        self.phase = "sample"
        self.iteration = 0
        self._explicit = False
        self._cfg = False
        self._batch = 1
        self.latent_hw: tuple[int, int] | None = None
        self.n_steps = 0
        self.need_live: set[str] = set()
        self._self_originals: dict[str, Any] = {}  # attn1 path → its processor, while live self-attention is on
        self.live_maps: dict[str, torch.Tensor] = {}
        self.layers: list[str] = []
        self._layer_set: set[str] = set()
        self._want_step = step_predicate(self.config.steps)
        self.token_ids: list[list[int]] | None = None
        self._tokens_cache: tuple[list[list[str]], int] | None = None
        self.records: dict[str, dict[int, set[int]]] = {}
        self.scalar_names: set[str] = set()
        self._unet_since_text = False
        self._editor_key: tuple | None = None
        self._logged_interventions = [it.to_dict() for it in self.editor.items]

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def __enter__(self) -> "Recorder":
        if self._entered:
            raise ConfigError("this recorder is already active; one `with attnlens.record(...)` records one run")
        self._entered = True
        outer = None
        for name, module in self.attn2.items():
            if isinstance(module.processor, RecordingProcessor):
                if not module.processor.recorder._intervene_only:
                    raise ConfigError(f"{name} is already being recorded by another recorder; nested recording is not "
                                      "supported")
                outer = module.processor.recorder
        if self.dit and self.editor.items:
            raise ConfigError(f"interventions edit UNet cross-attention (SD 1.x/2.x, SDXL); {self.family} runs can be "
                              "recorded and guided, not yet intervened on", hint="leave out --intervene for this model")
        if outer is not None:  # inside `with attnlens.intervene(...)`: this recorder applies its interventions too
            self.editor = Editor(list(outer.editor.items) + self.editor.items)
            self._logged_interventions = [it.to_dict() for it in self.editor.items]
        try:
            self._open_store()
            for name, module in self.attn2.items():
                self._originals[name] = module.processor
                base = module.processor.original if outer is not None else module.processor
                module.set_processor(
                    DiTRecordingProcessor(self, name, base, site_kind(self.family, name)) if self.dit
                    else RecordingProcessor(self, name, base))
            self._hooks.append(self.unet.register_forward_pre_hook(self._unet_pre_hook, with_kwargs=True))
            enc = getattr(self.pipe, "text_encoder", None)
            if self.dit:  # every text encoder: its first input ids are the prompt's (the negative prompt comes next)
                for attr in ("text_encoder", "text_encoder_2", "text_encoder_3"):
                    module = getattr(self.pipe, attr, None)
                    if module is not None:
                        self._hooks.append(module.register_forward_pre_hook(
                            functools.partial(self._encoder_pre_hook, attr), with_kwargs=True))
            elif enc is not None and self.prompts is None and self.token_ids is None:
                self._hooks.append(enc.register_forward_pre_hook(self._text_pre_hook, with_kwargs=True))
        except BaseException:
            self._restore()
            if self._writer is not None:
                self._stop_writer()
            if self.store is not None:
                self.store.release()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        interrupted = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
        try:
            self._restore()
            if interrupted:  # Ctrl-C: stop promptly, without writing the maps still queued (the run is no result)
                self._discard_queued()
            self._stop_writer()
            if self.store is not None:
                self._finish_store(exc_type, exc, interrupted)
        finally:
            if self.store is not None:
                self.store.release()  # finish released the run's lock already, unless something above failed

    def _finish_store(self, exc_type, exc, interrupted: bool) -> None:
        err = self._writer.error if self._writer is not None else None
        status = (STATUS_COMPLETE if exc_type is None and err is None else
                  STATUS_INTERRUPTED if interrupted else STATUS_FAILED)
        message = None
        if interrupted:
            message = "KeyboardInterrupt: the recording was interrupted (Ctrl-C)"
        elif exc is not None:
            message = f"{type(exc).__name__}: {exc}"
        elif err is not None:
            message = f"{type(err).__name__}: {err}"
        if not self.store.manifest.samples and (self.prompts or self.token_ids or self._encoder_ids):
            with contextlib.suppress(AttnlensError, OSError):
                self._write_samples_manifest(self._n_samples(), None)
        self.store.annotate(
            records={ph: {str(s): sorted(its) for s, its in d.items()} for ph, d in self.records.items()},
            recorded_layers=self.layers, scalars=sorted(self.scalar_names), write=False)
        with contextlib.suppress(OSError):
            self.store.finish(status, message)
        if err is None and exc_type is None and self.store.manifest.status != STATUS_COMPLETE:
            err = OSError(self.store.manifest.error or "the final flush failed")
        if err is not None and exc_type is None:
            raise StoreError(f"writing the run store failed: {getattr(err, 'strerror', None) or err}",
                                hint="free disk space or choose another --out; the run is marked failed") from err

    def _discard_queued(self) -> None:
        """Drop the writes not yet done (gathered, or queued for the writer thread); the one it is doing finishes."""
        self._pending = []
        writer = self._writer
        if writer is None:
            return
        while True:
            try:
                item = writer.queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                with writer._held_lock:
                    writer.held -= item[1]

    def _restore(self) -> None:
        for name, original in self._originals.items():
            self.attn2[name].set_processor(original)
        self._originals.clear()
        modules = dict(self.unet.named_modules()) if self._self_originals else {}
        for name, original in self._self_originals.items():
            modules[name].set_processor(original)
        self._self_originals.clear()
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def _open_store(self) -> None:
        store = self._store_arg
        if store is None:
            return
        manifest = self._base_manifest()
        if isinstance(store, RunWriter):
            self.store = store
            self.store.annotate_missing(**manifest)
        else:
            self.store = RunWriter(store, manifest, overwrite=self._overwrite)
        cuda = self.unet.device.type == "cuda"
        self._pool = _PinnedPool() if cuda else None
        eager = self.unet.device.type != "cpu"
        # batches (one per UNet forward) the writer's queue holds: on a GPU a short queue bounds the pinned buffers
        # in flight; on a CPU the lazy writer is bounded by HOLD_BYTES, and a count limit that a plain 50-step run
        # reaches would wake it during the last steps, where it competes with sampling for the cores and the GIL
        size = self._queue_size or (self.QUEUE_EAGER if eager else self.QUEUE_LAZY)
        self._writer = _Writer(size, self._pool, eager=eager)
        self._writer.start()

    def _stop_writer(self) -> None:
        if self._writer is not None and self._writer.is_alive():
            self._submit()
            self._writer.go.set()
            self._writer.queue.put(None)
            self._writer.join()

    def _base_manifest(self) -> dict[str, Any]:
        pipe = self.pipe
        m: dict[str, Any] = {
            "attnlens_version": __version__,
            "recording": self.config.to_dict(),
            "model": {
                **model_info(pipe),
                "family": self.family,
                "pipeline": type(pipe).__name__,
                "scheduler": {"class": type(pipe.scheduler).__name__, "config": dict(pipe.scheduler.config)},
            },
            "dtype": str(self.unet.dtype).replace("torch.", ""),
            "device": str(self.unet.device),
            "versions": library_versions(),
        }
        if self.editor:
            m["interventions"] = [it.to_dict() for it in self.editor.items]
        m.update(self._manifest_extra)
        return m

    # -- tokens ---------------------------------------------------------------------------------------------------
    def _text_pre_hook(self, module, args, kwargs):
        # a recorder without a store may see several pipeline calls: the first text-encoder call after a UNet
        # forward is the next call's prompt (the second call of a CFG encode is the negative prompt: not read)
        if self.token_ids is None or (self._unet_since_text and self.store is None):
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is not None:
                self.token_ids = ids.detach().cpu().tolist()
                self._tokens_cache = None
                self._unet_since_text = False

    def _encoder_pre_hook(self, attr, module, args, kwargs):
        self._encoder_calls[attr] = self._encoder_calls.get(attr, 0) + 1
        if attr not in self._encoder_ids:
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is not None:
                self._encoder_ids[attr] = ids.detach().cpu().tolist()

    def set_prompts(self, prompts: list[str]) -> None:
        self.prompts = list(prompts)
        self.token_ids = None
        self._tokens_cache = None
        self._encoder_ids = {}
        self._text_layout = None
        self._text_index = {}

    # -- the transformer families' text sequence ------------------------------------------------------------------
    def _segment_ids(self, attr: str, tok_attr: str, length: int) -> tuple[Any, list[list[int]]]:
        """(tokenizer, ids per prompt) of one text encoder: what it was called with, else the prompts tokenised."""
        tok = getattr(self.pipe, tok_attr, None)
        ids = self._encoder_ids.get(attr)
        if ids is None:
            if self.prompts is None or tok is None:
                raise ConfigError("the recorder does not know the prompt tokens",
                                  hint="pass prompts=[...] to attnlens.record when calling the pipeline with prompt_embeds")
            ids = [tok(p, padding="max_length", max_length=length, truncation=True).input_ids for p in self.prompts]
        return tok, ids

    def text_layout(self) -> dict[str, Any]:
        """Transformer families: ``{"segments", "positions", "encoders", "pieces"}`` of the text sequence (see
        :mod:`attnlens.textctx`); ``pieces[k]`` are sample k's word pieces at the recorded ``positions``."""
        if self._text_layout is not None:
            return self._text_layout
        if not self.text_len:
            raise ConfigError("the text sequence is known once the transformer has been called")
        specs = TEXT_SEGMENTS[self.family]
        clip_len = 77 if self.family == "sd3" else 0
        segments, full, lengths = [], [], []
        start = 0
        for enc, attr, tok_attr in specs:
            n = clip_len if enc == "clip" else self.text_len - start
            seg = Segment(enc, start, n)
            if getattr(self.pipe, attr, None) is None:  # an encoder left out (SD3 without T5): zeros, no pieces
                segments.append(seg)
                full.append([[""] * n])
                lengths.append([0])
                start += n
                continue
            tok, ids = self._segment_ids(attr, tok_attr, n)
            rows, lens = [], []
            for row in ids:
                if len(row) > n:  # Sana's instruction prefix: the pipeline keeps the first and the last n - 1
                    row = row[:1] + row[len(row) - n + 1:]
                pieces = tok.convert_ids_to_tokens(row) if tok is not None else [""] * len(row)
                pieces = list(pieces) + [""] * (n - len(pieces))
                rows.append(pieces)
                lens.append(_prompt_length(pieces, tok))
            segments.append(seg)
            full.append(rows)
            lengths.append(lens)
            start += n
        positions = select_positions(segments, lengths, self.config.tokens)
        n_samples = max(len(rows) for rows in full)
        pieces = [[full[si][min(k, len(full[si]) - 1)][p - seg.start] for si, seg in enumerate(segments)
                   for p in positions if seg.start <= p < seg.start + seg.length] for k in range(n_samples)]
        self._text_layout = {**layout_dict(segments, positions), "pieces": pieces}
        return self._text_layout

    def text_index(self, device) -> torch.Tensor:
        """The recorded key positions of the text sequence as a long tensor on ``device`` (for the processors)."""
        idx = self._text_index.get(device)
        if idx is None:
            idx = self._text_index[device] = torch.tensor(self.text_layout()["positions"], dtype=torch.long,
                                                          device=device)
        return idx

    def _samples_tokens(self) -> list[list[str]]:
        """Word pieces of every prompt of the call (77 each), derived once per run."""
        if self._tokens_cache is not None:
            return self._tokens_cache[0]
        if self.dit:
            tokens = self.text_layout()["pieces"]
            self._tokens_cache = (tokens, len(self.text_layout()["positions"]))
            return tokens
        tok = self.pipe.tokenizer
        if self.token_ids is None:
            if self.prompts is None:
                raise ConfigError("the recorder does not know the prompt tokens",
                                    hint="pass prompts=[...] to attnlens.record when calling the pipeline with prompt_embeds")
            self.token_ids = [tok(p, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
                              for p in self.prompts]
        tokens = [tok.convert_ids_to_tokens(row) for row in self.token_ids]
        self._tokens_cache = (tokens, self._token_count(tokens))
        return tokens

    def token_count(self) -> int:
        """Text positions recorded: ``<sot>`` through ``<eot>`` of the longest prompt, or all 77 (transformer
        families: the recorded positions of :meth:`text_layout`)."""
        self._samples_tokens()
        return self._tokens_cache[1]

    def _token_count(self, tokens: list[list[str]]) -> int:
        if self.config.tokens == "all":
            return 77
        eos = self.pipe.tokenizer.eos_token
        return max(row.index(eos) + 1 if eos in row else len(row) for row in tokens)

    # -- per-forward state ------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def context(self, step: int, timestep: float, phase: str = "sample", iteration: int = 0):
        """Tag every UNet forward inside the block with (step, timestep, phase, iteration)."""
        prev = (self.step, self.timestep, self.phase, self.iteration, self._explicit)
        self.step, self.timestep, self.phase, self.iteration, self._explicit = step, float(timestep), phase, iteration, True
        if phase in LIVE_PHASES:
            self.live_maps = {}
        try:
            yield self
        finally:
            self.step, self.timestep, self.phase, self.iteration, self._explicit = prev

    def _unet_pre_hook(self, module, args, kwargs):
        self._submit()  # the previous forward's maps
        self._unet_since_text = True
        sample = kwargs.get("sample", kwargs.get("hidden_states", args[0] if args else None))
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 and not self.dit else None)
        hw = tuple(sample.shape[-2:])
        if self.dit:
            context = kwargs.get("encoder_hidden_states")
            if context is None:
                raise ConfigError(f"{type(self.unet).__name__} was called without encoder_hidden_states",
                                  hint="call the transformer with keyword arguments, as the diffusers pipelines do")
            self.text_len = context.shape[1]
            if sample.ndim == 3:  # Flux: packed 2×2 latents; the token grid from the image ids (row, column)
                ids = kwargs.get("img_ids")
                if ids is None:
                    raise ConfigError("a packed-latent transformer call without img_ids: the image grid is unknown")
                ids = ids.reshape(-1, ids.shape[-1])
                hw = (int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1)
        if self.latent_hw != hw:
            self.latent_hw = hw
            self._hw = {}
        if not self.n_steps:
            schedule = getattr(self.pipe.scheduler, "timesteps", None)
            self.n_steps = 0 if schedule is None else len(schedule)
        if not self._explicit:  # inside a plain pipe(...) call: count sampling forwards, check against the schedule
            self.step += 1
            self.phase, self.iteration = "sample", 0
            t = float(timestep.flatten()[0]) if torch.is_tensor(timestep) else float(timestep)
            t *= TIMESTEP_DIVISOR.get(self.family, 1.0)
            if self.family == "sana":
                t /= float(getattr(self.unet.config, "timestep_scale", 1.0) or 1.0)
            schedule = getattr(self.pipe.scheduler, "timesteps", None)
            if schedule is not None and len(schedule) and self.store is None and (
                    self.step >= len(schedule) or float(schedule[self.step]) != t) and float(schedule[0]) == t:
                self.step = 0  # no store: the next pipeline call begins (attnlens.intervene around several calls)
                self.n_steps = len(schedule)
            if schedule is not None and len(schedule):
                if self.step >= len(schedule):
                    raise ConfigError("more UNet calls than scheduler steps: one recorder context records one pipeline call",
                                        hint="open a new `with attnlens.record(...)` for each call")
                if self.dit and abs(float(schedule[self.step]) - t) <= 1e-3 * max(1.0, abs(t)):
                    t = float(schedule[self.step])  # the pipeline's rescaling, undone (up to rounding)
                if float(schedule[self.step]) != t:
                    raise ConfigError(f"UNet call {self.step} has timestep {t}, the schedule says {float(schedule[self.step])}",
                                        hint="use attnlens.sample / rec.context(...) to tag extra UNet calls")
            self.timestep = t
        if self.phase == "sample":
            self._cfg = self._plain_cfg(sample.shape[0]) if not self._explicit else self._cfg
            n = sample.shape[0]
            self._batch = n // 2 if self._cfg else n
            if self._want_step(self.step) and self.store is not None and not self._explicit:
                latent = sample[self._batch:] if self._cfg else sample
                self.record_latent(self.step, _unpack(latent, self.latent_hw) if latent.ndim == 3 else latent)
        else:
            self._batch = sample.shape[0]
        if not self.layers:
            self._select_layers()
        if self.editor and self._editor_key != (self.latent_hw, self.n_steps):
            self._bind_editor()

    def _bind_editor(self) -> None:
        """Resolve the interventions' layer selections and check their patch sources (needs the latent size)."""
        if not self.editor or self.latent_hw is None:
            return
        self._editor_key = (self.latent_hw, self.n_steps)
        schedule = getattr(self.pipe.scheduler, "timesteps", None)
        f = getattr(self.pipe, "vae_scale_factor", 8)
        self.editor.bind(list(self.attn2), self.resolutions(), (self.latent_hw[0] * f, self.latent_hw[1] * f),
                         n_steps=self.n_steps or (0 if schedule is None else len(schedule)),
                         timesteps=None if schedule is None else [float(t) for t in schedule],
                         model_id=model_info(self.pipe).get("id"))

    # -- interventions --------------------------------------------------------------------------------------------
    def edits_at(self, name: str) -> list[int]:
        """The interventions that edit layer ``name`` in the current forward (its step and phase)."""
        if not self.editor:
            return []
        phase = "guidance" if self.phase == "guidance" else "sample"
        return self.editor.active(name, self.step, phase)

    def first_edited_sample(self, batch_size: int) -> int:
        """The first sample of a UNet batch that interventions edit: the conditional half of a CFG ``sample``
        forward (the unconditional half reads the empty prompt, whose positions are not the prompt's words)."""
        if self.phase == "sample" and self._cfg and batch_size == 2 * self._batch:
            return self._batch
        return 0

    def edit(self, name: str, which: list[int], probs: torch.Tensor, heads: int, first: int) -> torch.Tensor:
        """Apply the interventions ``which`` to ``(samples·heads, queries, keys)`` probabilities of the UNet batch's
        samples ``first, first + 1, …`` (all of them edited); returns the same layout (``probs`` itself when
        nothing changed)."""
        hw = self._hw.get(probs.shape[1])
        if hw is None:
            hw = self._hw[probs.shape[1]] = spatial_shape(probs.shape[1], self.latent_hw)
        n = probs.shape[0] // heads
        p4 = probs.view(n, heads, probs.shape[1], probs.shape[2])
        tokens = self._samples_tokens()
        per = max(self._batch // max(len(tokens), 1), 1)
        pieces = [tokens[min(k // per, len(tokens) - 1)] for k in range(max(self._batch, n))]
        offset = self._batch if self.phase == "sample" and self._cfg and first >= self._batch else 0
        phase = "guidance" if self.phase == "guidance" else "sample"
        out = self.editor.apply(which, name, self.step, phase, self.iteration, p4, hw, pieces, first=first - offset)
        return probs if out is p4 else out.reshape(probs.shape)

    def push_interventions(self, items: Sequence[Intervention]) -> None:
        """Add interventions while recording (``attnlens.intervene`` inside ``attnlens.record``); the manifest
        lists every intervention that was active."""
        self.editor.extend(items)
        self._bind_editor()
        self._logged_interventions += [it.to_dict() for it in items]
        self.annotate(interventions=list(self._logged_interventions))

    def pop_interventions(self, n: int) -> None:
        self.editor.remove_last(n)
        self._bind_editor()

    def _plain_cfg(self, n: int) -> bool:
        """Whether a plain ``pipe(...)`` forward carries [uncond, cond] halves: the pipeline's own
        ``do_classifier_free_guidance``; for pipelines without it (PixArt), whether the prompt's text encoder was
        called twice (prompt, then negative prompt) and the batch is even."""
        flag = getattr(self.pipe, "do_classifier_free_guidance", None)
        if flag is not None:
            return bool(flag)
        if self.dit:
            attr = TEXT_SEGMENTS[self.family][-1][1]
            return self._encoder_calls.get(attr, 0) >= 2 and n % 2 == 0
        return False

    def set_batch_layout(self, cfg: bool) -> None:
        """Declare whether sampling forwards carry [uncond, cond] halves (used by attnlens's own sampler)."""
        self._cfg = cfg

    def _select_layers(self) -> None:
        self.layers = select_layers(list(self.attn2), self.config.layers, self.resolutions())
        self._layer_set = set(self.layers)

    def resolutions(self) -> dict[str, tuple[int, int]]:
        """``{layer: (h, w)}`` for the current latent size (from each module's position in the UNet)."""
        if self.latent_hw is None:
            raise ConfigError("layer resolutions are known once the latent size is (after the first UNet call)")
        H, W = self.latent_hw
        if self.dit:  # every site sees the whole token grid: latent / patch (Flux: the packed grid itself)
            p = 1 if self.family == "flux" else int(getattr(self.unet.config, "patch_size", 1) or 1)
            return {name: (max(H // p, 1), max(W // p, 1)) for name in self.attn2}
        out = {}
        for name in self.attn2:
            parts = name.split(".")
            if parts[0] == "down_blocks":
                f = 2 ** int(parts[1])
            elif parts[0] == "mid_block":
                f = 2 ** (len(self.unet.down_blocks) - 1)
            else:
                f = 2 ** (len(self.unet.up_blocks) - 1 - int(parts[1]))
            out[name] = (max(H // f, 1), max(W // f, 1))
        return out

    def watch_self_attention(self, layers: list[str]) -> list[str]:
        """Hand the self-attention probabilities of the ``attn1`` siblings of ``layers`` (``attn2`` paths) to
        ``live_maps`` during guidance and noise-search forwards (under the ``attn1`` path, ``(heads, h, w, h·w)``).

        Installs ``SelfAttentionProcessor`` on those modules only (restored on exit with the others); every other
        forward runs their original processor. Returns the ``attn1`` paths."""
        modules = dict(self.unet.named_modules())
        names = []
        for layer in layers:
            name = layer[: -len("attn2")] + "attn1"
            module = modules.get(name)
            if module is None or not hasattr(module, "set_processor"):
                raise ConfigError(f"{layer} has no self-attention sibling {name}")
            if name not in self._self_originals:
                self._self_originals[name] = module.processor
                module.set_processor(SelfAttentionProcessor(self, name, module.processor))
            names.append(name)
        return names

    def wants_self(self, name: str) -> bool:
        """Whether the self-attention processor of ``name`` hands its probabilities over in this forward."""
        return self.phase in LIVE_PHASES and name in self._self_originals

    def on_self_probs(self, name: str, probs: torch.Tensor, heads: int) -> None:
        """Self-attention probabilities ``(samples·heads, queries, queries)``: the first sample's, live."""
        hw = self._hw.get(probs.shape[1])
        if hw is None:
            hw = self._hw[probs.shape[1]] = spatial_shape(probs.shape[1], self.latent_hw)
        self.live_maps[name] = probs[:heads].view(heads, hw[0], hw[1], probs.shape[-1])

    def wants(self, name: str) -> bool:
        if self.phase in LIVE_PHASES:
            return name in self.need_live or (self.config.guidance and name in self._layer_set and self._want_step(self.step))
        return name in self._layer_set and self._want_step(self.step) and self.store is not None

    # -- recording ----------------------------------------------------------------------------------------------
    def first_recorded_sample(self, batch_size: int) -> int:
        """The first sample of a UNet batch whose maps are needed: in a CFG ``sample`` forward that records only the
        conditional half, the unconditional half ``[0, b)`` is skipped; otherwise 0."""
        if self.phase == "sample" and self._cfg and not self.config.uncond and batch_size == 2 * self._batch:
            return self._batch
        return 0

    def on_probs(self, name: str, probs: torch.Tensor, heads: int, first: int = 0) -> None:
        """Called by the processors with ``(samples·heads, queries, keys)`` softmax probabilities of the samples
        ``first, first + 1, …`` of the UNet batch."""
        hw = self._hw.get(probs.shape[1])
        if hw is None:
            hw = self._hw[probs.shape[1]] = spatial_shape(probs.shape[1], self.latent_hw)
        total = probs.shape[0] // heads
        p4 = probs.view(total, heads, hw[0], hw[1], probs.shape[-1])
        if self.phase in LIVE_PHASES:
            if name in self.need_live:
                self.live_maps[name] = p4[0]
            # stored only at the selected steps, as the sampling phase (the loss still gets its live maps)
            if self.config.guidance and name in self._layer_set and self._want_step(self.step):
                self._enqueue_map(name, self.phase, p4)
            return
        b = self._batch
        if self._cfg and first:  # only the conditional half was computed (see first_recorded_sample)
            self._enqueue_map(name, "sample", p4)
        elif self._cfg:
            self._enqueue_map(name, "sample", p4[b:])
            if self.config.uncond:
                self._enqueue_map(name, "sample_uncond", p4[:b])
        else:
            self._enqueue_map(name, "sample", p4)

    def _enqueue_map(self, name: str, phase: str, p4: torch.Tensor) -> None:
        if self.store is None:
            return
        tokens = self._samples_tokens()
        t = self._tokens_cache[1]
        x = p4.detach()[..., :t]  # detached: no graph is built, whatever the grad mode
        x = x.mean(dim=1, keepdim=True) if self.config.heads == "mean" else x
        # (sample, head, token, y, x), cast and laid out contiguously in one copy
        x = x.permute(0, 1, 4, 2, 3).to(self._dtype, memory_format=torch.contiguous_format)
        self.records.setdefault(phase, {}).setdefault(self.step, set()).add(self.iteration)
        args = (name, self.step, phase, self.iteration, self.n_steps, tokens, self.timestep)
        self._put(self.store.write_map, args, x)

    def _put(self, fn: Callable, args: tuple, x: torch.Tensor | None = None, fresh: bool = False) -> None:
        """Queue ``fn(*args, x.numpy())`` for the writer; ``fresh``: ``x`` is a copy nobody else holds (no clone)."""
        writer = self._writer
        if writer.error is not None:
            raise StoreError(f"writing the run store failed: {getattr(writer.error, 'strerror', None) or writer.error}",
                                hint="free disk space or choose another --out; the run is marked failed")
        if x is not None and x.device.type == "cuda":
            buf = self._pool.take(x.shape, x.dtype)
            buf.copy_(x, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._pending.append((fn, args, buf, event))
        elif x is not None:
            keep = x if fresh else x.contiguous().clone() if x.dtype == torch.float32 else x.contiguous()
            self._pending.append((fn, args, keep, None))
        else:
            self._pending.append((fn, args, None, None))
        if len(self._pending) >= self.BATCH_MAX:
            self._submit()

    QUEUE_EAGER, QUEUE_LAZY = 64, 4096  # default queue sizes (batches), see _open_store
    BATCH_MAX = 64  # items per hand-over at most (all heads, many layers): bounds the memory held per batch

    def _submit(self) -> None:
        """Hand the items gathered since the last call to the writer (blocks while its queue is full)."""
        if self._pending and self._writer is not None:
            batch, self._pending = self._pending, []
            self._writer.hand(batch)

    def record_latent(self, step: int, latent: torch.Tensor) -> None:
        """Store the latent entering the sampling forward of loop index ``step``."""
        if self.store is not None:
            self._put(self.store.write_latent, (step, self.n_steps), _latent_copy(latent), fresh=True)

    def record_final_latent(self, latent: torch.Tensor) -> None:
        if self.store is not None:
            self._put(self.store.write_final_latent, (), _latent_copy(latent), fresh=True)

    def log_scalars(self, step: int, iteration: int, values: dict[str, float], sample: int = 0, n_samples: int = 1) -> None:
        """Store named scalars (loss terms, gradient norm, step size, ...) at (step, iteration, sample)."""
        if self.store is None:
            return
        for name, value in values.items():
            v = float(value.detach()) if torch.is_tensor(value) else float(value)
            self._put(self.store.write_scalar, (name, step, iteration, sample, v, self.n_steps, n_samples))
            self.scalar_names.add(name)

    def annotate(self, **values: Any) -> None:
        """Add entries to the run's manifest (``steps=50``, ``label="mine"``; see ``attnlens.store.Manifest``);
        nothing when recording without a store."""
        if self.store is not None:
            self.store.annotate(write=False, **values)  # on disk with the next manifest write (samples, finish)

    def save_images(self, images, seeds: list[int | None] | None = None) -> None:
        """Save the pipeline's output images (PIL images or an (N, H, W, 3) array) as PNG in the run."""
        if self.store is None:
            return
        n = len(images)
        for k, img in enumerate(images):
            self._put(self.store.write_image, (img, k, n))
        self._drain()
        self._write_samples_manifest(n, seeds)

    def _write_samples_manifest(self, n: int, seeds=None) -> None:
        tokens = self._samples_tokens()
        seeds = seeds or self.seeds or [None] * n
        prompts = self.prompts
        if not prompts and self.token_ids:  # the pipeline was called without prompts=: the text encoder's input
            prompts = [self.pipe.tokenizer.decode(row, skip_special_tokens=True).strip() for row in self.token_ids]
        if not prompts and self.dit:  # the first encoder's recorded pieces (not its whole input: Sana's prefix)
            enc, _, tok_attr = TEXT_SEGMENTS[self.family][0]
            tok, layout = getattr(self.pipe, tok_attr, None), self.text_layout()
            if tok is not None:
                special = set(tok.all_special_tokens)
                prompts = [tok.convert_tokens_to_string([p for p, e in zip(row, layout["encoders"])
                                                         if e == enc and p and p not in special]).strip()
                           for row in layout["pieces"]]
        prompts = prompts or [None] * len(tokens)
        per = max(n // max(len(tokens), 1), 1)
        if self.dit:  # the pieces at the recorded positions, whatever encoder each came from
            self.store.annotate(text={k: v for k, v in self.text_layout().items() if k != "pieces"}, write=False)
        eos = None if self.dit else self.pipe.tokenizer.eos_token
        self.store.set_samples([
            Sample(index=k, prompt=prompts[min(k // per, len(prompts) - 1)], seed=seeds[k] if k < len(seeds) else None,
                   pieces=_trim(tokens[min(k // per, len(tokens) - 1)], eos))
            for k in range(n)
        ])

    def _n_samples(self) -> int:
        return max(self._batch, len(self.prompts or []), 1)

    def _drain(self) -> None:
        """Block until every queued write has been done."""
        if self._writer is None:
            return
        done = threading.Event()
        self._pending.append((done.set, (), None, None))
        self._submit()
        self._writer.go.set()
        while not done.wait(0.05):
            if not self._writer.is_alive():
                return


def _latent_copy(latent: torch.Tensor) -> torch.Tensor:
    """A detached copy of a latent as stored: float16 when the pipeline computes in float16 (SD on a GPU), else
    float32 (bfloat16 has no numpy type)."""
    dtype = torch.float16 if latent.dtype == torch.float16 else torch.float32
    return latent.detach().to(dtype, memory_format=torch.contiguous_format, copy=True)


def _trim(pieces: list[str], eos: str | None) -> list[str]:
    return pieces[: pieces.index(eos) + 1] if eos is not None and eos in pieces else list(pieces)


def _prompt_length(pieces: list[str], tok) -> int:
    """How many leading positions of one encoder's sequence hold the prompt: through the end token (CLIP's
    ``<|endoftext|>``, T5's ``</s>``), else up to the first padding (Gemma adds no end token)."""
    eos = getattr(tok, "eos_token", None)
    pad = getattr(tok, "pad_token", None)
    if eos is not None and eos in pieces and (pad is None or pad == eos or pad not in pieces
                                              or pieces.index(eos) < pieces.index(pad)):
        return pieces.index(eos) + 1
    if pad is not None and pad in pieces:
        return pieces.index(pad)
    return len([p for p in pieces if p])


def _unpack(latent: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Flux's packed latents ``(b, h·w, 4c)`` (2×2 patches of c channels on an h×w grid) → ``(b, c, 2h, 2w)``."""
    b, n, c4 = latent.shape
    h, w = grid
    return latent.view(b, h, w, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c4 // 4, 2 * h, 2 * w)


def record(pipe, store: str | Path | None, **kwargs) -> Recorder:
    """Record the cross-attention maps of ``pipe`` into the run store ``store`` (a new folder).

    Args:
        pipe: a diffusers pipeline with a ``unet`` (SD 1.x, 2.x, SDXL).
        store: folder of the new run (refused if it holds a complete run, unless ``overwrite=True``), or None to
            only expose live maps (guidance without storage).
        heads, tokens, layers, steps, dtype, uncond, guidance: see ``RecordingConfig``.
        prompts, seeds: metadata for each image of the call (prompts are otherwise read from the text encoder input).
        manifest: extra manifest entries.

    Returns:
        A ``Recorder`` to use as a context manager.
    """
    cfg_keys = {"heads", "tokens", "layers", "steps", "dtype", "uncond", "guidance"}
    config = RecordingConfig(**{k: kwargs.pop(k) for k in list(kwargs) if k in cfg_keys})
    return Recorder(pipe, store, config=config, **kwargs)

