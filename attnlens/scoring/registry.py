"""The scorer registry: ``register_scorer``, ``get_scorer``, ``available_scorers`` (the names and what each
measures: :mod:`attnlens.scoring`), with the built-in scorers registered."""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

from ..errors import BadOption, NotFoundError
from .ae_clip import AeClipScorer, AeTextTextScorer
from .clip_score import ClipScorer
from .compbench_vqa import CompBenchVqaScorer
from .geneval_rules import GenEvalScorer


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
    """Build the scorer registered as ``name`` with ``options`` (model ids, device, dtype, ...).

    Raises:
        BadOption: an option the scorer does not take (the message lists the ones it takes).
    """
    info = scorer_info(name)
    try:
        params = inspect.signature(info.factory).parameters
    except (TypeError, ValueError):  # a builtin or C callable: let it check its own arguments
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    names = [n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and n != "self"]
    bad = [k for k in options if params and not takes_any and k not in names]
    if bad:
        raise BadOption(f"scorer '{name}' takes no option '{bad[0]}'", hint=f"its options: {', '.join(names)}")
    return info.factory(**options)


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
