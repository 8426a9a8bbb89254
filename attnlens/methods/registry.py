"""Name → guidance method registry, plus user losses loaded from ``path/to/file.py:function``.

Register a method class::

    @attnlens.register_method("mine")
    class Mine(GuidanceMethod): ...

or a plain loss function ``f(maps, parse, i) -> loss`` or ``-> (loss, terms)``; it is wrapped in a method with
SynGen's default schedule (16×16 layers, α = 20, steps i < 25, no refinement) whose options are ``step_size``,
``intervention_steps`` and ``resolution``::

    @attnlens.register_method("overlap")
    def overlap(maps, parse, i):
        ...
        return loss, {"overlap": loss.detach()}
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import AttnlensError
from ._shared import FixedStepMethod
from .base import GuidanceMethod, LossOutput

_REGISTRY: dict[str, type[GuidanceMethod]] = {}


def register_method(name: str, *, overwrite: bool = False):
    """Decorator registering a ``GuidanceMethod`` subclass or a loss function under ``name``."""

    def decorator(obj):
        cls = obj if inspect.isclass(obj) else function_method(obj, name)
        if not issubclass(cls, GuidanceMethod):
            raise TypeError(f"{obj!r} is neither a GuidanceMethod subclass nor a loss function")
        if name in _REGISTRY and not overwrite and _REGISTRY[name] is not cls:
            raise ValueError(f"a method named '{name}' is already registered; pass overwrite=True to replace it")
        cls.name = name
        _REGISTRY[name] = cls
        return obj

    return decorator


def function_method(fn: Callable[..., Any], name: str) -> type[GuidanceMethod]:
    """Wrap a loss function ``fn(maps, parse, i)`` into a method with SynGen's default schedule."""

    @dataclass(frozen=True)
    class Config:
        step_size: float = 20.0
        intervention_steps: int = 25
        resolution: int = 16

    class FunctionMethod(FixedStepMethod):  # layers() and plan(): SynGen's schedule
        __doc__ = fn.__doc__
        source = f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"

        def loss(self, maps: Mapping[str, Any], parse: Any, i: int) -> LossOutput:
            try:
                result = fn(maps, parse, i)
            except Exception as exc:  # the user's code failed: name it and the step (the run is marked failed)
                raise user_loss_error(self.name or self.source, i, exc) from exc
            if isinstance(result, LossOutput):
                return result
            if isinstance(result, tuple):
                loss, terms = result
                return LossOutput(loss=loss, terms=dict(terms))
            return LossOutput(loss=result, terms={"loss": result})

        def hyperparameters(self):
            return {**super().hyperparameters(), "function": self.source}

    FunctionMethod.Config = Config
    FunctionMethod.__name__ = f"FunctionMethod_{name}"
    return FunctionMethod


def user_loss_error(name: str, step: int, exc: BaseException) -> AttnlensError:
    """The one-line error for a user's loss that raised: which method, which step, what it raised."""
    line = (str(exc).strip().splitlines() or [""])[0]
    return AttnlensError(f"the loss of method '{name}' raised {type(exc).__name__} at step {step}: {line}",
                         hint="fix the loss function (the run is marked failed); attnlens --debug shows the traceback")


def _guarded(cls: type[GuidanceMethod]) -> type[GuidanceMethod]:
    """A user's GuidanceMethod subclass whose ``loss`` errors are reported like a loss function's."""

    class Guarded(cls):  # type: ignore[misc,valid-type]
        def loss(self, maps, parse, i):
            try:
                return super().loss(maps, parse, i)
            except AttnlensError:
                raise
            except Exception as exc:  # noqa: BLE001
                raise user_loss_error(self.name, i, exc) from exc

    Guarded.__name__ = Guarded.__qualname__ = cls.__name__
    Guarded.__doc__ = cls.__doc__
    return Guarded


def available_methods() -> list[str]:
    """Names of the registered methods (the built-ins register when ``attnlens.methods`` is imported)."""
    return sorted(_REGISTRY)


def _load_from_file(spec: str) -> type[GuidanceMethod]:
    path_str, _, attr = spec.rpartition(":")
    path = Path(path_str).expanduser()
    if not path.is_file():
        raise AttnlensError(f"method file '{path_str}' not found", hint="use --method path/to/file.py:function")
    module_name = f"attnlens_user_{abs(hash(str(path.resolve())))}"
    mod_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[module_name] = module
    try:
        mod_spec.loader.exec_module(module)
    except Exception as exc:  # user code: report, do not crash with a traceback
        raise AttnlensError(f"could not import '{path_str}': {type(exc).__name__}: {exc}") from exc
    if not hasattr(module, attr):
        raise AttnlensError(f"'{path_str}' has no attribute '{attr}'", hint="name a loss function or a method class")
    obj = getattr(module, attr)
    if inspect.isclass(obj) and issubclass(obj, GuidanceMethod):
        cls = _guarded(obj)
    elif callable(obj):
        cls = function_method(obj, spec)
    else:
        raise AttnlensError(f"'{spec}' is not a loss function or GuidanceMethod subclass")
    cls.name = spec
    return cls


def get_method(name: str, **options: Any) -> GuidanceMethod:
    """Instantiate a method by registered name or ``path/to/file.py:attr``, with hyperparameter overrides."""
    if name in _REGISTRY:
        cls = _REGISTRY[name]
    elif ":" in name and name.rsplit(":", 1)[0].endswith(".py"):
        cls = _load_from_file(name)
    else:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"available: {', '.join(sorted(_REGISTRY))}"
        raise AttnlensError(f"unknown method '{name}'", hint=hint + " (or pass path/to/file.py:function)")
    try:
        return cls(**options)
    except (TypeError, ValueError) as exc:
        raise AttnlensError(str(exc)) from exc
