"""Tiny recorded roots for the dashboard's tests and benchmark (never imported by the page).

* :func:`record_root` records real tiny runs with the embedded model (``attnlens.sample``);
* :func:`clone_run` copies a run under another seed (to make a root of 100 runs from a few recordings);
* :func:`make_incomplete` and :func:`corrupt_run` damage copies the way an interrupted recording or a broken disk
  would (status ``running`` with the last steps missing; an unreadable manifest; unreadable arrays).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Sequence

import attnlens
from attnlens.recording import RecordingConfig
from attnlens.store import MANIFEST, data_path, find_runs, write_json_atomic

PROMPT = "a red crown and a golden strawberry"
_RECORDED: dict[tuple[str, tuple[str, ...], int, int], Path] = {}


def record_root(root: str | Path, pipe=None, *, prompt: str = PROMPT, methods: Sequence[str] = ("none", "syngen"),
                seed: int = 1, steps: int = 2, heads: str = "all") -> Path:
    """Record one tiny run per method under ``root/<prompt-slug>/<method>-seed<seed>`` (real recordings with the
    embedded model; ``heads="all"`` keeps every head so head selection can be exercised). Recorded once per
    process for the same arguments (later calls copy nothing and return the same root)."""

    root = Path(root)
    key = (str(root), tuple(methods), seed, steps)
    if key in _RECORDED:
        return _RECORDED[key]
    pipe = pipe if pipe is not None else attnlens.load_pipeline("attnlens-tiny")
    slug = "-".join(prompt.split())[:60]
    for m in methods:
        attnlens.sample(pipe, prompt, method=m, seed=seed, out=root / slug / f"{m}-seed{seed}",
                        num_inference_steps=steps, recording=RecordingConfig(heads=heads), overwrite=True)
    _RECORDED[key] = root
    return root


def _rewrite_manifest(run: Path, update) -> dict[str, Any]:

    m = json.loads((run / MANIFEST).read_text())
    update(m)
    write_json_atomic(run / MANIFEST, m)
    zj = data_path(run) / "zarr.json"
    if zj.is_file():  # the root group's attributes repeat the manifest
        z = json.loads(zj.read_text())
        z.setdefault("attributes", {})["attnlens"] = json.loads(json.dumps(m, default=str))
        zj.write_text(json.dumps(z, indent=2))
    return m


def clone_run(src: str | Path, dst: str | Path, *, seed: int | None = None, label: str | None = None) -> Path:
    """Copy a run folder to ``dst`` and set its seed (manifest and samples) and optionally a label. The maps are
    the source's: a clone is for scale (loading, listing) and pairing tests, not for new results."""
    src, dst = Path(src), Path(dst)
    shutil.copytree(src, dst)

    def update(m: dict[str, Any]) -> None:
        if seed is not None:
            m["seed"] = seed
            for s in m.get("samples") or []:
                s["seed"] = seed
        if label is not None:
            m["label"] = label

    _rewrite_manifest(dst, update)
    return dst


def make_incomplete(run: str | Path, keep_steps: int = 1) -> Path:
    """Turn a complete run into what an interrupted recording leaves: status ``running``, no ``finished`` time, no
    final image, and the map chunks of steps ≥ ``keep_steps`` removed."""
    run = Path(run)

    def update(m: dict[str, Any]) -> None:
        m["status"] = "running"
        m.get("timings", {}).pop("finished", None)
        m.pop("images", None)
        for phase, by_step in (m.get("records") or {}).items():
            for s in list(by_step):
                if int(s) >= keep_steps:
                    del by_step[s]

    _rewrite_manifest(run, update)
    for img in run.glob("image*.png"):
        img.unlink()

    for chunk in (data_path(run) / "attention").glob("*/maps/c*"):  # flat keys c.<step>.<phase>...; nested c/<step>/...
        parts = chunk.name.split(".") if chunk.is_file() else None
        if parts and len(parts) > 1 and parts[1].isdigit() and int(parts[1]) >= keep_steps:
            chunk.unlink()
        elif chunk.is_dir():
            for step_dir in chunk.iterdir():
                if step_dir.name.isdigit() and int(step_dir.name) >= keep_steps:
                    shutil.rmtree(step_dir)
    return run


def corrupt_run(run: str | Path, how: str = "manifest") -> Path:
    """Damage a run: ``manifest`` = truncated JSON (the run cannot be listed); ``arrays`` = every layer's array
    metadata replaced by garbage (the manifest reads, the maps do not)."""
    run = Path(run)
    if how == "manifest":
        text = (run / "manifest.json").read_text()
        (run / "manifest.json").write_text(text[: len(text) // 2])
    elif how == "arrays":

        for meta in (data_path(run) / "attention").glob("*/maps/zarr.json"):
            meta.write_text("{not json")
    else:
        raise ValueError(f"unknown corruption '{how}'")
    return run


def make_test_root(dst: str | Path, source: str | Path, *, seeds: Sequence[int] = (1, 2),
                   damaged: bool = False) -> Path:
    """A root for the dashboard tests from the runs recorded under ``source`` (one (prompt, seed) unit, e.g. by
    :func:`record_root`): the runs themselves, clones under the other ``seeds`` (so the across-prompts comparison
    has paired units), and with ``damaged=True``:

    * ``<prompt>/syngen-seed3`` incomplete (status ``running``, only step 0 recorded) next to a complete
      ``none-seed3``;
    * ``<prompt>/syngen-broken-seed1``: readable manifest (label ``syngen-broken``) but unreadable arrays, in the
      same (prompt, seed 1) unit as the good runs;
    * ``broken/none-seed9``: a truncated manifest.
    """

    dst, source = Path(dst), Path(source)
    runs = list(find_runs(source))
    if not runs:
        raise ValueError(f"no runs under {source}")
    for r in runs:
        unit = r.parent.name
        name, own_seed = r.name.rsplit("-seed", 1)
        shutil.copytree(r, dst / unit / r.name)
        for seed in seeds:
            if str(seed) != own_seed:
                clone_run(r, dst / unit / f"{name}-seed{seed}", seed=seed)
    if damaged:
        by_method = {r.name.rsplit("-seed", 1)[0]: r for r in runs}
        guided = next((r for m, r in by_method.items() if m != "none"), runs[0])
        unit = guided.parent.name
        clone_run(by_method.get("none", runs[0]), dst / unit / "none-seed3", seed=3)
        make_incomplete(clone_run(guided, dst / unit / "syngen-seed3", seed=3), keep_steps=1)
        corrupt_run(clone_run(guided, dst / unit / "syngen-broken-seed1", label="syngen-broken"), "arrays")
        corrupt_run(clone_run(runs[0], dst / "broken" / "none-seed9", seed=9), "manifest")
    return dst


def benchmark_root(root: str | Path, source: str | Path, n_runs: int = 100) -> Path:
    """A root of ``n_runs`` runs made from the recorded runs under ``source`` (one (prompt, seed) unit of several
    methods), cloned under seeds 1000, 1001, ... until ``n_runs`` are there."""

    root, source = Path(root), Path(source)
    src = list(find_runs(source))
    if not src:
        raise ValueError(f"no runs under {source}")
    i, seed = 0, 1000
    while i < n_runs:
        for s in src:
            if i >= n_runs:
                break
            clone_run(s, root / f"seed{seed}" / f"{s.name.rsplit('-seed', 1)[0]}-seed{seed}", seed=seed)
            i += 1
        seed += 1
    return root


__all__ = ["PROMPT", "benchmark_root", "clone_run", "corrupt_run", "make_incomplete", "make_test_root", "record_root"]
