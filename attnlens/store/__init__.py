"""On-disk run stores: one run = one folder holding ``manifest.json``, its images and a Zarr v3 group ``data.zarr``
that opens without attnlens (documented for users in ``docs/store.md``)::

    RUN/
      manifest.json                     the manifest (``layout.Manifest``); rewritten atomically; "status" says
                                        complete or not
      image.png | image-<k>.png         final image of each sample
      data.zarr/                        the zarr group; its attributes repeat the manifest (for plain zarr users)
        attention/<layer>/maps          (step, phase, iteration, sample, head, token, y, x) float16, one chunk per
                                        (step, phase, iteration); NaN where nothing was recorded
        attention/<layer>/{step,phase,iteration,token}   coordinates (xarray.open_zarr(group=...) works)
        attention/<layer>/timestep      (step,) the scheduler timestep of each loop index
        attention/<layer>/token_text    (sample, token) the word pieces
        latents/latents                 (step, sample, channel, y, x) the latent entering step i's sampling
        latents/final                   (sample, channel, y, x) the latent after the last step
        scalars/<name>                  (step, iteration, sample) float32: loss terms, grad norm, step size, ...

Modules, bottom up: :mod:`.layout` (paths, constants, the ``Manifest`` schema), :mod:`._fastzarr` (chunk files
written and read without zarr's per-call overhead), :mod:`.reader` (``read_manifest``, ``Run``: the one map reader),
:mod:`.writer` (``RunWriter``: the manifest's one writer).
"""

from .layout import (DATA, LOCK, MANIFEST, MAP_DIMS, PHASES, SCHEMA_VERSION, STATUS_COMPLETE, STATUS_FAILED,
                     STATUS_INTERRUPTED, STATUS_RUNNING,
                     Manifest, Sample, data_path, image_name, layer_sort_key, write_json_atomic)
from .reader import Run, find_runs, is_run, listing, open_run, read_manifest
from .writer import RunWriter, prepare_run_dir

__all__ = [
    "DATA", "LOCK", "MANIFEST", "MAP_DIMS", "PHASES", "SCHEMA_VERSION", "STATUS_COMPLETE", "STATUS_FAILED",
    "STATUS_INTERRUPTED", "STATUS_RUNNING",
    "Manifest", "Run", "RunWriter", "Sample", "data_path", "find_runs", "image_name", "is_run", "layer_sort_key", "listing",
    "open_run", "prepare_run_dir", "read_manifest", "write_json_atomic",
]
