"""The ``attnlens`` command line. Each command is a thin layer over one library function.

Data goes to stdout; progress, warnings and errors go to stderr. Known errors print one line and a hint and exit
with status 2; unexpected ones print one line and exit 1 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable

import typer

from ..errors import AttnlensError
from ._output import err_console

from ._app import _DEBUG, CommandInterrupted, app, quiet_model_loading  # noqa: F401  (app and helpers used by every command)


def _register() -> None:
    from . import record as _record  # noqa: F401  (commands register themselves on `app`)
    from . import inspect as _inspect  # noqa: F401
    for optional in ("analyze", "dashboard", "bench", "testbed", "sweep", "score"):
        try:
            __import__(f"{__name__}.{optional}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{optional}":
                raise


def run_guarded(fn: Callable[[], object]) -> int:
    """Run ``fn`` turning known errors into one-line messages and exit codes. Library warnings that only speak to
    developers (FutureWarning, DeprecationWarning) are hidden while ``fn`` runs; the caller's warning filters are
    restored afterwards (``warnings.catch_warnings``), so an in-process caller keeps its own."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            fn()
        return 0
    except AttnlensError as exc:
        if _DEBUG["on"]:
            raise
        err_console.print(f"error: {exc.message}", markup=False, highlight=False)
        if exc.hint:
            err_console.print(f"hint: {exc.hint}", markup=False, highlight=False)
        return 2
    except (typer.TyperException, typer.Exit, typer.Abort):
        raise  # usage errors and --help exits: main() reports them (exit 2 / 0)
    except CommandInterrupted as exc:
        err_console.print(exc.message, markup=False, highlight=False)
        return 130
    except KeyboardInterrupt:
        err_console.print("interrupted (runs in progress are left marked incomplete)", markup=False)
        return 130
    except OSError as exc:
        if _DEBUG["on"]:
            raise
        err_console.print(f"error: {exc.strerror or exc}: {getattr(exc, 'filename', '') or ''}".rstrip(": "), markup=False)
        return 2
    except Exception as exc:  # noqa: BLE001  (last resort: still one line, no traceback)
        if _DEBUG["on"]:
            raise
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        err_console.print(f"error: unexpected {type(exc).__name__}: {line}", markup=False, highlight=False)
        err_console.print("hint: rerun with --debug for the traceback, and report it", markup=False)
        return 1


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point (also callable in-process: the environment and loggers it quiets are restored
    when it returns)."""
    with _quiet_libraries():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    _register()
    args = sys.argv[1:] if argv is None else argv
    _DEBUG["on"] = "--debug" in args

    def invoke():
        try:
            code = app(args=args, prog_name="attnlens", standalone_mode=False)
        except SystemExit as exc:  # typer/click exits for --help
            if exc.code not in (0, None):
                raise
            return
        # without standalone mode typer *returns* the code of an exit: 130 for a Ctrl-C it caught, n for Exit(n)
        if code == 130:
            raise KeyboardInterrupt
        if type(code) is int and code:
            raise typer.Exit(code)

    try:
        code = run_guarded(invoke)
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.TyperException as exc:  # usage errors (bad flag, missing argument, bad value): exit 2, one line
        if type(exc).__name__ == "NoArgsIsHelpError":  # `attnlens` or `attnlens bench` alone: the help, as --help
            sys.stdout.write(exc.format_message().rstrip() + "\n")
            return _exit(0, argv)
        message = " ".join(exc.format_message().split())
        err_console.print(f"error: {message}", markup=False, highlight=False)
        err_console.print("hint: see 'attnlens --help' or 'attnlens COMMAND --help'", markup=False)
        code = 2
    except typer.Abort:
        code = 130
    return _exit(code, argv)


def _exit(code: int, argv: list[str] | None) -> int:
    if argv is None:
        sys.exit(code)
    return code


#: environment the CLI sets for its own process (only when unset), restored when :func:`main` returns
QUIET_ENV = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "DIFFUSERS_VERBOSITY": "error",
             "TRANSFORMERS_VERBOSITY": "error", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
QUIET_LOGGERS = ("diffusers", "transformers", "huggingface_hub", "accelerate")


@contextlib.contextmanager
def _quiet_libraries():
    """Silence library logs and progress bars for the command's duration without importing the libraries (imports
    stay lazy: `ls` starts fast). Only the CLI does this: a library user keeps their progress bars and logs."""
    import logging

    saved_env = {k: os.environ.get(k) for k in QUIET_ENV}
    saved_levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)


def run_module(command: str, argv: list[str] | None) -> None:
    """``python -m attnlens.testbed.<command> ARGS`` = ``attnlens testbed <command> ARGS``: exits non-zero on
    error (as the command does), returns on success."""
    code = main(["testbed", command, *(sys.argv[1:] if argv is None else list(argv))])
    if code:
        raise SystemExit(code)
