"""The CLI's one output sink: results to stdout as text or JSON (``--format text|json``), progress, warnings and
errors to stderr.

Every command that reports a result declares :data:`FORMAT` (``--format/-f``) and :data:`JSON` (``--json``, an
alias of ``--format json`` kept for scripts) and ends with :func:`report`, which prints either the JSON document or
the text rendering. JSON goes to stdout alone (one document, ``sort_keys``), so ``attnlens ... --format json | jq``
always parses.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Callable, Sequence

import typer
from rich.console import Console

from ..errors import BadOption

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

#: the formats every reporting command accepts
FORMATS = ("text", "json")

FORMAT = typer.Option("text", "--format", "-f", help="Output format: text | json.")
JSON = typer.Option(False, "--json", help="Alias of --format json.")


def resolve_format(fmt: str | None, as_json: bool = False, choices: Sequence[str] = FORMATS,
                   default: str = "text") -> str:
    """The chosen format: ``--json`` wins over ``--format``'s default; an unknown name is a :class:`BadOption`."""
    fmt = (fmt or default).lower()
    if fmt not in choices:
        import difflib

        close = difflib.get_close_matches(fmt, list(choices), n=1)
        raise BadOption(f"unknown --format '{fmt}'",
                        hint=(f"did you mean {close[0]}? " if close else "") + f"choose one of: {', '.join(choices)}")
    if as_json:
        if fmt not in ("json", default):
            raise BadOption(f"--json and --format {fmt} contradict each other", hint="give one of them")
        return "json"
    return fmt


def show_progress(fmt: str) -> bool:
    """Whether a long command draws its progress bar: only for text output to a terminal (stderr a TTY); with
    ``--format json`` or when stderr is a file or a pipe the command runs silently."""
    return fmt == "text" and sys.stderr.isatty()


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def report(fmt: str, data: Any, text: Callable[[], Any] | str | None = None) -> None:
    """Print a command's result: ``data`` as JSON for ``fmt == "json"``, else ``text`` (a string, a rich
    renderable, or a function returning one; lazy so that JSON runs never build the text)."""
    if fmt == "json":
        emit_json(data)
        return
    if text is None:
        return
    shown = text() if callable(text) else text
    if isinstance(shown, str):
        if shown:
            console.print(shown, markup=False, highlight=False)
    else:
        console.print(shown)


def note(message: str) -> None:
    err_console.print(f"note: {message}", markup=False, highlight=False)


def warn(message: str) -> None:
    err_console.print(f"warning: {message}", markup=False)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
