"""Sweeps: many runs from one spec (``attnlens sweep SPEC --out ROOT``), on a local pool or a Ray cluster.

Modules, bottom up: :mod:`.spec` (the TOML spec, validation, cells), :mod:`.manifest` (``ROOT/sweep.json``: the
protocol and each cell's state, one writer), :mod:`.worker` (one cell: reuse or record, then score),
:mod:`.local` and :mod:`.ray_executor` (the executors), :mod:`.run` (the driver). Run paths and the reuse rule are
``attnlens.sweep``'s. ROOT is a folder or an fsspec URL (``s3://bucket/root``: each cell is published by its worker,
``attnlens.store.remote``). Documentation: ``docs/sweep.md``.
"""

from .manifest import SWEEP_MANIFEST, SweepManifest, cell_states, read_sweep
from .run import EXECUTORS, plan, run_sweep, summary
from .spec import Cell, SweepSpec, Variant, load_spec, parse_spec
from .worker import read_events, run_cell

__all__ = ["Cell", "EXECUTORS", "SWEEP_MANIFEST", "SweepManifest", "SweepSpec", "Variant", "cell_states", "load_spec",
           "parse_spec", "plan", "read_events", "read_sweep", "run_cell", "run_sweep", "summary"]
