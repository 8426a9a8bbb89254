"""A self-attention (``attn1``) processor that hands its softmax probabilities to the recorder while a guidance
method needs them (InitNO's self-attention conflict term), and otherwise runs the processor it replaces."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..attn_layer import layer_input, layer_output

if TYPE_CHECKING:  # the recorder drives the processor; the processor only calls back into it
    from .recorder import Recorder


class SelfAttentionProcessor:
    """Installed by ``Recorder.watch_self_attention`` on the ``attn1`` modules a method asks for.

    In a forward where ``recorder.wants_self(name)`` (guidance and noise-search phases) it computes the layer the
    classic way (``attn.get_attention_scores``, then ``bmm`` with the values, as diffusers' ``AttnProcessor``) and
    passes the probabilities ``(batch·heads, queries, queries)`` to ``recorder.on_self_probs``, with their autograd
    graph; in every other forward the original processor runs, so sampling forwards are unchanged.
    """

    def __init__(self, recorder: "Recorder", name: str, original: Any):
        self.recorder = recorder
        self.name = name
        self.original = original

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        if not self.recorder.wants_self(self.name) or encoder_hidden_states is not None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        hidden_states, state = layer_input(attn, hidden_states, temb)
        attention_mask = attn.prepare_attention_mask(attention_mask, hidden_states.shape[1], hidden_states.shape[0])
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(hidden_states))
        probs = attn.get_attention_scores(query, key, attention_mask)
        self.recorder.on_self_probs(self.name, probs, attn.heads)
        return layer_output(attn, attn.batch_to_head_dim(torch.bmm(probs, value)), state)
