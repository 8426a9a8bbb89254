"""The recording attention processor: computes a cross-attention layer's output exactly as the processor it replaces,
lets the recorder's interventions edit the softmax probabilities (the edited ones are what the layer uses), and hands
the probabilities to the recorder."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError

if TYPE_CHECKING:  # the recorder drives the processor; the processor only calls back into it
    from .recorder import Recorder

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
        which = self.recorder.edits_at(self.name)
        wants = self.recorder.wants(self.name)
        if not wants and not which:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        if which and self.mode == "delegate":
            raise ConfigError(f"interventions edit the probabilities computed by diffusers' AttnProcessor2_0 or "
                              f"AttnProcessor; {self.name} has {type(self.original).__name__}",
                              hint="pipe.unet.set_attn_processor(AttnProcessor2_0()) before intervening")
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
            # or edited (the prompt's samples)
            r0 = self.recorder.first_recorded_sample(batch_size) if wants else batch_size
            e0 = self.recorder.first_edited_sample(batch_size) if which else batch_size
            s0 = min(r0, e0)
            hidden_states, lse = self._sdpa(query, key, value, attention_mask)
            q, k = query[s0:], key[s0:]
            if lse is not None:
                # p = exp(scale·q·k − logsumexp): only the recorded text positions (all of them to edit), no
                # softmax over all 77
                n = q.shape[0] * attn.heads
                t = k.shape[2] if which else min(self.recorder.token_count(), k.shape[2])
                probs = torch.baddbmm(lse[s0:].reshape(n, -1, 1), q.reshape(n, -1, head_dim).to(lse.dtype),
                                      k[:, :, :t].reshape(n, t, head_dim).transpose(1, 2).to(lse.dtype),
                                      beta=-1, alpha=head_dim ** -0.5).exp_()  # fp32 for fp16/bf16 inputs
            else:
                mask3 = None
                if attention_mask is not None:
                    m = attention_mask if attention_mask.shape[0] == 1 else attention_mask[s0:]
                    mask3 = m.expand(q.shape[0], *m.shape[1:]).reshape(q.shape[0] * attn.heads, -1, m.shape[-1])
                probs = attn.get_attention_scores(q.reshape(-1, q.shape[2], head_dim),
                                                  k.reshape(-1, k.shape[2], head_dim), mask3)
            if which:
                cut = (e0 - s0) * attn.heads
                mine = probs[cut:]
                edited = self.recorder.edit(self.name, which, mine, attn.heads, e0)
                if edited is not mine:
                    # the layer's output becomes edited·V: SDPA's output plus (edited − p)·V, so an edit that leaves
                    # the probabilities as they are leaves the output bit for bit as it is
                    v = value[e0:].reshape(-1, value.shape[2], head_dim)
                    delta = torch.bmm((edited - mine).to(v.dtype), v).view(batch_size - e0, attn.heads, -1, head_dim)
                    hidden_states = torch.cat([hidden_states[:e0], hidden_states[e0:] + delta.to(hidden_states.dtype)])
                    probs = torch.cat([probs[:cut], edited])
            probs = probs[(r0 - s0) * attn.heads:]
            hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
            hidden_states = hidden_states.to(query.dtype)
        else:
            query = attn.head_to_batch_dim(query)
            key = attn.head_to_batch_dim(key)
            value = attn.head_to_batch_dim(value)
            probs = attn.get_attention_scores(query, key, attention_mask)
            if which:
                e0 = self.recorder.first_edited_sample(batch_size)
                mine = probs[e0 * attn.heads:]
                edited = self.recorder.edit(self.name, which, mine, attn.heads, e0)
                if edited is not mine:
                    probs = torch.cat([probs[:e0 * attn.heads], edited.to(probs.dtype)])
            hidden_states = torch.bmm(probs, value)
            hidden_states = attn.batch_to_head_dim(hidden_states)
            r0 = self.recorder.first_recorded_sample(batch_size)
            probs = probs[r0 * attn.heads:]

        if wants:
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
