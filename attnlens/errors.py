"""Errors that attnlens reports to users as one line plus a hint (the CLI prints them without a traceback)."""

from __future__ import annotations


class AttnlensError(Exception):
    """A user-facing error: ``message`` says what is wrong, ``hint`` what to do about it."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message
