"""Path safety: only runs under the dashboard's root are reachable.

Every path that comes from outside (the URL query) is a path *relative to the root*; :func:`resolve_under` resolves
it (symbolic links included) and refuses anything that is absolute, empty, or ends up outside the root.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath


class UnsafePath(ValueError):
    """A path from the URL that is not inside the root."""


def resolve_root(root: str | os.PathLike) -> Path:
    """The root as an absolute, resolved path (it must exist and be a folder)."""
    p = Path(root).expanduser().resolve()
    if not p.exists():
        raise FileNotFoundError(f"'{root}' does not exist")
    if not p.is_dir():
        raise NotADirectoryError(f"'{root}' is not a folder")
    return p


def is_under(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """Whether ``path`` (resolved, links followed) is ``root`` or inside it."""
    try:
        Path(path).resolve().relative_to(Path(root).resolve())
        return True
    except ValueError:
        return False


def resolve_under(root: str | os.PathLike, rel: str) -> Path:
    """Resolve ``rel`` (a path relative to ``root``, as written in the URL) and check it stays inside ``root``.

    Refused (:class:`UnsafePath`): empty names, absolute paths (``/etc``, ``C:\\x``, ``~user``), NUL bytes, and
    anything that resolves outside the root (``..``, links pointing out).
    """
    if not isinstance(rel, str) or not rel.strip():
        raise UnsafePath("empty path")
    text = rel.strip()
    if "\x00" in text:
        raise UnsafePath("path contains a NUL byte")
    if text.startswith(("/", "\\", "~")) or (len(text) > 1 and text[1] == ":") or PurePosixPath(text).is_absolute():
        raise UnsafePath(f"'{text}' is absolute; only paths relative to the root are accepted")
    base = Path(root).resolve()
    candidate = (base / text.replace("\\", "/")).resolve()
    try:
        candidate.relative_to(base)
    except ValueError:
        raise UnsafePath(f"'{text}' is outside the root") from None
    return candidate


def relative_name(root: str | os.PathLike, path: str | os.PathLike) -> str:
    """``path`` relative to ``root`` in POSIX form (``"."`` for the root itself)."""
    rel = Path(path).resolve().relative_to(Path(root).resolve())
    return rel.as_posix() or "."
