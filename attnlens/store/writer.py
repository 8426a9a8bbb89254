"""Writing one run store: ``RunWriter`` creates the run folder, fills its arrays and owns its manifest.

The manifest (``attnlens.store.layout.Manifest``) has this one writer: the recorder and the sampler hand it values
through :meth:`RunWriter.annotate`, :meth:`RunWriter.set_samples` and :meth:`RunWriter.finish`, and only this module
writes ``manifest.json``. ``RunWriter`` is driven by a single thread (the recorder's writer thread).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import zarr
from PIL import Image

try:
    import fcntl
except ImportError:  # not on POSIX: runs are not locked
    fcntl = None

from ..errors import AttnlensError, ConfigError, RunExists, RunLocked, StoreError
from ._fastzarr import FLAT_CHUNK_KEYS, ChunkFiles, _LayerTemplate
from .layout import (DATA, LOCK, MANIFEST, MAP_DIMS, PHASES, STATUS_COMPLETE, STATUS_FAILED, STATUS_RUNNING,
                     Manifest, Sample, image_name, run_entries, write_json_atomic)
from .reader import is_run, read_manifest


@contextlib.contextmanager
def _quiet_zarr_strings():
    """Fixed-width unicode coordinates (phase names, token pieces) trigger zarr's 'no v3 spec yet' warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
        yield


def _compressor():
    """Blosc (zstd, level 5) with bit-shuffle. ``python benchmarks/store_codecs.py`` on the embedded model's maps
    (fp16, typesize 2): 0.665 of raw size at 71 µs a chunk, against 0.688 at 36 µs for level 1 and 0.722 for lz4;
    on 64×64-sized smooth maps 0.568 against 0.597. The writer keeps up either way, so size decides: the SD 1.5
    store estimate (docs/benchmarks.md) is what this setting is held to."""
    return zarr.codecs.BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")


class _LazyArray:
    """A zarr array whose files were written by copying a template layer's metadata (see ``RunWriter``): opened
    through zarr only when zarr is needed (resize, writes of small arrays), which on a busy sampling loop costs tens
    of milliseconds per array."""

    def __init__(self, path: Path, shape: tuple[int, ...], encode: Callable[[np.ndarray], bytes] | None = None):
        self.path, self._shape, self._arr = path, tuple(shape), None
        self._encode = encode  # whole-array chunk encoder of a one-chunk array (``_LayerTemplate.encode``)

    def _open(self):
        if self._arr is None:
            self._arr = zarr.open_array(str(self.path), mode="r+")
        return self._arr

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._arr.shape) if self._arr is not None else self._shape

    def resize(self, shape) -> None:
        self._open().resize(shape)

    def __setitem__(self, key, value) -> None:
        if (self._encode is not None and self._arr is None and key is Ellipsis
                and getattr(value, "shape", None) == self._shape and value.dtype == np.float64):
            # the whole one-chunk array: write its chunk file directly (atomically), without opening zarr
            path = self.path / "c" / "/".join(["0"] * len(self._shape))
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name("." + path.name + ".tmp")
            tmp.write_bytes(self._encode(np.ascontiguousarray(value, dtype="<f8")))
            os.replace(tmp, path)
            return
        self._open()[key] = value


class RunLock:
    """The lock a recording holds on its run folder: ``fcntl.flock`` on ``RUN/.attnlens-lock``, which records the
    holder's pid and host. The kernel drops a flock when its process dies, so a recording killed with ``kill -9``
    leaves no lock behind (only the file, which the next recording takes over). Readers never take it.

    :meth:`acquire` refuses at once (:class:`~attnlens.errors.RunLocked`) while another live process holds it;
    :meth:`release` deletes the file and drops the lock (idempotent). On a platform without ``fcntl``, or a file
    system without ``flock``, nothing is locked."""

    def __init__(self, path: Path, fd: int | None):
        self.path, self._fd = path, fd

    @classmethod
    def acquire(cls, run: Path) -> "RunLock":
        path = Path(run) / LOCK
        if fcntl is None:
            return cls(path, None)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # never truncated before it is ours
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _holder(fd)
                os.close(fd)
                if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise _locked(run, holder) from None
                if exc.errno in _NO_LOCKS:  # a file system without flock (some network mounts): record unlocked
                    with contextlib.suppress(OSError):
                        path.unlink()
                    return cls(path, None)
                raise StoreError(f"cannot lock '{run}': {exc.strerror or exc}",
                                 hint="choose another --out (a local disk)") from exc
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:  # else the holder deleted this file as it released it: lock the file now at that path
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        return cls(path, fd)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()  # while still locked: a waiting process then locks a new file (see acquire)
            os.close(fd)

    def __del__(self):  # a writer dropped without finish (an error in the caller's code) still unlocks
        with contextlib.suppress(Exception):
            self.release()


_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL}


def _holder(fd: int) -> tuple[str, str]:
    """(pid, host) written in a lock file, as far as they can be read."""
    try:
        text = os.pread(fd, 256, 0).decode(errors="replace").split()
    except OSError:
        text = []
    return (text[0] if text else "?", text[1] if len(text) > 1 else "")


def _locked(run: Path, holder: tuple[str, str]) -> RunLocked:
    pid, host = holder
    where = f"pid {pid}" + (f" on {host}" if host and host != socket.gethostname() else "")
    return RunLocked(f"'{run}' is being recorded by another process ({where})",
                     hint="wait for it to finish or choose another --out")


def _replaceable(path: Path, overwrite: bool, stale_lock: bool = False) -> list[Path]:
    """What must be deleted before ``path`` receives a new run (refusing what may not be replaced); reads only.
    ``stale_lock``: the folder held the lock file of a recording that died (its lock was just taken over), so a
    folder without a manifest that holds only what attnlens writes is that recording's start (killed between
    creating ``data.zarr`` and its first manifest), and is replaced."""
    if not path.exists():
        return []
    if not path.is_dir():
        raise StoreError(f"output path '{path}' exists and is not a folder", hint="choose another --out")
    if is_run(path):
        try:
            status = read_manifest(path).get("status")
        except AttnlensError:
            status = "corrupted"
        if status == STATUS_COMPLETE and not overwrite:
            raise RunExists(
                f"'{path}' already holds a complete run", hint="pass --overwrite to replace it, or choose another --out"
            )
        ours, foreign = run_entries(path)
        if foreign:
            names = ", ".join(p.name for p in foreign[:3]) + (" ..." if len(foreign) > 3 else "")
            raise StoreError(f"'{path}' holds files attnlens did not write ({names}); it will not delete them",
                             hint="move them out of the run folder, or choose another --out")
        return [p for p in ours if p.name != LOCK]
    ours, foreign = run_entries(path)
    if stale_lock and not foreign:
        return [p for p in ours if p.name != LOCK]
    if any(p.name != LOCK for p in path.iterdir()):
        raise StoreError(
            f"output folder '{path}' exists, is not empty and is not an attnlens run",
            hint="choose a new or empty folder",
        )
    return []


def prepare_run_dir(path: str | Path, overwrite: bool = False) -> Path:
    """Check that ``path`` may receive a new run and create it.

    A complete run is replaced only with ``overwrite=True``; an incomplete, failed or interrupted run is replaced
    (its data is not a result); any other non-empty folder is refused, so nothing already written is damaged.
    Replacing deletes only what attnlens writes in a run folder, and is refused while the folder holds anything else
    (a user's notes, another run nested inside it). A folder that a live recording is writing is refused before
    anything is deleted (:class:`~attnlens.errors.RunLocked`).
    """
    path, lock = _prepare_locked(Path(path), overwrite)
    lock.release()
    return path


def _prepare_locked(path: Path, overwrite: bool) -> tuple[Path, RunLock]:
    """``prepare_run_dir``, returning the run's lock still held (the caller releases it). The lock is taken before
    anything is deleted; in a folder without a lock file only after the read-only checks, so that no lock file is
    left in a folder that is refused (a user's folder, a file)."""
    try:
        stale = (path / LOCK).is_file()  # if acquire succeeds, a lock file left by a recording that died
        if not stale:
            _replaceable(path, overwrite)
            path.mkdir(parents=True, exist_ok=True)
        lock = RunLock.acquire(path)  # refused here while another live recording holds it
    except OSError as exc:
        raise StoreError(f"cannot write to '{path}': {exc.strerror or exc}", hint="choose a writable --out") from exc
    try:
        for p in _replaceable(path, overwrite, stale):  # again, under the lock: what another did meanwhile counts
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        probe = path / ".attnlens-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        lock.release()
        raise StoreError(f"cannot write to '{path}': {exc.strerror or exc}", hint="choose a writable --out") from exc
    except BaseException:
        lock.release()
        raise
    return path, lock


def _latent_dtype(latent: np.ndarray) -> str:
    """Latents are stored as the pipeline computed them: float16 stays float16, anything else is float32."""
    return "float16" if latent.dtype == np.float16 else "float32"


def _token_text(tokens: list[list[str]], s: int, t: int) -> np.ndarray:
    """(sample, token) fixed-width unicode array of the token strings (zarr's ``fixed_length_utf32``)."""
    width = max([len(p) for row in tokens for p in row] + [1])
    text = np.full((s, t), "", dtype=f"<U{width}")
    for i, row in enumerate(tokens):
        text[i, : min(len(row), t)] = row[:t]
    return text


class RunWriter:
    """Creates and fills one run store. Not thread-safe: one thread (the recorder's writer) calls the array methods.

    ``open`` writes the manifest with status "running"; ``finish`` rewrites it atomically with the final status.
    From creation to ``finish`` (or ``release``) the writer holds the run folder's lock (:class:`RunLock`): a second
    writer on the same folder is refused at once and the first one's run is left untouched.
    """

    def __init__(self, path: str | Path, manifest: Manifest | dict[str, Any] | None = None, *, overwrite: bool = False):
        self.path, self._lock = _prepare_locked(Path(path), overwrite)
        try:
            self._open(manifest)
        except BaseException:
            self.release()
            raise

    def _open(self, manifest: Manifest | dict[str, Any] | None) -> None:
        self.data = self.path / DATA
        m = manifest if isinstance(manifest, Manifest) else Manifest.from_dict(dict(manifest or {}))
        self._manifest = m
        m.status = STATUS_RUNNING
        m.timings["started"] = time.time()
        self.group = zarr.open_group(str(self.data), mode="w", zarr_format=3)
        self._arrays: dict[str, Any] = {}
        self._chunks: dict[str, ChunkFiles | None] = {}
        # the first layer of a process is created through zarr, later ones from its files (``_LayerTemplate``)
        # small arrays (timesteps, scalars) are kept in memory and written whole at most every FLUSH_S seconds
        # and at the end: a zarr write re-encodes the array's one chunk, far too slow to do per map
        self._small: dict[str, np.ndarray] = {}
        self._dirty: set[str] = set()
        self._last_flush = time.monotonic()
        self._n_iter: dict[str, int] = {}
        self._n_steps: dict[str, int] = {}
        self.bytes_written = 0
        self.write_manifest()

    # -- manifest (this class is its one writer) ------------------------------------------------------------------
    @property
    def manifest(self) -> Manifest:
        """The run's manifest as written so far (read it; change it through ``annotate`` / ``set_samples``)."""
        return self._manifest

    def annotate(self, *, write: bool = True, **values: Any) -> None:
        """Set manifest fields (``steps=50``, ``model={...}``, ...). Names outside the schema go to ``extra`` (a
        caller's own entries such as a bench's ``label``); ``timings`` are merged."""
        m = self._manifest
        names = {f for f in m.__dataclass_fields__} - {"extra", "samples", "status", "schema_version"}
        for key, value in values.items():
            if key == "timings":
                m.timings.update(value or {})
            elif key in names:
                setattr(m, key, value)
            elif key in ("samples", "status", "schema_version"):
                raise ConfigError(f"the manifest's '{key}' is set by the store itself, not through annotate")
            else:
                m.extra[key] = value
        if write:
            self.write_manifest()

    def annotate_missing(self, **values: Any) -> None:
        """``annotate`` only the fields that are still unset (None or empty)."""
        m = self._manifest
        unset = {k: v for k, v in values.items()
                 if (getattr(m, k) if k in m.__dataclass_fields__ else m.extra.get(k)) in (None, {}, [])}
        self.annotate(**unset)

    def set_samples(self, samples: list[Sample]) -> None:
        """Set every sample's prompt, seed and word pieces (``prompt``/``seed`` then describe sample 0)."""
        self._manifest.set_samples(samples)
        self.write_manifest()

    def write_manifest(self, attrs: bool = False) -> None:
        """Rewrite ``manifest.json`` (atomically); with ``attrs`` also the zarr group's copy of it, which costs tens
        of milliseconds (zarr's asynchronous metadata write), so it is refreshed when the run finishes."""
        data = self._manifest.to_dict()
        write_json_atomic(self.path / MANIFEST, data)
        if attrs:
            self.group.attrs.update({"attnlens": json.loads(json.dumps(data, default=str))})

    FLUSH_S = 10.0  # zarr writes are GIL-heavy (asyncio): rarely during sampling, always at the end

    def flush(self) -> None:
        """Write the buffered small arrays (timesteps, scalars) that changed since the last flush."""
        for key in sorted(self._dirty):
            arr, values = self._arrays[key], self._small[key]
            if tuple(arr.shape) != values.shape:
                arr.resize(values.shape)
            arr[...] = values
        self._dirty.clear()
        self._last_flush = time.monotonic()

    def _maybe_flush(self) -> None:
        if self._dirty and time.monotonic() - self._last_flush >= self.FLUSH_S:
            self.flush()

    def _set_small(self, key: str, index: tuple[int, ...], value: float) -> None:
        buf = self._small[key]
        need = tuple(max(n, i + 1) for n, i in zip(buf.shape, index))
        if need != buf.shape:
            grown = np.full(need, np.nan, dtype=buf.dtype)
            grown[tuple(slice(0, n) for n in buf.shape)] = buf
            self._small[key] = buf = grown
        buf[index] = value
        self._dirty.add(key)

    def release(self) -> None:
        """Drop the run folder's lock (``finish`` does; call it only when a run is abandoned without ``finish``)."""
        self._lock.release()

    def finish(self, status: str = STATUS_COMPLETE, error: str | None = None) -> None:
        """Write what is buffered and the manifest with its final ``status``, then release the run's lock."""
        try:
            self._finish(status, error)
        finally:
            self.release()

    def _finish(self, status: str, error: str | None) -> None:
        try:
            self.flush()
        except Exception as exc:  # noqa: BLE001  (disk full while flushing: the run is not complete)
            if status == STATUS_COMPLETE:
                status, error = STATUS_FAILED, f"{type(exc).__name__}: {exc}"
        m = self._manifest
        m.status = status
        t = m.timings
        t["finished"] = time.time()
        t["wall_s"] = t["finished"] - t.get("started", t["finished"])
        if error:
            m.error = error
        m.layers = {
            name: {"shape": list(a.shape), "dims": list(MAP_DIMS)} for name, a in self._arrays.items()
            if "/" not in name
        }
        self.write_manifest(attrs=True)

    # -- arrays -----------------------------------------------------------------------------------------------
    def _grow(self, arr, axis: int, size: int) -> None:
        if arr.shape[axis] < size:
            shape = list(arr.shape)
            shape[axis] = size
            arr.resize(tuple(shape))

    def write_map(self, layer: str, step: int, phase: str, iteration: int, n_steps: int, tokens: list[list[str]],
                  timestep: float | None, data: np.ndarray) -> None:
        """Write one (sample, head, token, y, x) block at (step, phase, iteration) of ``layer``."""
        arr = self._arrays.get(layer)
        if arr is None:
            arr = self._create_layer(layer, data, n_steps, tokens)
        if step >= arr.shape[0]:
            self._grow(arr, 0, step + 1)
            self._grow(self._arrays[layer + "/step"], 0, step + 1)
            self._arrays[layer + "/step"][: step + 1] = np.arange(step + 1)
            self._grow(self._arrays[layer + "/timestep"], 0, step + 1)
        if iteration >= arr.shape[2]:
            self._grow(arr, 2, iteration + 1)
            it = self._arrays[layer + "/iteration"]
            self._grow(it, 0, iteration + 1)
            it[: iteration + 1] = np.arange(iteration + 1)
        chunks = self._chunks.get(layer)
        if chunks is not None:
            chunks.write((step, PHASES.index(phase), iteration), data)
        else:
            arr[step, PHASES.index(phase), iteration] = data
        if timestep is not None and phase != "guidance":
            self._set_small(layer + "/timestep", (step,), timestep)
        self.bytes_written += data.nbytes
        self._maybe_flush()

    def _create_layer(self, layer: str, data: np.ndarray, n_steps: int, tokens: list[list[str]]):
        s, h, t, y, x = data.shape
        key = (str(data.dtype), s, h)
        template = _LayerTemplate.get(key)
        if template is None:
            arr = self._create_layer_zarr(layer, data, n_steps, tokens)
            _LayerTemplate.from_layer(key, self.data / "attention" / layer, self._chunks.get(layer))
            return arr
        folder = self.data / "attention" / layer
        self._chunks[layer] = template.write(folder, layer, data.shape, n_steps, _token_text(tokens, s, t))
        n = max(n_steps, 1)
        arr = self._arrays[layer] = _LazyArray(folder / "maps", (n, len(PHASES), 1, s, h, t, y, x))
        for name, length in (("step", n), ("iteration", 1)):
            self._arrays[f"{layer}/{name}"] = _LazyArray(folder / name, (length,))
        self._arrays[f"{layer}/timestep"] = _LazyArray(folder / "timestep", (n,), encode=template.encode)
        self._small[f"{layer}/timestep"] = np.full((n,), np.nan)
        return arr

    def _create_layer_zarr(self, layer: str, data: np.ndarray, n_steps: int, tokens: list[list[str]]):
        s, h, t, y, x = data.shape
        g = self.group.require_group(f"attention/{layer}")
        arr = g.create_array(
            "maps", shape=(max(n_steps, 1), len(PHASES), 1, s, h, t, y, x), chunks=(1, 1, 1, s, h, t, y, x),
            dtype=data.dtype, fill_value=np.nan, compressors=_compressor(), dimension_names=list(MAP_DIMS),
            chunk_key_encoding=FLAT_CHUNK_KEYS,
        )
        arr.attrs.update({
            "description": "cross-attention probabilities (softmax over the 77 text positions) of one attn2 layer",
            "phases": list(PHASES),
            "layer": layer,
            "resolution": [y, x],
            "coordinates": "timestep token_text",
        })
        coords = {
            "step": np.arange(max(n_steps, 1)),
            "phase": np.array(PHASES),
            "iteration": np.arange(1),
            "token": np.arange(t),
        }
        with _quiet_zarr_strings():
            for name, values in coords.items():
                self._arrays[f"{layer}/{name}"] = g.create_array(name, data=values, dimension_names=[name])
        ts = g.create_array("timestep", shape=(max(n_steps, 1),), dtype="float64", fill_value=np.nan,
                            dimension_names=["step"])
        self._arrays[f"{layer}/timestep"] = ts
        self._small[f"{layer}/timestep"] = np.full((max(n_steps, 1),), np.nan)
        with _quiet_zarr_strings():
            g.create_array("token_text", data=_token_text(tokens, s, t), dimension_names=["sample", "token"])
        self._arrays[layer] = arr
        self._chunks[layer] = ChunkFiles.for_array(arr, self.data / "attention" / layer / "maps")
        return arr

    def write_latent(self, step: int, n_steps: int, latent: np.ndarray) -> None:
        arr = self._arrays.get("latents/latents")
        if arr is None:
            g = self.group.require_group("latents")
            arr = g.create_array(
                "latents", shape=(max(n_steps, 1), *latent.shape), chunks=(1, *latent.shape), dtype=_latent_dtype(latent),
                fill_value=np.nan, compressors=_compressor(), chunk_key_encoding=FLAT_CHUNK_KEYS,
                dimension_names=["step", "sample", "channel", "y", "x"],
            )
            arr.attrs["description"] = "latent entering the sampling (CFG) forward of each loop index"
            self._arrays["latents/latents"] = arr
            self._chunks["latents/latents"] = ChunkFiles.for_array(arr, self.data / "latents" / "latents")
        self._grow(arr, 0, step + 1)
        chunks = self._chunks.get("latents/latents")
        if chunks is not None:
            chunks.write((step,), latent.astype(arr.dtype))
        else:
            arr[step] = latent.astype(arr.dtype)

    def write_final_latent(self, latent: np.ndarray) -> None:
        g = self.group.require_group("latents")
        arr = g.create_array("final", data=latent.astype(_latent_dtype(latent)), dimension_names=["sample", "channel", "y", "x"],
                             overwrite=True)
        arr.attrs["description"] = "latent after the last denoising step (what the VAE decodes)"

    def write_scalar(self, name: str, step: int, iteration: int, sample: int, value: float, n_steps: int,
                     n_samples: int) -> None:
        key = f"scalars/{name}"
        arr = self._arrays.get(key)
        if arr is None:
            g = self.group.require_group("scalars")
            arr = g.create_array(name, shape=(max(n_steps, 1), 1, n_samples), chunks=(256, 64, n_samples),
                                 dtype="float32", fill_value=np.nan, dimension_names=["step", "iteration", "sample"])
            self._arrays[key] = arr
            self._small[key] = np.full((max(n_steps, 1), 1, n_samples), np.nan, dtype=np.float32)
        self._set_small(key, (step, iteration, sample), value)
        self._maybe_flush()

    def write_image(self, image, sample: int, n_samples: int) -> str:
        if not isinstance(image, Image.Image):
            arr = np.asarray(image)
            if arr.dtype != np.uint8:
                arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
            image = Image.fromarray(arr)
        name = image_name(sample, n_samples)
        image.save(self.path / name)
        self._manifest.images[str(sample)] = name
        return name

