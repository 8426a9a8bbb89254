"""The sweep spec: a TOML file naming the model, the prompts, the seeds, the methods with their hyperparameter grids,
the recording options and the scorers; read once, validated with one-line errors, and enumerated into cells.

A spec::

    model = "attnlens-tiny"          # embedded name, local diffusers folder or hub id
    steps = 2                        # denoising steps (--n-steps of attnlens record)
    guidance_scale = 7.5
    seeds = [0, 1]                   # or: images_per_prompt = 4  (seeds 0..3)
    prompts = ["a red crown", "a blue ball"]   # or: prompts_file = "prompts.txt" | prompt_set = "CC-500"
    # limit = 20                     # the first N prompts of the file or set
    scorers = []                     # names in attnlens.scoring (e.g. "shapes" for attnlens-shapes)
    interventions = []               # attention interventions applied to every cell, e.g. ["swap red blue steps=0:10"]

    [recording]                      # the options of attnlens record: heads, tokens, layers, steps, dtype, uncond
    dtype = "fp16"

    [[methods]]
    name = "none"

    [[methods]]
    name = "syngen"
    options = { distance = "jsd" }   # fixed hyperparameters
    grid = { step_size = [10, 20] }  # one variant per combination

A cell is one (variant, prompt, seed): one run at ``ROOT/<prompt-slug>/<variant>-seed<seed>`` (``attnlens.sweep``).

Examples::

    >>> spec = parse_spec({"model": "attnlens-tiny", "steps": 2, "prompts": ["a red crown", "a cat"], "seeds": [0, 1],
    ...                    "methods": [{"name": "none"}, {"name": "syngen", "grid": {"step_size": [10, 20]}}]})
    >>> [v.label for v in spec.variants]
    ['none', 'syngen step_size=10', 'syngen step_size=20']
    >>> len(spec.cells("runs"))
    12
    >>> spec.cells("runs")[0].path.as_posix()
    'runs/a-red-crown/none-seed0'
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

from ..errors import AttnlensError, BadOption, ConfigError, NotFoundError
from ..interventions import parse_intervention
from ..store.remote import is_url, join
from ..sweep import run_name, run_path, slugify

#: keys a spec may hold at its top level, and what each is
TOP_KEYS = {
    "model": "embedded name, local folder or hub id", "steps": "denoising steps", "guidance_scale": "CFG scale",
    "height": "image height", "width": "image width", "seeds": "list of seeds",
    "images_per_prompt": "seeds 0..N-1", "prompts": "list of prompts", "prompts_file": "text file, one prompt a line",
    "prompt_set": "a named set in the shared datasets", "limit": "first N prompts", "methods": "[[methods]] tables",
    "recording": "[recording] table", "scorers": "scorer names", "interventions": "intervention specs applied to every cell (docs/interventions.md)",
    "spacy_model": "spaCy pipeline for the parse", "name": "the sweep's name",
}
METHOD_KEYS = {"name", "options", "grid", "label"}
RECORDING_KEYS = {"heads", "tokens", "layers", "steps", "dtype", "uncond"}
#: the environment variable naming the shared datasets folder (else ``../shared/datasets`` from the repository)
DATASETS_ENV = "ATTNLENS_DATASETS"


def datasets_dir() -> Path:
    """The shared datasets folder: ``$ATTNLENS_DATASETS``, else ``../shared/datasets`` next to the repository."""
    env = os.environ.get(DATASETS_ENV)
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[3] / "shared" / "datasets"


def named_prompt_set(name: str) -> list[str]:
    """The prompts of a named set: ``CC-500``, ``ABC-6K``, ``attend-excite`` (all three groups) or
    ``attend-excite/<group>``, ``t2i-compbench/<file stem>`` (e.g. ``t2i-compbench/color_val``)."""
    root = datasets_dir()
    if not root.is_dir():
        raise NotFoundError(f"prompt set '{name}' needs the shared datasets folder, and '{root}' does not exist",
                            hint=f"set {DATASETS_ENV}=/path/to/datasets, or use prompts_file = \"FILE\"")
    head, _, group = name.partition("/")
    if head == "attend-excite":
        data = json.loads((root / "attend-excite-prompts.json").read_text())
        if group and group not in data:
            raise BadOption(f"attend-excite has no group '{group}'", hint=f"groups: {', '.join(data)}")
        return [p for g in ([group] if group else list(data)) for p in data[g]]
    candidates = [root / f"{name}.txt", root / name]
    for f in candidates:
        if f.is_file():
            return read_prompt_file(f)
    known = sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.txt") if p.name != "LICENSE")
    raise BadOption(f"unknown prompt set '{name}'", hint=f"known: attend-excite, {', '.join(known)}")


def read_prompt_file(path: Path) -> list[str]:
    """One prompt per non-empty line; lines starting with ``#`` are comments."""
    return [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def prompts_hash(prompts: list[str]) -> str:
    """SHA-256 of the prompts joined by newlines: the protocol pins the exact list."""
    return hashlib.sha256("\n".join(prompts).encode()).hexdigest()


@dataclass(frozen=True)
class Variant:
    """One method with one point of its grid: ``label`` names its runs (``syngen step_size=10``)."""

    method: str
    options: dict[str, Any]
    label: str

    @property
    def name(self) -> str:
        """The variant's part of a run path (``attnlens.sweep.run_name``)."""
        return run_name(self.method, label=None if self.label == self.method else self.label)


@dataclass(frozen=True)
class Cell:
    """One run of the sweep: a variant, a prompt and a seed, at ``path`` (``rel`` below the sweep root): a folder,
    or a URL string when the root is on an object store (``s3://bucket/root/<prompt-slug>/<variant>-seed<N>``)."""

    variant: Variant
    prompt: str
    seed: int
    path: Path | str
    rel: str

    @property
    def id(self) -> str:
        return self.rel


@dataclass
class SweepSpec:
    """A validated spec (:func:`load_spec`, :func:`parse_spec`)."""

    model: str
    steps: int
    guidance_scale: float
    seeds: list[int]
    prompts: list[str]
    prompt_source: str
    variants: list[Variant]
    recording: dict[str, Any] = field(default_factory=dict)
    scorers: list[str] = field(default_factory=list)
    interventions: list[Any] = field(default_factory=list)
    height: int | None = None
    width: int | None = None
    spacy_model: str | None = None
    name: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    def cells(self, root: str | Path) -> list[Cell]:
        """Every (variant, prompt, seed), variant-major; refuses two cells sharing one run folder."""
        out, owner = [], {}
        for v in self.variants:
            for prompt in self.prompts:
                for seed in self.seeds:
                    rel = PurePosixPath(slugify(prompt)) / f"{v.name}-seed{seed}"
                    if rel in owner:
                        raise BadOption(f"cells {owner[rel]!r} and {(v.label, prompt, seed)!r} would share the run "
                                        f"folder '{rel}'", hint="give each prompt and seed once; prompts differing "
                                        "only in case or punctuation share a folder")
                    owner[rel] = (v.label, prompt, seed)
                    path = join(root, rel.as_posix()) if is_url(root) else run_path(root, prompt, v.name, seed)
                    out.append(Cell(v, prompt, seed, path, rel.as_posix()))
        return out

    def cell_settings(self, cell: Cell) -> dict[str, Any]:
        """What a cell's run manifest must hold for it to be reused (its ``sweep_cell`` entry)."""
        return json.loads(json.dumps({
            "model": self.model, "method": cell.variant.method, "options": cell.variant.options,
            "label": cell.variant.label, "guidance_scale": self.guidance_scale, "height": self.height,
            "width": self.width, "recording": self.recording, "interventions": self.interventions,
        }, sort_keys=True))


def _need(cond: bool, message: str, hint: str) -> None:
    if not cond:
        raise ConfigError(message, hint=hint)


def _int_list(value: Any, key: str) -> list[int]:
    _need(isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value),
          f"spec: '{key}' must be a non-empty list of integers, got {value!r}", f"e.g. {key} = [0, 1, 2]")
    _need(len(set(value)) == len(value), f"spec: '{key}' lists a seed twice: {value}", "give each seed once")
    return list(value)


def _variants(methods: Any, method_names: set[str] | None) -> list[Variant]:
    _need(isinstance(methods, list) and methods and all(isinstance(m, dict) for m in methods),
          "spec: no methods", 'add at least one [[methods]] table with name = "none" (or syngen, ...)')
    out: list[Variant] = []
    for k, m in enumerate(methods):
        unknown = set(m) - METHOD_KEYS
        _need(not unknown, f"spec: [[methods]] #{k + 1} has unknown key(s) {sorted(unknown)}",
              f"allowed: {', '.join(sorted(METHOD_KEYS))}")
        name = m.get("name")
        _need(isinstance(name, str) and name, f"spec: [[methods]] #{k + 1} has no name", 'e.g. name = "syngen"')
        if method_names is not None and name not in method_names and ":" not in name:
            raise ConfigError(f"spec: unknown method '{name}'", hint=f"known: {', '.join(sorted(method_names))}")
        options, grid = m.get("options", {}), m.get("grid", {})
        _need(isinstance(options, dict), f"spec: options of '{name}' must be a table", "options = { step_size = 10 }")
        _need(isinstance(grid, dict) and all(isinstance(v, list) and v for v in grid.values()),
              f"spec: grid of '{name}' must map each hyperparameter to a non-empty list",
              "grid = { step_size = [10, 20] }")
        keys = sorted(grid)
        for values in itertools.product(*(grid[k2] for k2 in keys)) if keys else [()]:
            point = dict(zip(keys, values))
            base = m.get("label") or name
            label = base + "".join(f" {k2}={v}" for k2, v in point.items())
            out.append(Variant(name, {**options, **point}, label))
    labels = [v.label for v in out]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    _need(not dup, f"spec: the variant(s) {dup} are given twice", "give each method once, or a distinct label")
    return out


def parse_spec(data: Mapping[str, Any], *, base: Path | None = None, method_names: set[str] | None = None) -> SweepSpec:
    """Validate a spec's table (as read from TOML) into a :class:`SweepSpec`. ``base``: the folder relative
    ``prompts_file`` paths start from; ``method_names``: the registered methods to check names against."""
    data = dict(data)
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(f"spec: unknown key(s) {unknown}", hint=f"allowed: {', '.join(sorted(TOP_KEYS))}")
    model = data.get("model", "attnlens-shapes")
    _need(isinstance(model, str) and model, "spec: 'model' must be a string", 'e.g. model = "attnlens-tiny"')
    steps = data.get("steps", 50)
    _need(isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1,
          f"spec: 'steps' must be a positive integer, got {steps!r}", "e.g. steps = 50")
    gs = data.get("guidance_scale", 7.5)
    _need(isinstance(gs, (int, float)) and not isinstance(gs, bool), f"spec: 'guidance_scale' must be a number, got {gs!r}",
          "e.g. guidance_scale = 7.5")
    if "seeds" in data and "images_per_prompt" in data:
        raise ConfigError("spec: give either 'seeds' or 'images_per_prompt', not both",
                          hint="images_per_prompt = N means seeds 0..N-1")
    if "images_per_prompt" in data:
        n = data["images_per_prompt"]
        _need(isinstance(n, int) and not isinstance(n, bool) and n >= 1,
              f"spec: 'images_per_prompt' must be a positive integer, got {n!r}", "e.g. images_per_prompt = 4")
        seeds = list(range(n))
    else:
        seeds = _int_list(data.get("seeds", [0]), "seeds")
    sources = [k for k in ("prompts", "prompts_file", "prompt_set") if k in data]
    _need(len(sources) == 1, "spec: give exactly one of 'prompts', 'prompts_file', 'prompt_set'"
          + (f" (got {', '.join(sources)})" if sources else ""), 'e.g. prompts = ["a red crown"] or prompt_set = "CC-500"')
    src = sources[0]
    if src == "prompts":
        prompts = data["prompts"]
        _need(isinstance(prompts, list) and prompts and all(isinstance(p, str) and p.strip() for p in prompts),
              "spec: 'prompts' must be a non-empty list of strings", 'prompts = ["a red crown"]')
        source = "inline"
    elif src == "prompts_file":
        f = Path(str(data["prompts_file"])).expanduser()
        f = f if f.is_absolute() or base is None else base / f
        if not f.is_file():
            raise NotFoundError(f"spec: prompts file '{f}' not found", hint="give a text file with one prompt a line")
        prompts, source = read_prompt_file(f), f"file:{f.name}"
    else:
        prompts, source = named_prompt_set(str(data["prompt_set"])), f"set:{data['prompt_set']}"
    if "limit" in data:
        lim = data["limit"]
        _need(isinstance(lim, int) and not isinstance(lim, bool) and lim >= 1,
              f"spec: 'limit' must be a positive integer, got {lim!r}", "e.g. limit = 20")
        prompts = prompts[:lim]
    _need(bool(prompts), f"spec: the prompt source ({source}) holds no prompt", "check the file or set")
    rec = data.get("recording", {})
    _need(isinstance(rec, dict) and not (set(rec) - RECORDING_KEYS),
          f"spec: [recording] may hold only {', '.join(sorted(RECORDING_KEYS))}", 'e.g. [recording] dtype = "fp32"')
    scorers = data.get("scorers", [])
    _need(isinstance(scorers, list) and all(isinstance(s, str) for s in scorers),
          "spec: 'scorers' must be a list of names", 'e.g. scorers = ["shapes"]')
    interventions = data.get("interventions", [])
    _need(isinstance(interventions, list), "spec: 'interventions' must be a list", "interventions = []")
    _need(all(isinstance(t, str) for t in interventions),
          "spec: 'interventions' must be a list of intervention specs", 'e.g. interventions = ["swap red blue steps=0:10"]')
    for text in interventions:  # each applies to every cell (as attnlens record --intervene); checked here, not per cell
        try:
            parse_intervention(text)
        except AttnlensError as exc:
            _need(False, f"spec: intervention {text!r}: {exc.message}", exc.hint or "see docs/interventions.md")
    for key in ("height", "width"):
        v = data.get(key)
        _need(v is None or (isinstance(v, int) and v > 0), f"spec: '{key}' must be a positive integer", f"{key} = 64")
    return SweepSpec(model=model, steps=steps, guidance_scale=float(gs), seeds=seeds, prompts=prompts,
                     prompt_source=source, variants=_variants(data.get("methods"), method_names), recording=dict(rec),
                     scorers=list(scorers), interventions=list(interventions), height=data.get("height"),
                     width=data.get("width"), spacy_model=data.get("spacy_model"), name=data.get("name"), raw=data)


def load_spec(path: str | Path, *, method_names: set[str] | None = None) -> SweepSpec:
    """Read and validate a TOML spec file."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"sweep spec '{path}' not found", hint="write a TOML spec (docs/sweep.md has one)")
    if path.suffix.lower() in (".yaml", ".yml"):
        raise BadOption(f"'{path}' is YAML; sweep specs are TOML", hint="write the same keys as TOML (docs/sweep.md)")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"spec '{path}' is not valid TOML: {str(exc).splitlines()[0]}",
                          hint="fix the line it names (docs/sweep.md has an example)") from None
    return parse_spec(data, base=path.parent, method_names=method_names)


__all__ = ["Cell", "DATASETS_ENV", "SweepSpec", "Variant", "datasets_dir", "load_spec", "named_prompt_set",
           "parse_spec", "prompts_hash", "read_prompt_file"]
