"""On-disk run stores: one run = one directory, a Zarr v3 group that opens without attnlens.

Layout (documented for users in ``docs/store.md``)::

    RUN/
      manifest.json                     authoritative manifest; rewritten atomically; "status" says complete or not
      zarr.json                         the root group; its attributes repeat the manifest (for plain zarr users)
      image.png | image-<k>.png         final image of each sample
      attention/<layer>/maps            (step, phase, iteration, sample, head, token, y, x) float16, one chunk per
                                        (step, phase, iteration); NaN where nothing was recorded
      attention/<layer>/{step,phase,iteration,token}   coordinate arrays (xarray.open_zarr(group=...) works)
      attention/<layer>/timestep        (step,) the scheduler timestep of each loop index
      latents/latents                   (step, sample, channel, y, x) the latent entering step i's sampling, float16
                                        when the pipeline computes in float16, else float32
      latents/final                     (sample, channel, y, x) the latent after the last step (same dtype)
      scalars/<name>                    (step, iteration, sample) float32: loss terms, grad norm, step size, ...

Writes go through ``RunWriter``, which is driven by a single background thread in ``attnlens.recorder``; readers use
``open_run`` (zarr, JSON and PNG only — nothing is ever unpickled).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .errors import AttnlensError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
PHASES = ("sample", "guidance", "sample_uncond")
MAP_DIMS = ("step", "phase", "iteration", "sample", "head", "token", "y", "x")
STATUS_RUNNING = "running"
STATUS_COMPLETE = "complete"
STATUS_FAILED = "failed"
#: chunk files named ``c.<step>.<phase>.<iteration>.0…`` side by side in one folder: the default ``/`` separator
#: nests every chunk eight folders deep, and creating those folders cost more than the denoising step itself
FLAT_CHUNK_KEYS = {"name": "default", "separator": "."}


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
    import zarr

    return zarr.codecs.BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")


class ChunkFiles:
    """Writes whole chunks of a zarr v3 array straight to their files: the bytes zarr itself would write (codecs
    ``bytes`` little-endian then ``blosc``, the array's own configuration), without zarr's per-call asynchronous
    machinery, which costs milliseconds per chunk — on a small model more than the denoising step itself.

    Each chunk goes to a temporary file that is renamed into place, so a reader (or a killed run) never sees half a
    chunk. :meth:`for_array` returns None for any array layout it does not reproduce exactly; callers then write
    through zarr.
    """

    def __init__(self, folder: Path, codec: Any, dtype: Any, chunk_shape: tuple[int, ...], separator: str):
        self.folder, self.codec = folder, codec
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.chunk_shape = tuple(chunk_shape)
        self.separator = separator
        self._dirs: set[str] = set()
        self._root = str(folder)

    def like(self, folder: Path, chunk_shape: tuple[int, ...]) -> "ChunkFiles":
        """The same codec and key encoding for another array (of the same dtype) in ``folder``."""
        return ChunkFiles(folder, self.codec, self.dtype, chunk_shape, self.separator)

    def key(self, index: tuple[int, ...]) -> str:
        """zarr's default chunk key: ``c`` then the chunk-grid indices joined by the separator."""
        full = tuple(index) + (0,) * (len(self.chunk_shape) - len(index))
        return self.separator.join(["c", *map(str, full)])

    @classmethod
    def for_array(cls, arr: Any, folder: Path) -> "ChunkFiles | None":
        try:
            import numcodecs
            from numcodecs import Blosc

            md = arr.metadata
            codecs = [c.to_dict() for c in md.codecs]
            keys = md.chunk_key_encoding.to_dict()
            separator = (keys.get("configuration") or {}).get("separator", "/")
            if (len(codecs) != 2 or codecs[0].get("name") != "bytes" or codecs[1].get("name") != "blosc"
                    or (codecs[0].get("configuration") or {}).get("endian", "little") != "little"
                    or keys.get("name") != "default"):
                return None
            c = codecs[1]["configuration"]
            config = {"cname": c["cname"], "clevel": int(c["clevel"]), "blocksize": int(c.get("blocksize", 0)),
                      "shuffle": {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[c["shuffle"]]}
            from packaging.version import Version

            if Version(numcodecs.__version__) >= Version("0.16.0"):
                config["typesize"] = int(c.get("typesize", 1))
            cf = cls(folder, Blosc.from_config(config), arr.dtype, tuple(md.chunk_grid.chunk_shape), separator)
            if cf.key((1, 2)) != md.encode_chunk_key((1, 2) + (0,) * (len(cf.chunk_shape) - 2)):
                return None
            return cf
        except Exception:  # noqa: BLE001  (an unexpected layout or version: let zarr write)
            return None

    def write(self, index: tuple[int, ...], data: np.ndarray) -> None:
        """Write the chunk at chunk-grid ``index`` (all further indices 0) with ``data`` of the chunk's shape."""
        path = os.path.join(self._root, self.key(index))
        parent = os.path.dirname(path)
        if parent not in self._dirs:
            os.makedirs(parent, exist_ok=True)
            self._dirs.add(parent)
        raw = np.ascontiguousarray(data, dtype=self.dtype).reshape(-1).view(np.uint8)
        payload = self.codec.encode(raw)
        tmp = os.path.join(parent, "." + os.path.basename(path) + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, payload)
        finally:
            os.close(fd)
        os.replace(tmp, path)


class _LazyArray:
    """A zarr array whose files were written by copying a template layer's metadata (see ``RunWriter``): opened
    through zarr only when zarr is needed (resize, writes of small arrays), which on a busy sampling loop costs tens
    of milliseconds per array."""

    def __init__(self, path: Path, shape: tuple[int, ...], encode: Callable[[np.ndarray], bytes] | None = None):
        self.path, self._shape, self._arr = path, tuple(shape), None
        self._encode = encode  # whole-array chunk encoder of a one-chunk array (``_LayerTemplate.encode``)

    def _open(self):
        if self._arr is None:
            import zarr

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


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON to ``path`` via a temporary file and ``os.replace`` (readers never see a partial file)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read ``RUN/manifest.json``; raises AttnlensError when the folder is not a run."""
    path = Path(path)
    f = path / MANIFEST
    if not f.is_file():
        raise AttnlensError(f"'{path}' is not an attnlens run (no {MANIFEST})", hint="run 'attnlens ls ROOT' to list runs")
    try:
        return json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AttnlensError(f"'{path}/{MANIFEST}' is corrupted ({exc.__class__.__name__})") from exc


def is_run(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def prepare_run_dir(path: str | Path, overwrite: bool = False) -> Path:
    """Check that ``path`` may receive a new run and create it.

    A complete run is replaced only with ``overwrite=True``; an incomplete or failed run is replaced (its data is
    not a result); any other non-empty folder is refused, so nothing already written is damaged.
    """
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise AttnlensError(f"output path '{path}' exists and is not a folder", hint="choose another --out")
        if is_run(path):
            try:
                status = read_manifest(path).get("status")
            except AttnlensError:
                status = "corrupted"
            if status == STATUS_COMPLETE and not overwrite:
                raise AttnlensError(
                    f"'{path}' already holds a complete run", hint="pass --overwrite to replace it, or choose another --out"
                )
            shutil.rmtree(path)
        elif any(path.iterdir()):
            raise AttnlensError(
                f"output folder '{path}' exists, is not empty and is not an attnlens run",
                hint="choose a new or empty folder",
            )
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".attnlens-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise AttnlensError(f"cannot write to '{path}': {exc.strerror or exc}", hint="choose a writable --out") from exc
    return path


class _LayerTemplate:
    """The files zarr wrote for one layer group (``maps`` and its coordinate arrays), kept per process and reused to
    create every later layer of the same (dtype, samples, heads) without zarr: only shapes, attributes and the small
    coordinate chunks (``step``, ``token``, ``token_text``) change, and those are re-encoded with the codec zarr chose
    (``bytes`` then ``zstd``). Creating one layer through zarr costs tens of milliseconds (asyncio round trips per
    array); writing its files costs a few hundred microseconds. ``from_layer`` returns None for any layout it does not
    reproduce exactly (other codecs, chunk keys or string type), and zarr then creates every layer."""

    REGENERATED = ("step", "token", "token_text")  # arrays whose chunk data depend on the run
    RESHAPED = ("maps", "step", "timestep", "token", "token_text")  # arrays whose metadata depend on the layer
    _cache: dict[tuple, "_LayerTemplate"] = {}

    def __init__(self, files: dict[str, bytes], group_meta: bytes, chunks: ChunkFiles, zstd: dict[str, Any]):
        self.files, self.group_meta, self.chunks, self.zstd = files, group_meta, chunks, zstd

    @classmethod
    def get(cls, key: tuple) -> "_LayerTemplate | None":
        return cls._cache.get(key)

    @classmethod
    def from_layer(cls, key: tuple, folder: Path, chunks: ChunkFiles | None) -> "_LayerTemplate | None":
        if chunks is None:
            return None
        try:
            # metadata of every array, and the chunks of the run-independent ones (phase, iteration)
            files = {}
            for f in folder.rglob("*"):
                rel = f.relative_to(folder).as_posix()
                name = rel.split("/")[0]
                if f.is_file() and not f.name.startswith(".") and (
                        rel.endswith("zarr.json") or name not in ("maps", "timestep", *cls.REGENERATED)):
                    files[rel] = f.read_bytes()
            zstd = None
            for name in (*cls.REGENERATED, "timestep"):
                meta = json.loads(files[f"{name}/zarr.json"])
                codecs = meta["codecs"]
                keys = meta["chunk_key_encoding"]
                if (len(codecs) != 2 or codecs[0] != {"name": "bytes", "configuration": {"endian": "little"}}
                        or codecs[1].get("name") != "zstd" or keys.get("name") != "default"
                        or (keys.get("configuration") or {}).get("separator", "/") != "/"
                        or meta["chunk_grid"]["configuration"]["chunk_shape"] != meta["shape"]):
                    return None
                cfg = codecs[1].get("configuration") or {}
                zstd = zstd or {"level": int(cfg.get("level", 0)), "checksum": bool(cfg.get("checksum", False))}
                if {"level": int(cfg.get("level", 0)), "checksum": bool(cfg.get("checksum", False))} != zstd:
                    return None
            text_type = json.loads(files["token_text/zarr.json"])["data_type"]
            if not (isinstance(text_type, dict) and text_type.get("name") == "fixed_length_utf32"):
                return None
            group_meta = (folder.parent / "zarr.json").read_bytes()
        except (KeyError, ValueError, TypeError, OSError):
            return None
        template = cls(files, group_meta, chunks, zstd)
        cls._cache[key] = template
        return template

    def encode(self, values: np.ndarray) -> bytes:
        """The chunk bytes of a whole little-endian array under the ``bytes`` + ``zstd`` codecs."""
        from numcodecs import Zstd

        return Zstd(level=self.zstd["level"], checksum=self.zstd["checksum"]).encode(np.ascontiguousarray(values).tobytes())

    def write(self, folder: Path, layer: str, shape: tuple[int, ...], n_steps: int, text: np.ndarray) -> ChunkFiles:
        """Write layer ``layer`` (maps of ``shape`` = (sample, head, token, y, x)) into ``folder``; returns the maps'
        chunk writer."""
        s, h, t, y, x = shape
        n = max(n_steps, 1)
        full = (n, len(PHASES), 1, s, h, t, y, x)
        group = folder.parent / "zarr.json"
        if not group.exists():
            _write_file(group, self.group_meta)
        data = {"step": np.arange(n, dtype="<i8"), "token": np.arange(t, dtype="<i8"), "token_text": text}
        for rel, raw in self.files.items():
            name, _, rest = rel.partition("/")
            if rest != "zarr.json" or name not in self.RESHAPED:
                if rest != "zarr.json" and name in data:
                    continue  # chunks regenerated below
                _write_file(folder / rel, raw)  # the same bytes in every layer
                continue
            meta = json.loads(raw)
            if name == "maps":
                meta["shape"] = list(full)
                meta["chunk_grid"]["configuration"]["chunk_shape"] = [1, 1, 1, s, h, t, y, x]
                meta.setdefault("attributes", {}).update({"layer": layer, "resolution": [y, x]})
            else:
                dims = {"step": [n], "timestep": [n], "token": [t], "token_text": [s, t]}[name]
                meta["shape"] = dims
                meta["chunk_grid"]["configuration"]["chunk_shape"] = dims
                if name == "token_text":
                    meta["data_type"]["configuration"]["length_bytes"] = text.dtype.itemsize  # 4 bytes a character
            # compact: json's C encoder (an indented dump runs the pure-Python one, ~0.4 ms a file)
            _write_file(folder / rel, json.dumps(meta, separators=(",", ":")).encode())
        for name, values in data.items():
            _write_file(folder / name / "c" / "/".join(["0"] * values.ndim), self.encode(values))
        return self.chunks.like(folder / "maps", (1, 1, 1, s, h, t, y, x))


def _latent_dtype(latent: np.ndarray) -> str:
    """Latents are stored as the pipeline computed them: float16 stays float16, anything else is float32."""
    return "float16" if latent.dtype == np.float16 else "float32"


def _write_file(path: Path, raw: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)


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
    """

    def __init__(self, path: str | Path, manifest: dict[str, Any], *, overwrite: bool = False):
        import zarr

        self.path = prepare_run_dir(path, overwrite=overwrite)
        self.manifest = dict(manifest)
        self.manifest.setdefault("schema_version", SCHEMA_VERSION)
        self.manifest["status"] = STATUS_RUNNING
        self.manifest.setdefault("timings", {})["started"] = time.time()
        self.group = zarr.open_group(str(self.path), mode="w", zarr_format=3)
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

    # -- manifest ---------------------------------------------------------------------------------------------
    def write_manifest(self) -> None:
        write_json_atomic(self.path / MANIFEST, self.manifest)
        self.group.attrs.update({"attnlens": json.loads(json.dumps(self.manifest, default=str))})

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

    def finish(self, status: str = STATUS_COMPLETE, error: str | None = None) -> None:
        try:
            self.flush()
        except Exception as exc:  # noqa: BLE001  (disk full while flushing: the run is not complete)
            if status == STATUS_COMPLETE:
                status, error = STATUS_FAILED, f"{type(exc).__name__}: {exc}"
        self.manifest["status"] = status
        t = self.manifest.setdefault("timings", {})
        t["finished"] = time.time()
        t["wall_s"] = t["finished"] - t.get("started", t["finished"])
        if error:
            self.manifest["error"] = error
        self.manifest["layers"] = {
            name: {"shape": list(a.shape), "dims": list(MAP_DIMS)} for name, a in self._arrays.items()
            if "/" not in name
        }
        self.write_manifest()

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
            _LayerTemplate.from_layer(key, self.path / "attention" / layer, self._chunks.get(layer))
            return arr
        folder = self.path / "attention" / layer
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
        self._chunks[layer] = ChunkFiles.for_array(arr, self.path / "attention" / layer / "maps")
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
            self._chunks["latents/latents"] = ChunkFiles.for_array(arr, self.path / "latents" / "latents")
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
        from PIL import Image

        if not isinstance(image, Image.Image):
            arr = np.asarray(image)
            if arr.dtype != np.uint8:
                arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
            image = Image.fromarray(arr)
        name = "image.png" if n_samples == 1 else f"image-{sample}.png"
        image.save(self.path / name)
        self.manifest.setdefault("images", {})[str(sample)] = name
        return name


# ------------------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """A recorded run, opened read-only. Arrays are read lazily from Zarr.

    Examples::

        >>> import attnlens
        >>> pipe = attnlens.load_pipeline("attnlens-tiny")
        >>> _ = attnlens.sample(pipe, "a red crown and a golden strawberry", out="runs/red-crown",
        ...                     num_inference_steps=12)
        >>> run = attnlens.open_run("runs/red-crown")
        >>> run.layers[0]                                                   # module paths
        'down_blocks.0.attentions.0.transformer_blocks.0.attn2'
        >>> m = run.maps(run.layers[0], step=10)        # (sample, head, token, y, x) numpy
        >>> m.shape, m.dtype
        ((1, 1, 9, 16, 16), dtype('float32'))
        >>> run.token_positions("strawberry")
        [7]
    """

    path: Path
    manifest: dict[str, Any]

    @property
    def status(self) -> str:
        return self.manifest.get("status", "unknown")

    @property
    def complete(self) -> bool:
        return self.status == STATUS_COMPLETE

    @property
    def group(self):
        import zarr

        return zarr.open_group(str(self.path), mode="r", zarr_format=3)

    @property
    def layers(self) -> list[str]:
        g = self.group
        if "attention" not in g:
            return []
        att = g["attention"]
        # a run killed while creating a layer can leave its group without the array: that layer has no data
        names = [name for name in att.group_keys() if "maps" in att[name]]
        return sorted(names, key=layer_sort_key)

    def array(self, layer: str):
        """The zarr array of ``layer`` (dims ``MAP_DIMS``)."""
        try:
            return self.group[f"attention/{layer}/maps"]
        except KeyError:
            import difflib

            close = difflib.get_close_matches(layer, self.layers, n=3)
            raise AttnlensError(f"no layer '{layer}' in {self.path}", hint=f"closest: {', '.join(close) or 'none'}")

    def resolution(self, layer: str) -> tuple[int, int]:
        shape = self.array(layer).shape
        return int(shape[-2]), int(shape[-1])

    def resolutions(self) -> dict[str, tuple[int, int]]:
        return {name: self.resolution(name) for name in self.layers}

    def maps(self, layer: str, step: int | slice = slice(None), phase: str = "sample", iteration: int = 0,
             sample: int | slice = slice(None)) -> np.ndarray:
        """Maps of ``layer`` at ``step`` as float32 numpy, dims ``(sample, head, token, y, x)`` for an int step."""
        arr = self.array(layer)
        it = iteration if iteration < arr.shape[2] else None
        if it is None:
            raise AttnlensError(f"iteration {iteration} was not recorded (max {arr.shape[2] - 1})")
        return np.asarray(arr[step, PHASES.index(phase), it, sample]).astype(np.float32)

    def recorded_steps(self, layer: str | None = None, phase: str = "sample", iteration: int = 0) -> list[int]:
        """Loop indices with data for (phase, iteration), read from the record index in the manifest."""
        index = self.manifest.get("records", {}).get(phase, {})
        return sorted(int(s) for s, its in index.items() if iteration in its)

    @property
    def tokens(self) -> list[list[str]]:
        return [s["pieces"] for s in self.manifest.get("samples", [])]

    def token_positions(self, word: str, sample: int = 0) -> list[int]:
        """Positions of ``word`` in sample ``sample``: its pieces (case-insensitive, ``</w>`` ignored)."""
        pieces = self.tokens[sample]
        target = word.lower().replace(" ", "")
        clean = [p.replace("</w>", "").lower() for p in pieces]
        for start in range(len(clean)):
            acc = ""
            for end in range(start, len(clean)):
                acc += clean[end]
                if acc == target:
                    return list(range(start, end + 1))
                if not target.startswith(acc):
                    break
        raise AttnlensError(f"'{word}' is not a word of the prompt", hint=f"tokens: {' '.join(pieces)}")

    def timesteps(self) -> np.ndarray:
        layer = self.layers[0]
        return np.asarray(self.group[f"attention/{layer}/timestep"][:])

    def latents(self) -> np.ndarray | None:
        g = self.group
        if "latents" not in g or "latents" not in g["latents"]:
            return None
        return np.asarray(g["latents/latents"][:], dtype=np.float32)

    def scalars(self) -> dict[str, np.ndarray]:
        """``{name: (step, iteration, sample) array}`` of the per-step scalars (loss terms, grad norm, ...)."""
        g = self.group
        if "scalars" not in g:
            return {}
        return {name: np.asarray(a[:]) for name, a in g["scalars"].arrays()}

    def image(self, sample: int = 0):
        from PIL import Image

        name = self.manifest.get("images", {}).get(str(sample))
        if name is None:
            return None
        with Image.open(self.path / name) as image:
            image.load()  # read now: no file handle stays open
        return image

    def to_xarray(self, layer: str):
        """The layer as an ``xarray.Dataset`` (same as ``xr.open_zarr(run, group="attention/<layer>")``)."""
        import xarray as xr

        return xr.open_zarr(str(self.path), group=f"attention/{layer}", consolidated=False)

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())

    def __repr__(self) -> str:
        m = self.manifest
        return (f"Run({str(self.path)!r}, status={self.status!r}, method={m.get('method', {}).get('name')!r}, "
                f"prompt={m.get('prompt')!r}, seed={m.get('seed')!r})")


def layer_sort_key(name: str):
    """Order layers as the UNet executes them: down blocks, mid block, up blocks (then by index)."""
    order = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
    parts = name.split(".")
    return (order.get(parts[0], 3), [int(p) if p.isdigit() else p for p in parts[1:]])


def open_run(path: str | Path) -> Run:
    """Open a run store read-only (manifest + lazy Zarr arrays)."""
    path = Path(path)
    return Run(path=path, manifest=read_manifest(path))


def find_runs(root: str | Path) -> Iterator[Path]:
    """Every run folder under ``root`` (``root`` itself if it is a run), sorted."""
    root = Path(root)
    if not root.exists():
        raise AttnlensError(f"'{root}' does not exist")
    if is_run(root):
        yield root
        return
    for manifest in sorted(root.rglob(MANIFEST)):
        yield manifest.parent
