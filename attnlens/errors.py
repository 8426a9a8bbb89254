"""Errors that attnlens reports to users as one line plus a hint (the CLI prints them without a traceback).

Every error is an :class:`AttnlensError` (``message`` says what is wrong, ``hint`` what to do about it); the
subclasses say *what kind* of thing went wrong, so callers catch by type instead of matching messages::

    try:
        run = attnlens.open_run("runs/perhaps-not-a-run")
    except attnlens.errors.RunNotFound:
        run = None                            # not a run (or no such folder): skip it

========================  ======================================================================================
class                     raised when
========================  ======================================================================================
:class:`ConfigError`      an option, argument or configuration value is invalid (also a :class:`ValueError`)
:class:`BadOption`        ... one given on the command line or to a public function by name (a flag's value)
:class:`NotFoundError`    something named does not exist (also a :class:`LookupError`); base of the next four
:class:`RunNotFound`      a path is missing or is not an attnlens run (``NotARunError`` is the same class)
:class:`ModelNotFound`    a model id or folder cannot be found or loaded
:class:`MethodNotFound`   a guidance method name or ``file.py:function`` is unknown
:class:`MetricNotFound`   a metric, role, layer or phase named in a selection is not in the data
:class:`EmptySelection`   a selection (runs, steps, rows) leaves nothing to work on
:class:`StoreError`       a run store cannot be written or read (corrupted, refused overwrite, disk full)
:class:`RunExists`        ... the output already holds a complete run and overwriting was not asked for
:class:`RunLocked`        ... the output is being recorded by another live process (its lock is held)
========================  ======================================================================================
"""

from __future__ import annotations


class AttnlensError(Exception):
    """A user-facing error: ``message`` says what is wrong, ``hint`` what to do about it."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(AttnlensError, ValueError):
    """An option, argument or configuration value is invalid (a method hyperparameter, a recording option, ...)."""


class BadOption(ConfigError):
    """A value given for a named option (a command-line flag or keyword argument) is invalid."""


class NotFoundError(AttnlensError, LookupError):
    """Something named (a run, model, method, metric) does not exist."""


class RunNotFound(NotFoundError):
    """A path does not exist or is not an attnlens run (no ``manifest.json``)."""


NotARunError = RunNotFound


class ModelNotFound(NotFoundError):
    """A model id, embedded model or local folder cannot be found or loaded."""


class MethodNotFound(NotFoundError):
    """A guidance method name or ``path/to/file.py:function`` is unknown."""


class MetricNotFound(NotFoundError):
    """A metric, role, layer or phase named in a selection is not in the data."""


class EmptySelection(AttnlensError):
    """A selection (of runs, steps, layers or table rows) leaves nothing to work on."""


class StoreError(AttnlensError):
    """A run store cannot be written or read."""


class RunExists(StoreError):
    """The output folder already holds a complete run and overwriting was not asked for."""


class RunLocked(StoreError):
    """The output folder is being recorded by another process that is still running (it holds the run's lock)."""


__all__ = ["AttnlensError", "BadOption", "ConfigError", "EmptySelection", "MethodNotFound", "MetricNotFound",
           "ModelNotFound", "NotARunError", "NotFoundError", "RunExists", "RunLocked", "RunNotFound", "StoreError"]
