"""Where a sweep's runs go, and when a run already there is reused: one rule for ``attnlens record``, ``attnlens bench``
and the analysis scripts.

**Path.** The run of ``prompt`` under the name ``name`` (a method, or a variant's label) with seed ``seed`` lives at
``ROOT/<slugify(prompt)>/<name>-seed<seed>`` (:func:`run_path`); :func:`run_name` turns a method or a label into
``name``.

:func:`sweep_paths` lays out a prompt × seed grid and refuses one in which two runs would share a folder.

**Reuse.** A run at that path is reused only when it is complete and its manifest matches what would be recorded:
the same prompt, seed, method, step count and every further setting the caller names (:func:`reusable`). Anything
else there — an incomplete, failed, interrupted (Ctrl-C) or unreadable run, or a complete one made with other
settings — is recorded again over it (a run another process is recording is refused: ``attnlens.errors.RunLocked``). ``attnlens record`` never reuses: it refuses a complete run unless ``--overwrite`` (:func:`complete_run`).

Examples::

    >>> from pathlib import Path
    >>> run_path(Path("runs"), "A red crown, and a golden strawberry!", run_name("syngen"), 1).as_posix()
    'runs/a-red-crown-and-a-golden-strawberry/syngen-seed1'
    >>> run_name("syngen", label="syngen step_size=5")
    'syngen_step_size-5'
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from .errors import AttnlensError, BadOption
from .store import STATUS_COMPLETE, is_run, read_manifest

#: how many characters of the prompt's slug name its folder
SLUG_LIMIT = 60


def slugify(text: str, limit: int = SLUG_LIMIT) -> str:
    """Lower-case ``text`` with every run of characters outside ``a-z0-9`` made one ``-``, trimmed to ``limit``
    characters (no trailing ``-``); ``"prompt"`` when nothing is left (an empty or all-symbol prompt)."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:limit].rstrip("-") or "prompt"


def run_name(method: str, label: str | None = None) -> str:
    """The name a run carries in its path.

    With a ``label`` (a benchmark variant such as ``"syngen step_size=5"``): the label with spaces made ``_`` and
    ``=`` and ``/`` made ``-``. Without one: the method's slug — for a ``path/to/file.py:function`` method, its file's
    stem."""
    if label:
        return label.replace(" ", "_").replace("=", "-").replace("/", "-")
    return slugify(Path(method).stem if method.endswith(".py") or ":" in method else method)


def run_path(root: str | Path, prompt: str, name: str, seed: int, *, slug_limit: int = SLUG_LIMIT) -> Path:
    """``ROOT/<slugify(prompt, slug_limit)>/<name>-seed<seed>``: the folder of one (prompt, name, seed) run."""
    return Path(root) / slugify(prompt, limit=slug_limit) / f"{name}-seed{seed}"


def sweep_paths(root: str | Path, prompts: Sequence[str], seeds: Sequence[int], name: str, *,
                slug_limit: int = SLUG_LIMIT) -> list[tuple[str, int, Path]]:
    """``(prompt, seed, path)`` for every prompt × seed (prompt-major), refusing a grid in which two runs would share
    one folder: a prompt or seed given twice, or two prompts with the same slug (they differ only in case,
    punctuation, non-ASCII letters or after the first ``slug_limit`` characters)."""
    targets: list[tuple[str, int, Path]] = []
    owner: dict[Path, tuple[str, int]] = {}
    for prompt in prompts:
        for seed in seeds:
            path = run_path(root, prompt, name, seed, slug_limit=slug_limit)
            if path in owner:
                first, _ = owner[path]
                what = (f"prompt '{prompt}' with seed {seed} is given twice" if first == prompt else
                        f"prompts '{first}' and '{prompt}' would share the run folder '{path.parent}'")
                raise BadOption(what, hint="give each prompt and seed once; a prompt's folder keeps only its "
                                               f"ASCII letters and digits, first {slug_limit} characters")
            owner[path] = (prompt, seed)
            targets.append((prompt, seed, path))
    return targets


def _manifest(path: str | Path) -> dict[str, Any] | None:
    """The run's manifest, or None when ``path`` holds no run or its manifest cannot be read."""
    if not is_run(path):
        return None
    try:
        return read_manifest(path)
    except AttnlensError:
        return None


def complete_run(path: str | Path) -> bool:
    """True when ``path`` holds a complete run (an unreadable manifest counts as no result)."""
    m = _manifest(path)
    return m is not None and m.get("status") == STATUS_COMPLETE


def reusable(path: str | Path, *, prompt: str, seed: int, method: str, steps: int,
             settings: Mapping[str, Any] | None = None) -> bool:
    """True when ``path`` holds a complete run of ``prompt`` with ``seed``, ``method`` and ``steps`` denoising steps
    whose manifest also has every item of ``settings`` (manifest key → value, compared after a JSON round trip, so
    tuples equal the lists they are stored as)."""
    return manifest_matches(_manifest(path), prompt=prompt, seed=seed, method=method, steps=steps, settings=settings)


def manifest_matches(m: Mapping[str, Any] | None, *, prompt: str, seed: int, method: str, steps: int,
                     settings: Mapping[str, Any] | None = None) -> bool:
    """:func:`reusable` on a manifest already read (None: no run); a sweep on an object store reads its cells'
    manifests in one batch."""
    if m is None or m.get("status") != STATUS_COMPLETE:
        return False
    recorded_method = m.get("method")
    if not isinstance(recorded_method, dict) or recorded_method.get("name") != method:
        return False
    expected = json.loads(json.dumps({"prompt": prompt, "seed": seed, "steps": steps, **(settings or {})}))
    return all(m.get(key) == value for key, value in expected.items())


__all__ = ["SLUG_LIMIT", "complete_run", "manifest_matches", "reusable", "run_name", "run_path", "slugify", "sweep_paths"]
