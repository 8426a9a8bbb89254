"""Recording cross-attention maps: a context manager over a pipeline the user already has.

:mod:`.recorder` (``Recorder``, ``record``, ``RecordingConfig``: swap and restore the processors, tag each forward
with its step context, expose live maps to guidance), :mod:`.processor` (``RecordingProcessor``), :mod:`.writer`
(the writer thread and pinned buffers), :mod:`.intervene` (``intervene``: interventions on cross-attention
during any call).
"""

from .processor import RecordingProcessor
from .intervene import intervene
from .recorder import Recorder, RecordingConfig, cross_attention_layers, record, spatial_shape

__all__ = ["Recorder", "RecordingConfig", "RecordingProcessor", "cross_attention_layers", "intervene", "record",
           "spatial_shape"]
