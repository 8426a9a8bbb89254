"""Scorers: the image–prompt scores that papers report, as one registry.

A scorer is an object with a ``name`` and ``score(run_or_image, prompt=None) -> dict[str, float]``: it takes a
recorded run (a :class:`attnlens.store.Run` or its folder; the run's image and prompt) or an image (PIL, or an
``(H, W, 3)`` array) with its prompt, and returns named numbers. ``get_scorer(name, **options)`` builds one (its
models loaded once, with ``from_pretrained``); ``attnlens score`` runs it over a folder of runs.

=================  ==========================================================  ====================================
name               what                                                        keys
=================  ==========================================================  ====================================
``clip``           CLIPScore, 100 · max(cos, 0) (:mod:`.clip_score`)            ``clip_score``
``ae-clip``        Attend-and-Excite's full-prompt and min-object CLIP          ``ae_full_text``, ``ae_min_object``,
                   similarity, 80 templates (:mod:`.ae_clip`)                  ``ae_first_half``, ``ae_second_half``
``ae-text-text``   A&E's BLIP caption → CLIP text–text similarity               ``ae_text_text``
``compbench-vqa``  T2I-CompBench's BLIP-VQA attribute binding                   ``compbench_vqa``
                   (:mod:`.compbench_vqa`)
``geneval``        GenEval's rules over a detector's boxes (shapes evaluator    ``geneval_correct``
                   by default; :mod:`.geneval_rules`)
=================  ==========================================================  ====================================

Your own scorer plugs in by name::

    >>> import attnlens.scoring as S
    >>> class Brightness:
    ...     name = "brightness"
    ...     def score(self, run_or_image, prompt=None):
    ...         image, _ = S.resolve_input(run_or_image, prompt or "-")
    ...         return {"brightness": sum(image.convert("L").getdata()) / (255 * image.width * image.height)}
    >>> S.register_scorer("brightness", Brightness, description="mean grey level in [0, 1]")
    >>> import numpy as np
    >>> S.get_scorer("brightness").score(np.full((4, 4, 3), 255, np.uint8), "a white square")
    {'brightness': 1.0}
    >>> "brightness" in S.available_scorers()
    True
"""

from __future__ import annotations

from ._common import load_pretrained, model_location, resolve_input
from ._tiny import TINY_MODELS, tiny_model_path
from .ae_clip import AeClipScorer, AeTextTextScorer
from .clip_score import ClipScorer
from .compbench_vqa import CompBenchVqaScorer, compbench_prompts
from .geneval_rules import Box, GenEvalScorer, shapes_detector
from .registry import Scorer, ScorerInfo, available_scorers, get_scorer, register_scorer, scorer_info
from .runs import ScoreResult, score_rows, score_runs

__all__ = [
    "AeClipScorer", "AeTextTextScorer", "Box", "ClipScorer", "CompBenchVqaScorer", "GenEvalScorer", "ScoreResult",
    "Scorer", "ScorerInfo", "TINY_MODELS", "available_scorers", "compbench_prompts", "get_scorer", "load_pretrained",
    "model_location", "register_scorer", "resolve_input", "score_rows", "score_runs", "scorer_info",
    "shapes_detector", "tiny_model_path",
]
