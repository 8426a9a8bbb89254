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

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

from ..errors import BadOption, NotFoundError
from ._common import load_pretrained, model_location, resolve_input
from ._tiny import TINY_MODELS, tiny_model_path
from .ae_clip import AeClipScorer, AeTextTextScorer
from .clip_score import ClipScorer
from .compbench_vqa import CompBenchVqaScorer, compbench_prompts
from .geneval_rules import Box, GenEvalScorer, shapes_detector


@runtime_checkable
class Scorer(Protocol):
    """What ``get_scorer`` returns: ``score(run_or_image, prompt=None) -> dict[str, float]``."""

    name: str

    def score(self, run_or_image: Any, prompt: str | None = None) -> dict[str, float]: ...


@dataclass(frozen=True)
class ScorerInfo:
    """A registered scorer: ``factory(**options)`` builds it; ``models`` names its model options and the model
    ids of the published protocol (what a GPU user passes)."""

    name: str
    factory: Callable[..., Scorer]
    description: str = ""
    models: tuple[tuple[str, str], ...] = ()  # (option, published model id)


_SCORERS: dict[str, ScorerInfo] = {}


def register_scorer(name: str, factory: Callable[..., Scorer], *, description: str = "",
                    models: tuple[tuple[str, str], ...] = (), overwrite: bool = False) -> None:
    """Register ``factory`` (a class or function: ``factory(**options)`` returns a scorer) under ``name``.

    Raises:
        BadOption: the name is taken (pass ``overwrite=True`` to replace it).
    """
    if name in _SCORERS and not overwrite:
        raise BadOption(f"a scorer named '{name}' is already registered", hint="pick another name or overwrite=True")
    _SCORERS[name] = ScorerInfo(name, factory, description, tuple(models))


def available_scorers() -> list[str]:
    """The registered scorer names, sorted."""
    return sorted(_SCORERS)


def scorer_info(name: str) -> ScorerInfo:
    """The registration of ``name``.

    Raises:
        NotFoundError: no scorer has that name (the message lists the closest and all names).
    """
    if name not in _SCORERS:
        close = difflib.get_close_matches(name, list(_SCORERS), n=3)
        raise NotFoundError(f"unknown scorer '{name}'", hint=(f"did you mean {', '.join(close)}? " if close else "")
                            + f"available: {', '.join(available_scorers())}")
    return _SCORERS[name]


def get_scorer(name: str, **options: Any) -> Scorer:
    """Build the scorer registered as ``name`` with ``options`` (model ids, device, dtype, ...)."""
    return scorer_info(name).factory(**options)


register_scorer("clip", ClipScorer, description="CLIPScore 100·max(cos(image, prompt), 0)",
                models=(("model_id", "openai/clip-vit-large-patch14"),))
register_scorer("ae-clip", AeClipScorer,
                description="Attend-and-Excite: CLIP similarity of the full prompt and min over its two halves",
                models=(("model_id", "openai/clip-vit-base-patch16"),))
register_scorer("ae-text-text", AeTextTextScorer,
                description="Attend-and-Excite: BLIP caption -> CLIP text-text similarity with the prompt",
                models=(("model_id", "openai/clip-vit-base-patch16"),
                        ("caption_model_id", "Salesforce/blip-image-captioning-base")))
register_scorer("compbench-vqa", CompBenchVqaScorer,
                description="T2I-CompBench attribute binding: product over noun phrases of BLIP-VQA P(yes)",
                models=(("model_id", "Salesforce/blip-vqa-capfilt-large"),))
register_scorer("geneval", GenEvalScorer,
                description="GenEval rules (counts, colours, positions) over a detector's boxes (default: the "
                            "shapes evaluator)")

__all__ = [
    "AeClipScorer", "AeTextTextScorer", "Box", "ClipScorer", "CompBenchVqaScorer", "GenEvalScorer", "Scorer",
    "ScorerInfo", "TINY_MODELS", "available_scorers", "compbench_prompts", "get_scorer", "load_pretrained",
    "model_location", "register_scorer", "resolve_input", "scorer_info", "shapes_detector", "tiny_model_path",
]
