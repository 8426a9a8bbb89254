"""The scorer registry, shared by ``attnlens sweep`` (the spec's ``scorers = [...]``) and ``attnlens score``.

A **scorer** is a callable ``scorer(run) -> dict`` (:mod:`attnlens.scoring`); scorers that also judge a bare image
take ``scorer(image, prompt)``. :func:`register_scorer` adds one under a name (also as a decorator);
:func:`get_scorer` returns it. A scorer that loads models is registered with a ``factory``: ``get_scorer(name)``
is then built on first use with its defaults (the published protocol's model ids, loaded once per process), and
``get_scorer(name, model_id=..., ...)`` builds one with those options.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import json
import threading
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import BadOption, NotFoundError
from ..testbed.bench import score_run
from .ae_clip import AeClipScorer, AeTextTextScorer
from .clip_score import ClipScorer
from .compbench_vqa import CompBenchVqaScorer
from .geneval_rules import GenEvalScorer

Scorer = Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class ScorerInfo:
    """A registration: the scorer, the ``factory`` that builds it with options (None: it takes none), what it
    measures, and ``models``: its model options with the ids of the published protocol (what a GPU user passes)."""

    name: str
    scorer: Scorer
    factory: Callable[..., Scorer] | None = None
    description: str = ""
    models: tuple[tuple[str, str], ...] = ()


class LazyScorer:
    """``factory()`` built on the first call (thread-safe) and reused: a registered model scorer loads its models
    only when a run is scored, once per process."""

    def __init__(self, factory: Callable[[], Scorer]):
        self.factory = factory
        self._built: Scorer | None = None
        self._lock = threading.Lock()

    def __call__(self, run_or_image: Any, prompt: str | None = None) -> dict[str, Any]:
        return self.built(run_or_image, prompt)

    def score(self, run_or_image: Any, prompt: str | None = None) -> dict[str, Any]:
        return self(run_or_image, prompt)

    @property
    def built(self) -> Scorer:
        """The scorer itself (built now if it was not yet)."""
        with self._lock:
            if self._built is None:
                self._built = self.factory()
        return self._built


_SCORERS: dict[str, ScorerInfo] = {}


def register_scorer(name: str, fn: Scorer | None = None, *, factory: Callable[..., Scorer] | None = None,
                    description: str = "", models: tuple[tuple[str, str], ...] = ()):
    """Register ``fn`` under ``name`` (as a decorator without ``fn``), or ``factory`` (``factory(**options)`` builds
    the scorer; the registered scorer is ``factory()`` built on first use). A later registration replaces an
    earlier one."""
    def add(f: Scorer | None) -> Scorer:
        scorer = f if f is not None else LazyScorer(factory)
        doc = description or ((inspect.getdoc(f) or "").split("\n")[0] if f is not None else "")
        _SCORERS[name] = ScorerInfo(name, scorer, factory, doc, tuple(models))
        return f if f is not None else scorer

    if fn is None and factory is None:
        return add
    return add(fn)


def scorer_info(name: str) -> ScorerInfo:
    """The registration of ``name``; :class:`~attnlens.errors.NotFoundError` naming the closest ones."""
    try:
        return _SCORERS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_SCORERS), n=3)
        raise NotFoundError(f"unknown scorer '{name}'", hint=(f"did you mean {', '.join(close)}? " if close else "")
                            + f"known: {', '.join(available_scorers())}") from None


def parse_scorer_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"name:key=value,key=value"`` → ``(name, {key: value})`` (a value is read as JSON when it parses, else
    kept as text): how a sweep spec names a scorer with options, e.g. ``"clip:model_id=attnlens-tiny-clip"``.

    Raises:
        BadOption: a part after the ``:`` is not ``key=value``.
    """
    name, _, rest = spec.partition(":")
    options: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise BadOption(f"scorer option '{part}' in '{spec}' is not key=value",
                            hint="e.g. clip:model_id=openai/clip-vit-large-patch14,weight=2.5")
        try:
            options[key.strip()] = json.loads(value)
        except ValueError:
            options[key.strip()] = value.strip()
    return name.strip(), options


_CONFIGURED: dict[tuple[str, str], LazyScorer] = {}


def get_scorer(name: str, **options: Any) -> Scorer:
    """The scorer registered under ``name``; with options (model ids, device, dtype, ...; as keywords, or in the
    name as ``"name:key=value,..."``), one built with them on its first call, the same object for the same options
    (its models load once per process).

    Raises:
        NotFoundError: no scorer has that name.
        BadOption: an option the scorer does not take (the message lists the ones it takes).
    """
    name, given = parse_scorer_spec(name)
    options = {**given, **options}
    info = scorer_info(name)
    if not options:
        return info.scorer
    if info.factory is None:
        raise BadOption(f"scorer '{name}' takes no options", hint=f"use it as is: {name}")
    params = inspect.signature(info.factory).parameters
    names = [n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    bad = [k for k in options if k not in names]
    if bad and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise BadOption(f"scorer '{name}' takes no option '{bad[0]}'", hint=f"its options: {', '.join(names)}")
    key = (name, json.dumps(options, sort_keys=True, default=repr))
    if key not in _CONFIGURED:
        _CONFIGURED[key] = LazyScorer(functools.partial(info.factory, **options))
    return _CONFIGURED[key]


def available_scorers() -> list[str]:
    return sorted(_SCORERS)


@register_scorer("shapes")
def shapes(run) -> dict[str, Any]:
    """The shapes evaluator's outcome of the run's image (``attnlens.testbed.bench.score_run``), without the columns
    that only repeat the run's identity."""
    row = score_run(run.path)
    return {k: v for k, v in row.items() if k not in ("run", "method", "variant", "prompt", "seed")}


register_scorer("clip", factory=ClipScorer, description="CLIPScore 100·max(cos(image, prompt), 0)",
                models=(("model_id", "openai/clip-vit-large-patch14"),))
register_scorer("ae-clip", factory=AeClipScorer,
                description="Attend-and-Excite: CLIP similarity of the full prompt and min over its two halves",
                models=(("model_id", "openai/clip-vit-base-patch16"),))
register_scorer("ae-text-text", factory=AeTextTextScorer,
                description="Attend-and-Excite: BLIP caption -> CLIP text-text similarity with the prompt",
                models=(("model_id", "openai/clip-vit-base-patch16"),
                        ("caption_model_id", "Salesforce/blip-image-captioning-base")))
register_scorer("compbench-vqa", factory=CompBenchVqaScorer,
                description="T2I-CompBench attribute binding: product over noun phrases of BLIP-VQA P(yes)",
                models=(("model_id", "Salesforce/blip-vqa-capfilt-large"),))
register_scorer("geneval", factory=GenEvalScorer,
                description="GenEval rules (counts, colours, positions) over a detector's boxes (default: the "
                            "shapes evaluator)")
