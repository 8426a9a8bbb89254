"""The ``attnlens`` command line. Each command is a thin layer over one library function.

Data goes to stdout; progress, warnings and errors go to stderr. Known errors print one line and a hint and exit
with status 2; unexpected ones print one line and exit 1 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import os
import sys
from typing import Callable

import typer

from ..errors import AttnlensError
from ._output import err_console

app = typer.Typer(
    name="attnlens",
    help=(
        "Record, analyse and compare the cross-attention maps of guided text-to-image diffusion.\n\n"
        "Typical session:\n\n"
        "  attnlens record \"a red crown and a golden strawberry\" --method syngen --seed 1 --seed 2\n\n"
        "  attnlens ls runs/\n\n"
        "  attnlens info runs/a-red-crown-and-a-golden-strawberry/syngen-seed1\n\n"
        "The embedded default model (attnlens-shapes, trained on coloured shapes) runs offline on a CPU; pass --model "
        "CompVis/stable-diffusion-v1-4 (or a local folder) for a real model on a GPU."
    ),
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_DEBUG = {"on": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    _DEBUG["on"] = debug


def _register() -> None:
    from . import record as _record  # noqa: F401  (commands register themselves on `app`)
    from . import inspect as _inspect  # noqa: F401
    for optional in ("analyze", "dashboard", "bench"):
        try:
            __import__(f"{__name__}.{optional}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{optional}":
                raise


def run_guarded(fn: Callable[[], object]) -> int:
    """Run ``fn`` turning known errors into one-line messages and exit codes."""
    import warnings

    try:
        fn()
        return 0
    except AttnlensError as exc:
        if _DEBUG["on"]:
            raise
        err_console.print(f"error: {exc.message}", markup=False, highlight=False)
        if exc.hint:
            err_console.print(f"hint: {exc.hint}", markup=False, highlight=False)
        return 2
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
    finally:
        warnings.resetwarnings()


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _quiet_libraries()
    _register()
    args = sys.argv[1:] if argv is None else argv
    _DEBUG["on"] = "--debug" in args

    def invoke():
        try:
            app(args=args, standalone_mode=False)
        except SystemExit as exc:  # typer/click exits for --help
            if exc.code not in (0, None):
                raise
    import click

    try:
        code = run_guarded(invoke)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        err_console.print(f"error: {exc.format_message()}", markup=False, highlight=False)
        err_console.print("hint: see 'attnlens --help' or 'attnlens COMMAND --help'", markup=False)
        code = 2
    except click.exceptions.Abort:
        code = 130
    if argv is None:
        sys.exit(code)
    return code


def _quiet_libraries() -> None:
    """Silence library logs and progress bars without importing them (imports stay lazy: `ls` starts fast)."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    for name in ("diffusers", "transformers", "huggingface_hub", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
