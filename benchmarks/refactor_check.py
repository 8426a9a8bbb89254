"""Refactors keep numbers: record a fixed set of runs, then compare two recordings array for array, bit for bit.

    python benchmarks/refactor_check.py record out/refactor/before      # before the change
    python benchmarks/refactor_check.py record out/refactor/after       # after it
    python benchmarks/refactor_check.py compare out/refactor/before out/refactor/after

The fixed set is every built-in method on both embedded models (attnlens-tiny and attnlens-shapes), each with the
default head mean and with ``--heads all``: 20 runs through ``attnlens record`` plus one ``attnlens analyze`` table
per model. ``compare`` opens every run with plain zarr (no attnlens import), so it reads the arrays the way a user of
the store would, and compares:

* every array (maps, coordinates, latents, timesteps, per-step scalars): dtype, shape and raw bytes;
* the manifest's numeric and configuration fields (timestamps, durations, library versions and the store's schema
  version are left out; a key one side writes as null or empty and the other omits counts as equal);
* each image's pixels;
* each ``analyze`` table, row for row (NaN equals NaN).

It exits 1 and names the first differences when anything differs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

METHODS = ("none", "syngen", "syngen-entropy", "attend-excite", "divide-bind")
MODELS = {
    "attnlens-tiny": "a red crown and a golden strawberry",
    "attnlens-shapes": "a red square and a blue circle",
}
HEADS = ("mean", "all")
STEPS = 6
#: manifest keys that describe when and where a run was made, not what it computed
VOLATILE = {"created", "finished", "updated", "duration_s", "elapsed_s", "versions", "environment", "host", "path",
            "timings", "schema_version",
            "timing", "started", "wall_s", "sample_s"}


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "attnlens", *args], check=True)


def steps_flag() -> str:
    """The flag of ``attnlens record`` that sets the number of denoising steps: ``--n-steps`` since the CLI's flags
    mean one thing everywhere (``--steps`` is a step selection), ``--steps`` on the code the baseline was recorded
    with; asking ``record --help`` lets the same script record both."""
    out = subprocess.run([sys.executable, "-m", "attnlens", "record", "--help"], capture_output=True, text=True,
                         check=True).stdout
    return "--n-steps" if "--n-steps" in out else "--steps"


def record(out: Path) -> None:
    n_steps = steps_flag()
    for model, prompt in MODELS.items():
        for heads in HEADS:
            for method in METHODS:
                cli("record", prompt, "--model", model, "--method", method, n_steps, str(STEPS), "--seed", "0",
                    "--heads", heads, "--out", str(out / model / f"heads-{heads}"))
        cli("analyze", str(out / model / "heads-mean"), "--out", str(out / f"{model}.parquet"))


def _arrays(group, prefix: str = ""):
    import zarr

    for name, node in sorted(group.members()):
        key = f"{prefix}{name}"
        if isinstance(node, zarr.Array):
            yield key, node
        else:
            yield from _arrays(node, key + "/")


def _clean(value):
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in sorted(value.items()) if k not in VOLATILE}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _relative_run(path: str) -> str:
    """A run path from an ``analyze`` table, from its model folder on (``attnlens-tiny/heads-mean/...``): the roots
    of two recordings differ, and one may be spelled relative and the other absolute."""
    for model in MODELS:
        if f"{model}/" in path:
            return path[path.index(f"{model}/"):]
    return path


def _run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent.relative_to(root) for p in root.rglob("manifest.json"))


def _manifest(run: Path) -> dict:
    return _clean(json.loads((run / "manifest.json").read_text()))


def _group(run: Path):
    import zarr

    store = run / "data.zarr" if (run / "data.zarr").is_dir() else run
    return zarr.open_group(str(store), mode="r")


def compare(a: Path, b: Path, limit: int = 20) -> list[str]:
    import warnings

    from PIL import Image

    diffs: list[str] = []
    runs_a, runs_b = _run_dirs(a), _run_dirs(b)
    if runs_a != runs_b:
        diffs.append(f"different runs: only in A {sorted(set(runs_a) - set(runs_b))}, "
                     f"only in B {sorted(set(runs_b) - set(runs_a))}")
    n_arrays = 0
    for rel in runs_a:
        if rel not in runs_b:
            continue
        ra, rb = a / rel, b / rel
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arrs_a, arrs_b = dict(_arrays(_group(ra))), dict(_arrays(_group(rb)))
        if sorted(arrs_a) != sorted(arrs_b):
            diffs.append(f"{rel}: arrays differ: {sorted(set(arrs_a) ^ set(arrs_b))}")
        for key in sorted(set(arrs_a) & set(arrs_b)):
            x, y = arrs_a[key][...], arrs_b[key][...]
            n_arrays += 1
            if x.dtype != y.dtype or x.shape != y.shape:
                diffs.append(f"{rel}/{key}: {x.dtype}{x.shape} vs {y.dtype}{y.shape}")
            elif x.dtype.kind in "fiub" and x.tobytes() != y.tobytes():
                diffs.append(f"{rel}/{key}: values differ (max |diff| {np.nanmax(np.abs(x.astype(float) - y)):.3g})")
            elif x.dtype.kind not in "fiub" and not np.array_equal(x, y):
                diffs.append(f"{rel}/{key}: values differ")
        ma, mb = _manifest(ra), _manifest(rb)
        for k in sorted(set(ma) | set(mb)):
            # a key one schema writes as null/empty and the other leaves out is the same information
            if ma.get(k) != mb.get(k) and not (ma.get(k) in (None, {}, []) and mb.get(k) in (None, {}, [])):
                diffs.append(f"{rel}/manifest.{k}: {ma.get(k)!r} vs {mb.get(k)!r}")
        for png in sorted(p.name for p in ra.rglob("*.png")):
            pa = next(ra.rglob(png))
            pb = next(rb.rglob(png), None)
            if pb is None or not np.array_equal(np.asarray(Image.open(pa)), np.asarray(Image.open(pb))):
                diffs.append(f"{rel}/{png}: image differs or is missing")
    import pandas as pd

    for table in sorted(p.name for p in a.glob("*.parquet")):
        ta, tb = pd.read_parquet(a / table), pd.read_parquet(b / table)
        for t in (ta, tb):  # run paths differ between the two roots
            for col in [c for c in t.columns if c in ("run", "path", "run_path")]:
                t[col] = t[col].astype(str).map(_relative_run)
        try:
            pd.testing.assert_frame_equal(ta, tb, check_exact=True)
        except AssertionError as exc:
            diffs.append(f"{table}: {str(exc).splitlines()[0]}")
    print(f"compared {len(runs_a)} runs, {n_arrays} arrays, {len(list(a.glob('*.parquet')))} tables", file=sys.stderr)
    return diffs[:limit] + ([f"... and {len(diffs) - limit} more"] if len(diffs) > limit else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("record").add_argument("out", type=Path)
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    args = parser.parse_args(argv)
    if args.command == "record":
        record(args.out)
        return 0
    diffs = compare(args.a, args.b)
    for d in diffs:
        print(d)
    print("identical" if not diffs else f"{len(diffs)} difference(s)")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
