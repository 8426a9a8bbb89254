"""Record the cross-attention maps of a diffusers pipeline: a context manager over a pipeline the user already has.

    >>> import attnlens, torch
    >>> pipe = attnlens.load_pipeline()                                  # embedded default
    >>> with attnlens.record(pipe, "runs/demo", prompts=["a red crown"], seeds=[0]) as rec:
    ...     out = pipe("a red crown", num_inference_steps=10, generator=torch.Generator().manual_seed(0))
    ...     rec.save_images(out.images)

Only the cross-attention (``attn2``) processors are replaced, per module, with ``RecordingProcessor``; the originals
(the very same objects) are put back on exit, also when the body raises. Each record is tagged with the loop index
``step``, the scheduler ``timestep``, the ``phase`` (``sample``: the ordinary CFG forward, conditional half;
``sample_uncond``: its unconditional half, on request; ``guidance``: a grad-enabled forward of a guidance method)
and the ``iteration`` (refinement pass within a step).

Step identity: attnlens's own sampler sets it explicitly (``rec.context``). Inside a plain ``pipe(...)`` call the
recorder counts the sampling forwards of the UNet and checks each one against ``pipe.scheduler.timesteps`` (so a
stray extra UNet call is detected rather than silently shifting steps); a repeated timestep (PNDM's 961) is fine
because steps are loop indices, never timestep values.
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import math
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from .errors import AttnlensError
from .store import STATUS_COMPLETE, STATUS_FAILED, RunWriter, layer_sort_key

LayerFilter = None | str | int | Iterable[str | int] | Callable[[str], bool]
StepFilter = None | int | range | slice | Iterable[int] | Callable[[int], bool]


# ----------------------------------------------------------------------------------------------------------------
# Filters
# ----------------------------------------------------------------------------------------------------------------


def cross_attention_layers(unet) -> dict[str, Any]:
    """``{module path: Attention}`` of every cross-attention (``attn2``) module of ``unet``, in execution order."""
    found = {name: m for name, m in unet.named_modules() if name.endswith("attn2") and hasattr(m, "set_processor")}
    return {name: found[name] for name in sorted(found, key=layer_sort_key)}


def select_layers(names: list[str], spec: LayerFilter, resolutions: dict[str, tuple[int, int]] | None = None) -> list[str]:
    """Normalise a layer filter once: None (all), a name, a glob (``up_blocks.*``), a resolution (16), a list, a predicate."""
    if spec is None:
        return list(names)
    if callable(spec) and not isinstance(spec, str):
        return [n for n in names if spec(n)]
    items = [spec] if isinstance(spec, (str, int)) else list(spec)
    chosen: set[str] = set()
    for item in items:
        if isinstance(item, int):
            if resolutions is None:
                raise AttnlensError("selecting layers by resolution needs the latent size")
            hits = [n for n in names if resolutions[n][0] == item]
            if not hits:
                valid = sorted({r[0] for r in resolutions.values()})
                raise AttnlensError(f"no cross-attention layer at resolution {item}", hint=f"available: {valid}")
        elif any(c in item for c in "*?["):
            hits = fnmatch.filter(names, item)
            if not hits:
                raise AttnlensError(f"layer pattern '{item}' matches no cross-attention layer",
                                    hint=f"layers look like {names[0]}")
        else:
            if item not in names:
                close = difflib.get_close_matches(item, names, n=3, cutoff=0.4)
                raise AttnlensError(f"unknown layer '{item}'", hint=f"closest: {', '.join(close) or names[0]}")
            hits = [item]
        chosen.update(hits)
    return [n for n in names if n in chosen]


def step_predicate(spec: StepFilter) -> Callable[[int], bool]:
    """Normalise a step filter: None (all), an int, a range/slice, a list, or a predicate."""
    if spec is None:
        return lambda i: True
    if callable(spec):
        return spec
    if isinstance(spec, int):
        return lambda i: i == spec
    if isinstance(spec, slice):
        start, stop, stride = spec.start or 0, spec.stop, spec.step or 1
        return lambda i: i >= start and (stop is None or i < stop) and (i - start) % stride == 0
    allowed = set(spec)
    return lambda i: i in allowed


def parse_steps(text: str | None) -> StepFilter:
    """Parse ``--steps`` syntax: ``0:25``, ``::5``, ``0,10,20``, ``7``."""
    if text is None or text in ("", "all"):
        return None
    try:
        if ":" in text:
            parts = [int(p) if p else None for p in text.split(":")]
            return slice(*parts)
        if "," in text:
            return [int(p) for p in text.split(",")]
        return int(text)
    except ValueError:
        raise AttnlensError(f"cannot read step selection '{text}'", hint="use START:STOP[:STRIDE], a list 0,10,20 or one index") from None


def spatial_shape(query_len: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """Derive a layer's (h, w) from its query length and the latent size (never guessed)."""
    H, W = latent_hw
    factor = math.sqrt(H * W / query_len)
    f = int(round(factor))
    if f < 1 or H % f or W % f or (H // f) * (W // f) != query_len:
        raise AttnlensError(f"cannot derive the spatial shape of a layer with {query_len} queries from a {H}×{W} latent")
    return H // f, W // f


# ----------------------------------------------------------------------------------------------------------------
# The processor
# ----------------------------------------------------------------------------------------------------------------

#: the CPU flash-attention kernel behind SDPA, which also returns the log-sum-exp of the scores (None if absent)
_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


class RecordingProcessor:
    """A cross-attention processor that computes the output exactly as the processor it replaces and hands the
    softmax probabilities ``(batch·heads, queries, keys)`` to the recorder.

    With the default ``AttnProcessor2_0`` (or the classic ``AttnProcessor``) the output is computed by the same
    operations as the original, so results are bit-identical; any other original processor computes the output
    itself and the probabilities are computed beside it (costs one extra query/key projection).
    """

    def __init__(self, recorder: "Recorder", name: str, original: Any):
        self.recorder = recorder
        self.name = name
        self.original = original
        kind = type(original).__name__
        self.mode = {"AttnProcessor2_0": "sdpa", "AttnProcessor": "classic"}.get(kind, "delegate")
        self._lse: bool | None = None if _FLASH_CPU is not None else False  # see _sdpa

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        if not self.recorder.wants(self.name):
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        if self.mode == "delegate":
            out = self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
            self._probs_only(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
            return out
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            if self.mode == "sdpa":
                attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        if self.mode == "sdpa":
            inner_dim = key.shape[-1]
            head_dim = inner_dim // attn.heads
            query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            if attn.norm_q is not None:
                query = attn.norm_q(query)
            if attn.norm_k is not None:
                key = attn.norm_k(key)
            # the probabilities beside SDPA, only for the samples that are recorded (the conditional half by default)
            r0 = self.recorder.first_recorded_sample(batch_size)
            hidden_states, lse = self._sdpa(query, key, value, attention_mask)
            q, k = query[r0:], key[r0:]
            if lse is not None:
                # p = exp(scale·q·k − logsumexp): only the recorded text positions, no softmax over all 77
                n, t = q.shape[0] * attn.heads, min(self.recorder.token_count(), k.shape[2])
                probs = torch.baddbmm(lse[r0:].reshape(n, -1, 1), q.reshape(n, -1, head_dim).to(lse.dtype),
                                      k[:, :, :t].reshape(n, t, head_dim).transpose(1, 2).to(lse.dtype),
                                      beta=-1, alpha=head_dim ** -0.5).exp_()  # fp32 for fp16/bf16 inputs
            else:
                mask3 = None
                if attention_mask is not None:
                    m = attention_mask if attention_mask.shape[0] == 1 else attention_mask[r0:]
                    mask3 = m.expand(q.shape[0], *m.shape[1:]).reshape(q.shape[0] * attn.heads, -1, m.shape[-1])
                probs = attn.get_attention_scores(q.reshape(-1, q.shape[2], head_dim),
                                                  k.reshape(-1, k.shape[2], head_dim), mask3)
            hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
            hidden_states = hidden_states.to(query.dtype)
        else:
            query = attn.head_to_batch_dim(query)
            key = attn.head_to_batch_dim(key)
            value = attn.head_to_batch_dim(value)
            probs = attn.get_attention_scores(query, key, attention_mask)
            hidden_states = torch.bmm(probs, value)
            hidden_states = attn.batch_to_head_dim(hidden_states)
            r0 = self.recorder.first_recorded_sample(batch_size)
            probs = probs[r0 * attn.heads:]

        self.recorder.on_probs(self.name, probs, attn.heads, first=r0)

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def _sdpa(self, query, key, value, attention_mask) -> tuple[torch.Tensor, torch.Tensor | None]:
        """SDPA's output, plus the log-sum-exp of the scaled scores ``(batch, heads, queries)`` when it comes for free.

        On a CPU, SDPA runs the flash-attention kernel, which returns that log-sum-exp beside the output; the
        recorded probabilities are then ``exp(scale·q·k − lse)`` for the recorded text positions only, instead of a
        second softmax over all 77 (4–7× less work per layer). The kernel is called directly only where it is what
        SDPA itself runs: the first call of each processor compares its output with SDPA's bit for bit and otherwise
        falls back for good. Grad-enabled forwards (guidance) and masked attention always take SDPA.
        """
        sdpa_args = dict(attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
        if (self._lse is False or attention_mask is not None or query.device.type != "cpu"
                or (torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad))):
            return F.scaled_dot_product_attention(query, key, value, **sdpa_args), None
        try:
            out, lse = _FLASH_CPU(query, key, value)
        except (RuntimeError, TypeError):  # an input the kernel does not take
            out, lse = None, None
        if self._lse is None:
            ref = F.scaled_dot_product_attention(query, key, value, **sdpa_args)
            self._lse = out is not None and torch.equal(out, ref) and tuple(lse.shape) == tuple(query.shape[:-1])
            if not self._lse:
                return ref, None
        if out is None:
            return F.scaled_dot_product_attention(query, key, value, **sdpa_args), None
        return out, lse

    def _probs_only(self, attn, hidden_states, encoder_hidden_states, attention_mask, temb):
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        if hidden_states.ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, key.shape[1], hidden_states.shape[0])
        self.recorder.on_probs(self.name, attn.get_attention_scores(query, key, attention_mask), attn.heads)
        # (delegating processors are rare; their probabilities are computed for every sample)


# ----------------------------------------------------------------------------------------------------------------
# The writer thread
# ----------------------------------------------------------------------------------------------------------------


class _PinnedPool:
    """Reusable pinned host buffers per (shape, dtype), so GPU→host copies are asynchronous and allocation-free."""

    def __init__(self):
        self._free: dict[tuple, list[torch.Tensor]] = {}
        self._lock = threading.Lock()

    def take(self, shape, dtype) -> torch.Tensor:
        with self._lock:
            free = self._free.get((tuple(shape), dtype))
            if free:
                return free.pop()
        return torch.empty(shape, dtype=dtype, pin_memory=True)

    def give(self, buf: torch.Tensor) -> None:
        with self._lock:
            self._free.setdefault((tuple(buf.shape), buf.dtype), []).append(buf)


class _Writer(threading.Thread):
    """Drains a bounded queue of batches of ``(fn, args, tensor, event)`` items: for each item, waits for the copy
    event, then calls ``fn(*args, tensor.numpy())`` (or ``fn(*args)`` without a tensor). The recorder hands over one
    batch per UNet forward.

    ``eager`` (GPU sampling): write as batches arrive. Lazy (CPU sampling, whose kernels already keep every core busy,
    so a concurrent writer only steals their time and stalls their parallel regions): hold batches until the queue
    is three-quarters full, holds ``HOLD_BYTES``, a drain is requested, or the recording ends — on a run that fits,
    the writes happen in one burst after sampling. Remembers the first error and drops
    everything after it, so a full disk never damages what was already written."""

    def __init__(self, maxsize: int, pool: _PinnedPool | None, eager: bool = True):
        super().__init__(name="attnlens-writer", daemon=True)
        self.queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self.error: BaseException | None = None
        self.pool = pool
        self.eager = eager
        self.go = threading.Event()  # lazy mode: set when the queue is nearly full, at a drain and at the end
        self.high_water = max(1, (maxsize * 3) // 4)
        self.held = 0  # bytes of tensors queued and not yet written
        self._held_lock = threading.Lock()

    HOLD_BYTES = 256 * 2**20  # lazy mode: write once this much is held (all heads, all tokens, big maps)

    def hand(self, batch: list[tuple]) -> None:
        """Queue one batch (blocks while the queue is full; a lazy writer is woken first so that it drains)."""
        n = sum(t.nbytes for _, _, t, _ in batch if t is not None)
        with self._held_lock:
            self.held += n
        if self.queue.full():
            self.go.set()
        self.queue.put((batch, n))
        if not self.eager and (self.queue.qsize() >= self.high_water or self.held >= self.HOLD_BYTES):
            self.go.set()

    def run(self) -> None:
        while True:
            if not self.eager:
                if self.queue.empty():
                    self.go.clear()
                    if not self.queue.empty():  # raced with a put that found the event still set
                        self.go.set()
                self.go.wait()
            item = self.queue.get()
            if item is None:
                return
            batch, n = item
            for fn, args, tensor, event in batch:
                try:
                    if self.error is None or fn.__name__ == "set":
                        if event is not None:
                            event.synchronize()
                        fn(*args) if tensor is None else fn(*args, tensor.numpy())
                except BaseException as exc:  # disk full, read-only, ...: reported to the sampling thread
                    self.error = exc
                finally:
                    if event is not None and self.pool is not None:
                        self.pool.give(tensor)
            with self._held_lock:
                self.held -= n


# ----------------------------------------------------------------------------------------------------------------
# The recorder
# ----------------------------------------------------------------------------------------------------------------


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
                raise AttnlensError(f"unknown {field} option '{value}'", hint=f"choose one of: {', '.join(valid)}")

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
                 manifest: dict[str, Any] | None = None, overwrite: bool = False, queue_size: int | None = None):
        self.pipe = pipe
        self.unet = pipe.unet
        self.config = config or RecordingConfig()
        self._store_arg = store
        self._manifest_extra = dict(manifest or {})
        self._overwrite = overwrite
        self._queue_size = queue_size
        self.prompts = list(prompts) if prompts is not None else None
        self.seeds = list(seeds) if seeds is not None else None
        self.attn2 = cross_attention_layers(self.unet)
        if not self.attn2:
            raise AttnlensError(f"{type(self.unet).__name__} has no cross-attention (attn2) modules to record")
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
        self.live_maps: dict[str, torch.Tensor] = {}
        self.layers: list[str] = []
        self._layer_set: set[str] = set()
        self._want_step = step_predicate(self.config.steps)
        self.token_ids: list[list[int]] | None = None
        self._tokens_cache: tuple[list[list[str]], int] | None = None
        self.records: dict[str, dict[int, set[int]]] = {}
        self.scalar_names: set[str] = set()

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def __enter__(self) -> "Recorder":
        if self._entered:
            raise AttnlensError("this recorder is already active; one `with attnlens.record(...)` records one run")
        self._entered = True
        for name, module in self.attn2.items():
            if isinstance(module.processor, RecordingProcessor):
                raise AttnlensError(f"{name} is already being recorded by another recorder; nested recording is not supported")
        try:
            self._open_store()
            for name, module in self.attn2.items():
                self._originals[name] = module.processor
                module.set_processor(RecordingProcessor(self, name, module.processor))
            self._hooks.append(self.unet.register_forward_pre_hook(self._unet_pre_hook, with_kwargs=True))
            enc = getattr(self.pipe, "text_encoder", None)
            if enc is not None and self.prompts is None and self.token_ids is None:
                self._hooks.append(enc.register_forward_pre_hook(self._text_pre_hook, with_kwargs=True))
        except BaseException:
            self._restore()
            if self._writer is not None:
                self._stop_writer()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._restore()
        self._stop_writer()
        if self.store is not None:
            err = self._writer.error if self._writer is not None else None
            status = STATUS_COMPLETE if exc_type is None and err is None else STATUS_FAILED
            message = None
            if exc is not None:
                message = f"{type(exc).__name__}: {exc}"
            elif err is not None:
                message = f"{type(err).__name__}: {err}"
            if "samples" not in self.store.manifest and (self.prompts or self.token_ids):
                with contextlib.suppress(AttnlensError):
                    self._write_samples_manifest(self._n_samples(), None)
            self.store.manifest["records"] = {ph: {str(s): sorted(its) for s, its in d.items()} for ph, d in self.records.items()}
            self.store.manifest["recorded_layers"] = self.layers
            self.store.manifest["scalars"] = sorted(self.scalar_names)
            with contextlib.suppress(OSError):
                self.store.finish(status, message)
            if err is None and exc_type is None and self.store.manifest.get("status") != STATUS_COMPLETE:
                err = OSError(self.store.manifest.get("error") or "the final flush failed")
            if err is not None and exc_type is None:
                raise AttnlensError(f"writing the run store failed: {getattr(err, 'strerror', None) or err}",
                                    hint="free disk space or choose another --out; the run is marked failed") from err

    def _restore(self) -> None:
        for name, original in self._originals.items():
            self.attn2[name].set_processor(original)
        self._originals.clear()
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
            self.store.manifest.update({k: v for k, v in manifest.items() if k not in self.store.manifest})
            self.store.write_manifest()
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
        from . import __version__
        from .environment import library_versions

        pipe = self.pipe
        m: dict[str, Any] = {
            "attnlens_version": __version__,
            "recording": self.config.to_dict(),
            "model": {
                "id": getattr(pipe, "_attnlens_model_id", getattr(pipe, "name_or_path", None) or type(pipe).__name__),
                "location": getattr(pipe, "_attnlens_model_location", None),
                "pipeline": type(pipe).__name__,
                "scheduler": {"class": type(pipe.scheduler).__name__, "config": dict(pipe.scheduler.config)},
            },
            "dtype": str(self.unet.dtype).replace("torch.", ""),
            "device": str(self.unet.device),
            "versions": library_versions(),
        }
        m.update(self._manifest_extra)
        return m

    # -- tokens ---------------------------------------------------------------------------------------------------
    def _text_pre_hook(self, module, args, kwargs):
        if self.token_ids is None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is not None:
                self.token_ids = ids.detach().cpu().tolist()

    def set_prompts(self, prompts: list[str]) -> None:
        self.prompts = list(prompts)
        self.token_ids = None
        self._tokens_cache = None

    def _samples_tokens(self) -> list[list[str]]:
        """Word pieces of every prompt of the call (77 each), derived once per run."""
        if self._tokens_cache is not None:
            return self._tokens_cache[0]
        tok = self.pipe.tokenizer
        if self.token_ids is None:
            if self.prompts is None:
                raise AttnlensError("the recorder does not know the prompt tokens",
                                    hint="pass prompts=[...] to attnlens.record when calling the pipeline with prompt_embeds")
            self.token_ids = [tok(p, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
                              for p in self.prompts]
        tokens = [tok.convert_ids_to_tokens(row) for row in self.token_ids]
        self._tokens_cache = (tokens, self._token_count(tokens))
        return tokens

    def token_count(self) -> int:
        """Text positions recorded: ``<sot>`` through ``<eot>`` of the longest prompt, or all 77."""
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
        if phase == "guidance":
            self.live_maps = {}
        try:
            yield self
        finally:
            self.step, self.timestep, self.phase, self.iteration, self._explicit = prev

    def _unet_pre_hook(self, module, args, kwargs):
        self._submit()  # the previous forward's maps
        sample = kwargs.get("sample", args[0] if args else None)
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        if self.latent_hw != tuple(sample.shape[-2:]):
            self.latent_hw = tuple(sample.shape[-2:])
            self._hw = {}
        if not self.n_steps:
            schedule = getattr(self.pipe.scheduler, "timesteps", None)
            self.n_steps = 0 if schedule is None else len(schedule)
        if not self._explicit:  # inside a plain pipe(...) call: count sampling forwards, check against the schedule
            self.step += 1
            self.phase, self.iteration = "sample", 0
            t = float(timestep.flatten()[0]) if torch.is_tensor(timestep) else float(timestep)
            schedule = getattr(self.pipe.scheduler, "timesteps", None)
            if schedule is not None and len(schedule):
                if self.step >= len(schedule):
                    raise AttnlensError("more UNet calls than scheduler steps: one recorder context records one pipeline call",
                                        hint="open a new `with attnlens.record(...)` for each call")
                if float(schedule[self.step]) != t:
                    raise AttnlensError(f"UNet call {self.step} has timestep {t}, the schedule says {float(schedule[self.step])}",
                                        hint="use attnlens.sample / rec.context(...) to tag extra UNet calls")
            self.timestep = t
        if self.phase == "sample":
            self._cfg = bool(getattr(self.pipe, "do_classifier_free_guidance", False)) if not self._explicit else self._cfg
            n = sample.shape[0]
            self._batch = n // 2 if self._cfg else n
            if self._want_step(self.step) and self.store is not None and not self._explicit:
                self.record_latent(self.step, sample[self._batch:] if self._cfg else sample)
        else:
            self._batch = sample.shape[0]
        if not self.layers:
            self._select_layers()

    def set_batch_layout(self, cfg: bool) -> None:
        """Declare whether sampling forwards carry [uncond, cond] halves (used by attnlens's own sampler)."""
        self._cfg = cfg

    def _select_layers(self) -> None:
        self.layers = select_layers(list(self.attn2), self.config.layers, self.resolutions())
        self._layer_set = set(self.layers)

    def resolutions(self) -> dict[str, tuple[int, int]]:
        """``{layer: (h, w)}`` for the current latent size (from each module's position in the UNet)."""
        if self.latent_hw is None:
            raise AttnlensError("layer resolutions are known once the latent size is (after the first UNet call)")
        H, W = self.latent_hw
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

    def wants(self, name: str) -> bool:
        if self.phase == "guidance":
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
        if self.phase == "guidance":
            if name in self.need_live:
                self.live_maps[name] = p4[0]
            if self.config.guidance and name in self._layer_set:
                self._enqueue_map(name, "guidance", p4)
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
            raise AttnlensError(f"writing the run store failed: {getattr(writer.error, 'strerror', None) or writer.error}",
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
        prompts = self.prompts or [None] * len(tokens)
        per = max(n // max(len(tokens), 1), 1)
        self.store.manifest["samples"] = [
            {"index": k, "prompt": prompts[min(k // per, len(prompts) - 1)], "seed": seeds[k] if k < len(seeds) else None,
             "pieces": _trim(tokens[min(k // per, len(tokens) - 1)], self.pipe.tokenizer.eos_token)}
            for k in range(n)
        ]
        self.store.write_manifest()

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


def _trim(pieces: list[str], eos: str) -> list[str]:
    return pieces[: pieces.index(eos) + 1] if eos in pieces else pieces


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
