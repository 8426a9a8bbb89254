"""Reading run stores: the manifest reader and ``Run``, the one map reader (zarr, JSON and PNG only — nothing is
ever unpickled). Analysis, the dashboard, the figures and the CLI all read maps through ``Run``."""

from __future__ import annotations

import base64
import difflib
import functools
import html
import importlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import zarr
from PIL import Image

from ..errors import AttnlensError, NotFoundError, RunNotFound, StoreError
from ._fastzarr import ChunkReader
from .layout import MANIFEST, PHASES, STATUS_COMPLETE, Manifest, data_path, layer_sort_key, validate_manifest
from ..tokens import word_positions_in
from .remote import fetch_run, find_run_urls, is_url, read_remote_manifest, remote_is_run
from .scores import read_sample_scores


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read ``RUN/manifest.json`` (``RUN`` a folder or a URL); raises AttnlensError when it is not a run."""
    if is_url(path):
        return read_remote_manifest(path)
    path = Path(path)
    f = path / MANIFEST
    if not f.is_file():
        raise RunNotFound(f"'{path}' is not an attnlens run (no {MANIFEST})", hint="run 'attnlens ls ROOT' to list runs")
    if f.is_symlink() and not f.resolve().is_relative_to(path.resolve()):
        raise StoreError(f"'{path}/{MANIFEST}' is a link to a file outside the run folder; it is not followed",
                         hint="copy the manifest into the run folder instead of linking it")
    try:
        data = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreError(f"'{path}/{MANIFEST}' is corrupted ({exc.__class__.__name__})") from exc
    return validate_manifest(data, f"'{path}/{MANIFEST}'")


def is_run(path: str | Path) -> bool:
    if is_url(path):
        return remote_is_run(path)
    return (Path(path) / MANIFEST).is_file()


@dataclass(eq=False)
class Run:
    """A recorded run, opened read-only: the one reader of a run's maps. The zarr group, the layer list, the arrays
    and their chunk readers are opened once and kept (a ``Run`` is cheap to keep and to share between threads).

    Examples::

        >>> import attnlens
        >>> pipe = attnlens.load_pipeline("attnlens-tiny")
        >>> _ = attnlens.sample(pipe, "a red crown and a golden strawberry", out="runs/red-crown",
        ...                     num_inference_steps=12)
        >>> run = attnlens.open_run("runs/red-crown")
        >>> run.layers[0]                                                   # module paths, in UNet order
        'down_blocks.0.attentions.0.transformer_blocks.0.attn2'
        >>> m = run.maps(run.layers[0], step=10)        # (sample, head, token, y, x) numpy
        >>> m.shape, m.dtype
        ((1, 1, 9, 16, 16), dtype('float32'))
        >>> run.token_positions("strawberry")
        [7]
        >>> run.info.prompt, run.info.seed, run.info.method_name
        ('a red crown and a golden strawberry', 0, 'none')
    """

    path: Path
    manifest: dict[str, Any]

    @functools.cached_property
    def info(self) -> Manifest:
        """The manifest, parsed (``Manifest``): the accessors every reader uses for prompt, seed, model, method."""
        return Manifest.from_dict(self.manifest)

    @property
    def status(self) -> str:
        return self.manifest.get("status", "unknown")

    @property
    def complete(self) -> bool:
        return self.status == STATUS_COMPLETE

    @functools.cached_property
    def data_path(self) -> Path:
        """The run's zarr group folder (``RUN/data.zarr``; ``RUN`` itself for stores of schema 1)."""
        return data_path(self.path)

    def _unreadable(self, what: str, exc: BaseException) -> StoreError:
        line = (str(exc).strip().splitlines() or [""])[0][:120]
        return StoreError(f"run '{self.path}' is damaged: {what} cannot be read ({type(exc).__name__}: {line})",
                          hint="record the run again (attnlens record ... --overwrite)")

    @functools.cached_property
    def group(self):
        try:
            return zarr.open_group(str(self.data_path), mode="r", zarr_format=3)
        except (ValueError, TypeError, KeyError) as exc:  # a garbage zarr.json (JSONDecodeError is a ValueError)
            raise self._unreadable(f"its zarr group ({self.data_path.name}/zarr.json)", exc) from None
        except FileNotFoundError as exc:
            raise self._unreadable(f"its data folder ({self.data_path.name})", exc) from None

    @functools.cached_property
    def layers(self) -> list[str]:
        g = self.group
        try:
            att = g["attention"] if "attention" in g else None
            # a run killed while creating a layer can leave its group without the array: that layer has no data
            names = [name for name in att.group_keys() if "maps" in att[name]] if att is not None else []
        except (ValueError, TypeError, KeyError) as exc:
            raise self._unreadable("its attention group", exc) from None
        if self.complete:  # every layer the complete run says it recorded must be there
            missing = [n for n in self.manifest.get("recorded_layers") or [] if n not in names]
            if missing:
                raise StoreError(f"run '{self.path}' is damaged: layer {missing[0]} is in the manifest but its maps "
                                 f"cannot be opened" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
                                 hint="record the run again (attnlens record ... --overwrite)")
        return sorted(names, key=layer_sort_key)

    @functools.cached_property
    def _arrays(self) -> dict[str, Any]:
        return {}

    def array(self, layer: str):
        """The zarr array of ``layer`` (dims ``MAP_DIMS``)."""
        arr = self._arrays.get(layer)
        if arr is not None:
            return arr
        try:
            arr = self.group[f"attention/{layer}/maps"]
        except KeyError:
            close = difflib.get_close_matches(layer, self.layers, n=3)
            raise NotFoundError(f"no layer '{layer}' in {self.path}", hint=f"closest: {', '.join(close) or 'none'}")
        except (ValueError, TypeError) as exc:
            raise self._unreadable(f"the maps of layer {layer} (zarr.json)", exc) from None
        self._arrays[layer] = arr
        return arr

    def resolution(self, layer: str) -> tuple[int, int]:
        shape = self.array(layer).shape
        return int(shape[-2]), int(shape[-1])

    def resolutions(self) -> dict[str, tuple[int, int]]:
        return {name: self.resolution(name) for name in self.layers}

    @property
    def heads(self) -> str:
        """``"mean"`` (heads averaged while recording: a head axis of length 1) or ``"all"`` — the manifest's
        ``recording.heads``."""
        return self.info.heads

    def head_count(self, layer: str) -> int:
        """Heads stored for ``layer``: 1 for a run recorded with ``heads="mean"``."""
        return 1 if self.heads == "mean" else int(self.array(layer).shape[4])

    def maps(self, layer: str, step: int | slice = slice(None), phase: str = "sample", iteration: int = 0,
             sample: int | slice = slice(None)) -> np.ndarray:
        """Maps of ``layer`` at ``step`` as float32 numpy, dims ``(sample, head, token, y, x)`` for an int step."""
        arr = self.array(layer)
        it = iteration if iteration < arr.shape[2] else None
        if it is None:
            raise NotFoundError(f"iteration {iteration} was not recorded (max {arr.shape[2] - 1})")
        try:
            return np.asarray(arr[step, PHASES.index(phase), it, sample]).astype(np.float32)
        except (RuntimeError, SystemError, ValueError, TypeError) as exc:  # a chunk that does not decode
            raise self._damaged(layer, phase, step, iteration,
                                f"a map chunk does not decode ({type(exc).__name__}: {exc})") from None

    def read(self, layer: str, steps: Sequence[int], phase: str | int = "sample", iteration: int = 0,
             sample: int | None = None, head: int | None = None) -> np.ndarray:
        """Maps of ``layer`` at ``steps`` as float64, dims ``(step, sample, head, token, y, x)``; an int ``sample``
        or ``head`` selects one and drops its axis. One zarr read for all steps (a contiguous run of steps is one
        slice)."""
        arr = self.array(layer)
        ph = phase if isinstance(phase, int) else PHASES.index(phase)
        steps = [int(s) for s in steps]
        expected = self._expected_records(PHASES[ph])
        for step in steps:  # zarr reads a missing chunk as NaN: a complete run must have every recorded one
            if (step, iteration) in expected and not self.has_chunk(layer, step, ph, iteration):
                raise self._damaged(layer, PHASES[ph], step, iteration, "its map chunk is missing")
        sel: tuple = (ph, iteration)
        if sample is not None:
            sel += (sample,)
            if head is not None:
                sel += (head,)
        try:
            if steps == list(range(steps[0], steps[-1] + 1)):
                data = arr[(slice(steps[0], steps[-1] + 1), *sel)]
            else:
                data = arr.get_orthogonal_selection((np.asarray(steps), *sel))
        except (RuntimeError, SystemError, ValueError, TypeError) as exc:  # a chunk that does not decode
            raise self._damaged(layer, PHASES[ph], steps[0] if len(steps) == 1 else f"{steps[0]}..{steps[-1]}",
                                iteration, f"a map chunk does not decode ({type(exc).__name__}: {exc})") from None
        data = np.asarray(data, dtype=np.float64)
        if sample is None and head is not None:
            data = data[:, :, head]
        return data

    def chunk_reader(self, layer: str) -> ChunkReader | None:
        """The fast chunk reader of ``layer`` (``attnlens.store._fastzarr.ChunkReader``), None for a layout it does
        not read (then :meth:`read_records` goes through zarr)."""
        cache = self.__dict__.setdefault("_readers", {})
        if layer not in cache:
            cache[layer] = ChunkReader.for_array(self.array(layer), self.data_path / "attention" / layer / "maps")
        return cache[layer]

    def read_records(self, layer: str, recs: Sequence[tuple[int, int]], phase: str | int = "sample") -> np.ndarray:
        """(step, iteration) records of one phase as float64 ``(record, sample, head, token, y, x)``: chunk by chunk
        through the fast reader, else one zarr read per distinct iteration."""
        ph = phase if isinstance(phase, int) else PHASES.index(phase)
        expected = self._expected_records(PHASES[ph])
        reader = self.chunk_reader(layer)
        if reader is not None:
            out = np.empty((len(recs), *reader.shape), dtype=np.float64)
            for i, (step, it) in enumerate(recs):
                try:
                    out[i] = reader.read(step, ph, it, missing_ok=(step, it) not in expected)
                except FileNotFoundError:
                    raise self._damaged(layer, PHASES[ph], step, it, "its map chunk is missing") from None
                except ValueError as exc:
                    raise self._damaged(layer, PHASES[ph], step, it, str(exc)) from None
            return out
        for step, it in recs:  # through zarr, which reads a missing chunk as NaN: check the complete run's records
            if (step, it) in expected and not self.has_chunk(layer, step, ph, it):
                raise self._damaged(layer, PHASES[ph], step, it, "its map chunk is missing")
        by_it: dict[int, list[int]] = {}
        for i, (_, it) in enumerate(recs):
            by_it.setdefault(it, []).append(i)
        if len(by_it) == 1:
            (it,) = by_it
            return self.read(layer, [s for s, _ in recs], ph, it)
        out = np.empty((len(recs), *self.array(layer).shape[3:]), dtype=np.float64)
        for it, idx in by_it.items():
            out[idx] = self.read(layer, [recs[i][0] for i in idx], ph, it)
        return out

    def _expected_records(self, phase: str) -> set[tuple[int, int]]:
        """(step, iteration) pairs a complete run's manifest says were recorded for ``phase`` (empty otherwise: an
        incomplete run may lack any chunk, and reads NaN there)."""
        cache = self.__dict__.setdefault("_expected", {})
        if phase not in cache:
            index = (self.manifest.get("records") or {}).get(phase) or {} if self.complete else {}
            try:
                cache[phase] = {(int(s), int(i)) for s, its in index.items() for i in its}
            except (TypeError, ValueError, AttributeError):
                cache[phase] = set()
        return cache[phase]

    def _damaged(self, layer: str, phase: str, step: int, iteration: int, what: str) -> StoreError:
        return StoreError(f"run '{self.path}' is damaged: layer {layer}, phase {phase}, step {step}, iteration "
                          f"{iteration}: {what}", hint="record the run again (attnlens record ... --overwrite)")

    def has_chunk(self, layer: str, step: int, phase: str | int, iteration: int) -> bool:
        """Whether the map chunk at (step, phase, iteration) of ``layer`` has been written."""
        arr = self.array(layer)
        ph = phase if isinstance(phase, int) else PHASES.index(phase)
        if step >= arr.shape[0] or iteration >= arr.shape[2]:
            return False
        key = arr.metadata.encode_chunk_key((step, ph, iteration) + (0,) * (len(arr.shape) - 3))
        return (self.data_path / "attention" / layer / "maps" / key).is_file()

    def recorded_steps(self, layer: str | None = None, phase: str = "sample", iteration: int = 0) -> list[int]:
        """Loop indices with data for (phase, iteration), read from the record index in the manifest."""
        index = self.manifest.get("records", {}).get(phase, {})
        return sorted(int(s) for s, its in index.items() if iteration in its)

    @property
    def tokens(self) -> list[list[str]]:
        return [s.pieces for s in self.info.samples]

    def token_positions(self, word: str, sample: int = 0, encoder: str | None = None) -> list[int]:
        """Positions of ``word`` in sample ``sample``: its pieces (case-insensitive, CLIP's ``</w>`` and
        sentencepiece's ``▁`` ignored). Transformer runs: the first match, or the match among the positions of
        ``encoder`` (``clip``, ``t5``, ``gemma``; see the manifest's ``text``)."""
        pieces = self.tokens[sample]
        encoders = (self.manifest.get("text") or {}).get("encoders") or []
        if encoder is not None:  # only the positions of that encoder can match
            pieces = [p if k < len(encoders) and encoders[k] == encoder else "\0" for k, p in enumerate(pieces)]
        found = word_positions_in(pieces, word)
        if found is not None:
            return found
        raise NotFoundError(f"'{word}' is not a word of the prompt", hint=f"tokens: {' '.join(pieces)}")

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

    def scores(self, sample: int = 0) -> dict[str, float]:
        """``{key: value}`` of every score ``attnlens score`` wrote for image ``sample`` (``RUN/scores.json``;
        ``attnlens.store.scores``); empty when the run was not scored."""
        return read_sample_scores(self.path, sample)

    def image(self, sample: int = 0):
        name = self.manifest.get("images", {}).get(str(sample))
        if not isinstance(name, str) or Path(name).name != name or not name.endswith(".png"):
            return None  # no image, or a manifest naming a file outside the run folder: never followed
        f = self.path / name
        if not f.resolve().is_relative_to(self.path.resolve()):
            return None  # a link to a file outside the run folder: never followed
        with Image.open(f) as image:
            image.load()  # read now: no file handle stays open
        return image

    def to_xarray(self, layer: str):
        """The layer as an ``xarray.Dataset`` (same as ``xr.open_zarr(RUN/data.zarr, group="attention/<layer>")``)."""
        import xarray as xr  # slow to import; only this optional view needs it

        return xr.open_zarr(str(self.data_path), group=f"attention/{layer}", consolidated=False)

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())

    def summary(self) -> dict[str, Any]:
        """Everything ``attnlens info`` shows, as a JSON-ready dict (also the dashboard's run details)."""
        m, info = self.manifest, self.info
        layers = []
        for name in self.layers:
            arr = self.array(name)
            layers.append({"name": name, "resolution": list(arr.shape[-2:]), "shape": list(arr.shape),
                           "dims": list(arr.metadata.dimension_names or ())})
        records = m.get("records", {})
        return {
            **listing(self.path, m),
            "hyperparameters": info.hyperparameters,
            "steps": m.get("steps"),
            "guidance_scale": m.get("guidance_scale"),
            "heads": info.heads,
            "samples": [s.to_dict() for s in info.samples],
            "tokens": self.tokens,
            "layers": layers,
            "phases": {ph: {"steps": len(records.get(ph, {})),
                            "max_iteration": max((max(v) for v in records.get(ph, {}).values()), default=None)}
                       for ph in PHASES if ph in records},
            "scalars": m.get("scalars", []),
            "interventions": m.get("interventions") or [],
            "size_bytes": self.size_bytes(),
            "error": m.get("error"),
        }

    def _repr_html_(self) -> str:
        """How a run shows itself in Jupyter: prompt, method, seed, model, status, its image, layers, steps, size."""
        m = self.info
        sizes = ", ".join(f"{h}×{w}" for h, w in sorted(set(self.resolutions().values()), reverse=True))
        rows = [("prompt", m.prompt), ("method", m.method_name), ("seed", m.seed), ("model", m.model_id),
                ("status", self.status), ("steps", m.steps), ("layers", f"{len(self.layers)} ({sizes})"),
                ("recorded steps", len(self.recorded_steps())), ("heads", m.heads),
                ("size", f"{self.size_bytes() / 2**20:.1f} MB"), ("path", str(self.path))]
        cells = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td style='text-align:left'>"
                        f"{html.escape(str(v))}</td></tr>" for k, v in rows)
        img = ""
        image = self.image(0) if self.status != "corrupted" else None
        if image is not None:
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            img = (f"<td style='vertical-align:top'><img src='data:image/png;base64,"
                   f"{base64.b64encode(buf.getvalue()).decode()}' width='160' alt='final image'/></td>")
        return f"<table><tr><td style='vertical-align:top'><table>{cells}</table></td>{img}</tr></table>"

    # -- in a notebook: these call attnlens.notebook (above the store: loaded on first use, never at import) -------
    def show(self, word: str | Sequence[str] | None = None, step: int | Sequence[int] | None = None, *,
             layer: str = "all", **kwargs: Any):
        """The maps of ``word`` at ``step`` (an int, a list, or None: five spread steps) over the final image, as a
        figure that shows itself inline (``attnlens.notebook.show``: the ``attnlens figure maps`` figure).

        Examples::

            >>> import attnlens
            >>> pipe = attnlens.load_pipeline("attnlens-tiny")
            >>> run = attnlens.sample(pipe, "a red crown", out="runs/show", num_inference_steps=4)
            >>> fig = run.show("red", step=2, layer="res16")    # in a notebook the figure draws itself
            >>> fig._repr_png_()[:4]
            b'\x89PNG'
        """
        return _notebook().show(self, word, step, layer=layer, **kwargs)

    def word_heatmap(self, word: str, step: int | Sequence[int] | None = None, *, layer: str = "all",
                     **kwargs: Any):
        """DAAM's heat map: ``word``'s map upsampled over the final image in colour, at ``step`` or (None) the mean
        over every recorded step (``attnlens.notebook.word_heatmap``)."""
        return _notebook().word_heatmap(self, word, step, layer=layer, **kwargs)

    def player(self, words: str | Sequence[str] | None = None, **kwargs: Any):
        """The dashboard's step player over this run's maps, as a notebook widget (``attnlens.notebook.player``)."""
        return _notebook().player(self, words, **kwargs)

    def __repr__(self) -> str:
        m = self.info
        return (f"Run({str(self.path)!r}, status={self.status!r}, method={m.method_name!r}, "
                f"prompt={m.prompt!r}, seed={m.seed!r})")


def _notebook():
    """``attnlens.notebook`` (figures, widgets and the dashboard's player sit above the store: imported by name on
    first use, as ``attnlens`` itself loads its public names, so that reading a run never loads them)."""
    return importlib.import_module("attnlens.notebook")


def open_run(path: str | Path) -> Run:
    """Open a run store read-only (manifest + lazy Zarr arrays). A URL (``s3://bucket/root/run``) is copied into
    the local cache first (``attnlens.store.remote.fetch_run``) and the copy is opened."""
    path = fetch_run(path) if is_url(path) else Path(path)
    return Run(path=path, manifest=read_manifest(path))


def find_runs(root: str | Path) -> Iterator[Path | str]:
    """Every run folder under ``root`` (``root`` itself if it is a run), sorted; under a URL, the runs' URLs."""
    if is_url(root):
        yield from find_run_urls(root)
        return
    root = Path(root)
    if not root.exists():
        raise RunNotFound(f"'{root}' does not exist")
    if is_run(root):
        yield root
        return
    if not root.is_dir():
        raise RunNotFound(f"'{root}' is a file, not a run folder or a folder holding runs",
                          hint="pass the folder (attnlens ls runs/)")
    for manifest in sorted(root.rglob(MANIFEST)):
        yield manifest.parent



def listing(path: str | Path, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """One run's row of ``attnlens ls`` from its manifest alone: path, status, method, seed, prompt, model (a run
    whose manifest cannot be read is listed as ``corrupted`` with the reason as its prompt)."""
    try:
        m = read_manifest(path) if manifest is None else manifest
        info = Manifest.from_dict(m)
    except AttnlensError as exc:
        return {"path": str(path), "status": "corrupted", "method": None, "seed": None, "prompt": str(exc),
                "model": None}
    return {"path": str(path), "status": str(m.get("status", "unknown")), "method": info.method_name,
            "seed": info.sample_seed(0), "prompt": info.sample_prompt(0), "model": info.model_id}
