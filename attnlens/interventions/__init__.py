"""Interventions on cross-attention (issue 14, part 1): edits of the attention probabilities of chosen tokens.

So far only :mod:`.ops` is here: the edits, written as pure functions on probability tensors. The processors, the
``attnlens.intervene`` context manager, the spec parser and the CLI flags have not been written yet.
"""

from .ops import ablate, copy, mask, renormalize, scale, swap

__all__ = ["ablate", "copy", "mask", "renormalize", "scale", "swap"]
