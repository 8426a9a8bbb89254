"""Fast paths around zarr for the map arrays: whole chunks written and read straight from their files.

zarr's per-call asynchronous machinery costs milliseconds per chunk; on a small model that is more than the denoising
step itself. Both directions live here, side by side, and both reproduce zarr's own encoding exactly (the array's
codecs ``bytes`` little-endian then ``blosc`` or ``zstd``, its chunk key encoding) or step aside: every
``for_array``/``from_layer`` returns None for a layout it does not reproduce, and callers then go through zarr.
``tests/unit/test_store_chunks.py`` checks that zarr reads what these write and that these read what zarr writes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
from numcodecs import Blosc, Zstd
from packaging.version import Version

from .layout import PHASES

#: chunk files named ``c.<step>.<phase>.<iteration>.0…`` side by side in one folder: the default ``/`` separator
#: nests every chunk eight folders deep, and creating those folders cost more than the denoising step itself
FLAT_CHUNK_KEYS = {"name": "default", "separator": "."}


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


def _write_file(path: Path, raw: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)


class ChunkReader:
    """Reads whole chunks of a map array straight from their files when the array has the layout ``RunWriter``
    writes — one chunk per (step, phase, iteration), codecs ``bytes`` (little-endian) then ``blosc`` or ``zstd``
    (without checksum), float16/float32 — which skips zarr's per-chunk asynchronous machinery (about 4× faster per
    chunk; numcodecs releases the GIL while decompressing). A missing chunk file is the fill value (NaN), as zarr
    reads it. The reading twin of :class:`ChunkFiles`.

    :meth:`for_array` returns None for any other layout; callers then read through zarr.
    """

    def __init__(self, folder: Path, arr: Any, dtype: np.dtype, codec: str):
        self.folder, self.arr, self.dtype = folder, arr, dtype
        self.shape = tuple(arr.shape[3:])
        self.codec = Blosc() if codec == "blosc" else Zstd()  # blosc buffers describe their own settings

    @classmethod
    def for_array(cls, arr: Any, folder: Path) -> "ChunkReader | None":
        """A reader of ``arr`` (a map array of MAP_DIMS) whose chunk files are in ``folder``, or None."""
        try:
            md = arr.metadata
            codecs = [c.to_dict() for c in md.codecs]
            chunk = tuple(md.chunk_grid.chunk_shape)
            compressor = codecs[1] if len(codecs) == 2 else {}
            name = compressor.get("name")
            ok = (len(codecs) == 2 and codecs[0].get("name") == "bytes"
                  and (codecs[0].get("configuration") or {}).get("endian", "little") == "little"
                  and (name == "blosc" or (name == "zstd"
                                           and not (compressor.get("configuration") or {}).get("checksum", False)))
                  and chunk == (1, 1, 1, *arr.shape[3:]) and arr.dtype in (np.float16, np.float32))
            if not ok or not Path(folder).is_dir():
                return None
            return cls(Path(folder), arr, np.dtype(arr.dtype).newbyteorder("<"), name)
        except Exception:  # noqa: BLE001  (any unexpected metadata: use zarr)
            return None

    def read(self, step: int, ph: int, it: int, missing_ok: bool = True) -> np.ndarray:
        """The chunk at (step, phase index, iteration). A missing file is NaN (zarr's fill value), or
        ``FileNotFoundError`` with ``missing_ok=False``; bytes that do not decode to the chunk raise ``ValueError``."""
        key = self.arr.metadata.encode_chunk_key((step, ph, it) + (0,) * len(self.shape))
        try:
            raw = (self.folder / key).read_bytes()
        except FileNotFoundError:
            if not missing_ok:
                raise
            return np.full(self.shape, np.nan, dtype=self.dtype)
        try:
            return np.frombuffer(self.codec.decode(raw), dtype=self.dtype).reshape(self.shape)
        except (RuntimeError, ValueError, TypeError, SystemError) as exc:  # numcodecs: "error during blosc
            # decompression"; a truncated blosc frame: SystemError "Negative size passed to PyBytes_..."
            raise ValueError(f"chunk {key} does not decode ({exc})") from exc
