"""What an explicit attention processor does around the attention itself, as diffusers' classic ``AttnProcessor``
does it: the input side (spatial norm, a 4-D feature map to a token sequence, group norm) and the output side
(output projection and dropout, back to a feature map, residual, rescaling). Used by the processors that compute a
layer by hand (``attnlens.recording.self_attention``, ``attnlens.methods.structured``)."""

from __future__ import annotations

from typing import Any

import torch


def layer_input(attn: Any, hidden_states: torch.Tensor, temb: Any = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """``hidden_states`` ready for the query projection, and what ``layer_output`` needs to undo the reshaping.

    Shapes:
        hidden_states: ``(B, N, C)`` or ``(B, C, H, W)`` → ``(B, N, C)``.
    """
    state: dict[str, Any] = {"residual": hidden_states, "shape": None}
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    if hidden_states.ndim == 4:
        state["shape"] = hidden_states.shape
        b, c, h, w = hidden_states.shape
        hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    return hidden_states, state


def layer_output(attn: Any, hidden_states: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
    """The layer's output from the attention result ``(B, N, heads·d)`` (after ``batch_to_head_dim``)."""
    hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
    if state["shape"] is not None:
        hidden_states = hidden_states.transpose(-1, -2).reshape(*state["shape"])
    if attn.residual_connection:
        hidden_states = hidden_states + state["residual"]
    return hidden_states / attn.rescale_output_factor
