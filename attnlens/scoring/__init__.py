"""Scorers: functions that judge a finished run (the shapes evaluator, and the image–prompt scores papers report),
run by ``attnlens sweep`` (the spec's ``scorers = [...]``) on the workers that record, and by ``attnlens score`` on
a folder of runs.

The interface, for every scorer::

    scorer(run: attnlens.Run) -> dict[str, float | int | bool | str]

It receives a complete run (opened read-only, its image and maps on local disk) and returns one flat row of
JSON values (no nested tables; names without the scorer's prefix). It must be a pure function of the run: the
same run gives the same row, so a resumed sweep can score a reused run again. A scorer that cannot judge a run
raises an ``attnlens.errors.AttnlensError`` with a one-line message; the sweep records it as that cell's error.
The image scorers below also take an image and its prompt: ``scorer(image, prompt)`` (a PIL image or an
``(H, W, 3)`` array), and have the same call as a method, ``scorer.score(run_or_image, prompt=None)``.

Register one under a name with :func:`register_scorer` (a decorator) and find it with :func:`get_scorer`::

    >>> from attnlens.scoring import register_scorer, get_scorer, available_scorers
    >>> @register_scorer("n-layers")
    ... def n_layers(run):
    ...     return {"layers": len(run.layers)}
    >>> get_scorer("n-layers") is n_layers
    True
    >>> "shapes" in available_scorers()
    True

A scorer with models is registered with a ``factory``: ``get_scorer(name)`` loads the published protocol's models
on first use; ``get_scorer(name, model_id=...)`` builds one with other options (a hub id, a ``save_pretrained``
folder, or a tiny random-weight model for tests)::

    >>> import numpy as np
    >>> clip = get_scorer("clip", model_id="attnlens-tiny-clip")        # CLIPModel.from_pretrained(folder)
    >>> sorted(clip(np.zeros((32, 32, 3), np.uint8), "a red circle"))
    ['clip_score']

Built in (formulas and the model ids to pass on a GPU: ``docs/scoring.md``):

=================  ==========================================================  ====================================
name               what                                                        keys
=================  ==========================================================  ====================================
``shapes``         the shapes testbed's evaluator (``attnlens.testbed``):      ``success``, ``misbinding``,
                   meaningful for the attnlens-shapes models and prompts        ``bound``, ... (bench's outcomes)
``clip``           CLIPScore, 100 · max(cos, 0) (:mod:`.clip_score`)            ``clip_score``
``ae-clip``        Attend-and-Excite's full-prompt and min-object CLIP          ``ae_full_text``, ``ae_min_object``,
                   similarity, 80 templates (:mod:`.ae_clip`)                  ``ae_first_half``, ``ae_second_half``
``ae-text-text``   A&E's BLIP caption → CLIP text–text similarity               ``ae_text_text``
``compbench-vqa``  T2I-CompBench's BLIP-VQA attribute binding                   ``compbench_vqa``
                   (:mod:`.compbench_vqa`)
``geneval``        GenEval's rules over a detector's boxes (the shapes          ``geneval_correct``
                   evaluator by default; :mod:`.geneval_rules`)
=================  ==========================================================  ====================================
"""

from __future__ import annotations

from ._common import ImageScorer, load_pretrained, model_location, resolve_input
from ._tiny import TINY_MODELS, tiny_model_path
from .ae_clip import AeClipScorer, AeTextTextScorer
from .clip_score import ClipScorer
from .compbench_vqa import CompBenchVqaScorer, compbench_prompts
from .geneval_rules import Box, GenEvalScorer, shapes_detector
from .registry import LazyScorer, Scorer, ScorerInfo, available_scorers, get_scorer, register_scorer, scorer_info
from .runs import ScoreResult, score_rows, score_runs

__all__ = [
    "AeClipScorer", "AeTextTextScorer", "Box", "ClipScorer", "CompBenchVqaScorer", "GenEvalScorer", "ImageScorer",
    "LazyScorer", "ScoreResult", "Scorer", "ScorerInfo", "TINY_MODELS", "available_scorers", "compbench_prompts",
    "get_scorer", "load_pretrained", "model_location", "register_scorer", "resolve_input", "score_rows", "score_runs",
    "scorer_info", "shapes_detector", "tiny_model_path",
]
