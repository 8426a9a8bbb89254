"""Interventions on cross-attention (issue 14): edit the attention probabilities of chosen tokens, at chosen layers,
steps and phases, during any pipeline call or guided sample.

:mod:`.ops` (the edits as pure functions on probability tensors), :mod:`.spec` (``Intervention``: the frozen spec,
its text grammar and label), :mod:`.apply` (``Editor``: which edits are active where, tokens resolved to positions,
regions resized per layer, patch maps read from a source run). The processors that apply them are the recorder's
(``attnlens.recording``); ``attnlens.intervene`` is the context manager (docs/interventions.md).
"""

from .apply import Editor
from .ops import ablate, copy, mask, renormalize, scale, swap
from .spec import OPS, Intervention, as_interventions, label_of, parse_intervention, read_spec_file

__all__ = ["Editor", "Intervention", "OPS", "ablate", "as_interventions", "copy", "label_of", "mask",
           "parse_intervention", "read_spec_file", "renormalize", "scale", "swap"]
