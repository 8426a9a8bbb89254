"""The typer app every command registers on, and helpers the commands share. Command modules import this module,
never the package (whose ``main`` imports the commands)."""

from __future__ import annotations

import contextlib

import typer

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


@contextlib.contextmanager
def quiet_model_loading():
    """No per-component progress bars while a command loads a model (``with quiet_model_loading(): load(...)``);
    the libraries' previous setting is restored afterwards. It imports diffusers and transformers, which ``ls`` and
    ``info`` never need, so only the commands that load a model use it."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    before = [(m, m.is_progress_bar_enabled()) for m in (dlog, tlog)]
    for m, _ in before:
        m.disable_progress_bar()
    try:
        yield
    finally:
        for m, was in before:
            if was:
                m.enable_progress_bar()


class CommandInterrupted(Exception):
    """Raised by a command that handled Ctrl-C itself: ``message`` (one line) says what was left undone; exit 130.
    Not a KeyboardInterrupt, so typer (which turns those into an exit code) lets it through to :func:`run_guarded`."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message
