"""The run folder: where each file lives, the run paths, and the one manifest schema.

A run is one folder::

    RUN/
      manifest.json        the manifest (this module's ``Manifest``), rewritten atomically; ``status`` says whether
                           the run is complete (``running``, ``complete``, ``failed`` or ``interrupted``)
      .attnlens-lock       while a recording writes the run: the file it holds a lock on (its pid and host)
      image.png            final image of a one-sample run (``image-<k>.png`` for sample k of several)
      data.zarr/           the Zarr v3 group with every array (see ``docs/store.md``); its attributes repeat the
                           manifest under ``attnlens`` so a plain-zarr user sees what the run is

Only ``data.zarr`` is a zarr hierarchy, so ``zarr.open_group("RUN/data.zarr")`` lists nodes and nothing else.
Stores written by attnlens 0.1 (schema 1) kept the arrays in ``RUN`` itself; :func:`data_path` finds either.

The manifest has one schema (``Manifest``) and one writer (``attnlens.store.writer.RunWriter``): recording code hands
it values through the writer, never by editing a dict. Readers go through ``Manifest.from_dict`` and its accessors
(``sample_prompt``, ``sample_seed``, ``method_name``, ``model_id``, ``heads``), so there is one rule for each of them.
"""

from __future__ import annotations

import functools
import json
import os
import re
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import StoreError
from ..vocab import MAP_DIMS, PHASES  # noqa: F401  (the store's words, re-exported by attnlens.store)

SCHEMA_VERSION = 2
MANIFEST = "manifest.json"
DATA = "data.zarr"
STATUS_RUNNING = "running"
STATUS_COMPLETE = "complete"
STATUS_FAILED = "failed"
#: the recording was stopped by the user (Ctrl-C): like a failed run, not a result, and replaced by the next recording
STATUS_INTERRUPTED = "interrupted"
#: the lock file a recording holds (``fcntl.flock``) in its run folder while it writes (``attnlens.store.writer``)
LOCK = ".attnlens-lock"


def data_path(run: str | Path) -> Path:
    """The zarr group of a run: ``RUN/data.zarr`` (schema 2), else ``RUN`` itself (stores of schema 1)."""
    run = Path(run)
    inner = run / DATA
    return inner if inner.is_dir() or not (run / "zarr.json").is_file() else run


#: what attnlens writes at the top of a run folder (schema 2, and schema 1's zarr group beside the manifest)
_RUN_ENTRIES = {MANIFEST, DATA, "zarr.json", "attention", "latents", "scalars", ".attnlens-write-test", LOCK}
_IMAGE = re.compile(r"^image(-\d+)?\.png$")
_TEMP = re.compile(r"^\.(manifest\.json|image(-\d+)?\.png)\..*")


def run_entries(run: str | Path) -> tuple[list[Path], list[Path]]:
    """The top-level entries of a run folder split into (what attnlens wrote, anything else): replacing a run
    deletes only the first list, and refuses while the second is not empty."""
    ours, foreign = [], []
    for p in sorted(Path(run).iterdir()):
        (ours if p.name in _RUN_ENTRIES or _IMAGE.match(p.name) or _TEMP.match(p.name) else foreign).append(p)
    return ours, foreign


def image_name(sample: int, n_samples: int) -> str:
    return "image.png" if n_samples == 1 else f"image-{sample}.png"


@dataclass
class Sample:
    """One image of a run: its prompt, seed (None when the caller did not say) and the prompt's word pieces."""

    index: int
    prompt: str | None = None
    seed: int | None = None
    pieces: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "prompt": self.prompt, "seed": self.seed, "pieces": list(self.pieces)}


@dataclass
class Manifest:
    """What a run is and how it was made. Serialised flat (``to_dict``) into ``manifest.json``.

    ``prompt`` and ``seed`` always describe sample 0 (``samples[0]``) and are set whenever the samples are known;
    ``samples`` has every sample's own prompt, seed and pieces. ``extra`` holds the caller's own entries (a bench's
    ``label``, options of an analysis script); they are written at the top level beside the schema's keys.
    """

    status: str = STATUS_RUNNING
    schema_version: int = SCHEMA_VERSION
    attnlens_version: str | None = None
    prompt: str | None = None
    seed: int | None = None
    samples: list[Sample] = field(default_factory=list)
    model: dict[str, Any] = field(default_factory=dict)       # id, location, pipeline, scheduler
    method: dict[str, Any] = field(default_factory=lambda: {"name": "none", "hyperparameters": {}})
    recording: dict[str, Any] = field(default_factory=dict)   # RecordingConfig.to_dict()
    steps: int | None = None
    guidance_scale: float | None = None
    height: int | None = None
    width: int | None = None
    dtype: str | None = None
    device: str | None = None
    parse: dict[str, Any] | None = None
    bind: list[str] | None = None
    prompt_warnings: list[str] = field(default_factory=list)
    label: str | None = None
    records: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    recorded_layers: list[str] = field(default_factory=list)
    layers: dict[str, Any] = field(default_factory=dict)
    #: transformer families: the text sequence (segments per encoder) and the encoder of each recorded position
    #: (``attnlens.textctx.layout_dict``); empty for UNet runs (77 CLIP positions, recorded from 0)
    text: dict[str, Any] = field(default_factory=dict)
    scalars: list[str] = field(default_factory=list)
    images: dict[str, str] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    # -- reading rules (the only ones) ---------------------------------------------------------------------------
    def sample(self, k: int = 0) -> Sample:
        if 0 <= k < len(self.samples):
            return self.samples[k]
        return Sample(index=k, prompt=self.prompt, seed=self.seed)

    def sample_prompt(self, k: int = 0) -> str | None:
        s = self.sample(k)
        return s.prompt if s.prompt is not None else self.prompt

    def sample_seed(self, k: int = 0) -> int | None:
        s = self.sample(k)
        return s.seed if s.seed is not None else self.seed

    @property
    def n_samples(self) -> int:
        return max(len(self.samples), 1)

    @property
    def method_name(self) -> str:
        return str((self.method or {}).get("name") or "unknown")

    @property
    def hyperparameters(self) -> dict[str, Any]:
        return dict((self.method or {}).get("hyperparameters") or {})

    @property
    def model_id(self) -> str | None:
        return (self.model or {}).get("id")

    @property
    def heads(self) -> str:
        """``"mean"`` (maps averaged over heads, head axis of length 1) or ``"all"``."""
        return str((self.recording or {}).get("heads") or "mean")

    # -- samples ---------------------------------------------------------------------------------------------------
    def set_samples(self, samples: list[Sample]) -> None:
        """Set the samples; ``prompt`` and ``seed``, when not given already, are sample 0's."""
        self.samples = list(samples)
        if self.samples:
            first = self.samples[0]
            if self.prompt is None:
                self.prompt = first.prompt
            if self.seed is None:
                self.seed = first.seed

    # -- (de)serialisation ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        for f in fields(self):
            if f.name == "extra":
                continue
            v = getattr(self, f.name)
            out[f.name] = [s.to_dict() for s in v] if f.name == "samples" else v
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        """Read a manifest of any schema version (unknown keys go to ``extra``; odd values are kept as they are)."""
        if not isinstance(data, dict):
            raise StoreError("the manifest is not a JSON object", hint="the run is damaged; record it again")
        names = {f.name for f in fields(cls)} - {"extra", "samples"}
        kwargs = {k: v for k, v in data.items() if k in names and v is not None}
        extra = {k: v for k, v in data.items() if k not in names and k != "samples" and k != "extra"}
        m = cls(**kwargs, extra=extra)
        m.schema_version = int(data.get("schema_version") or SCHEMA_VERSION)
        samples = []
        for k, s in enumerate(data.get("samples") or []):
            if isinstance(s, dict):
                samples.append(Sample(index=int(s.get("index", k)), prompt=s.get("prompt"),
                                      seed=_int_or_none(s.get("seed")), pieces=list(s.get("pieces") or [])))
        m.samples = samples
        m.seed = _int_or_none(data.get("seed"))
        if m.prompt is None and samples and samples[0].prompt is not None:
            m.prompt = samples[0].prompt
        if m.seed is None and samples:
            m.seed = samples[0].seed
        return m


def _int_or_none(v: Any) -> int | None:
    try:
        return int(v) if v is not None and not isinstance(v, bool) else None
    except (TypeError, ValueError):
        return None


@functools.lru_cache(maxsize=1)
def default_file_mode() -> int:
    """The mode a newly created file gets under the process's umask (0644 under the usual 022). Read from
    ``/proc/self/status`` where it exists; elsewhere by setting and restoring the umask, once per process."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON to ``path`` via a temporary file and ``os.replace`` (readers never see a partial file)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, default_file_mode())  # mkstemp makes 0600; the file gets the mode any other file would
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def layer_sort_key(name: str):
    """Order layers as the denoiser executes them: down blocks, mid block, up blocks (then by index); a transformer's
    blocks, then Flux's single-stream blocks."""
    order = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2, "transformer_blocks": 3, "single_transformer_blocks": 4}
    parts = name.split(".")
    return (order.get(parts[0], 5), [int(p) if p.isdigit() else p for p in parts[1:]])

