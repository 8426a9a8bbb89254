"""Shared plumbing of the analysis scripts: arguments, recording (reusing complete runs), tables, figures.

Not a public API: each ``analyses/NN_*.py`` is one command that records what it needs on the embedded model with
``attnlens.sample``, analyses the runs with ``attnlens.analysis``, and writes a figure (PDF + PNG) and a table
(Markdown, CSV, LaTeX) with ``attnlens.figures`` and ``attnlens.compare``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"


def parser(description: str, out: str, steps: int, seeds: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "out" / "analyses" / out, help="output folder")
    p.add_argument("--runs", type=Path, default=None, help="where runs are recorded (default OUT/runs)")
    p.add_argument("--n-steps", dest="steps", type=int, default=steps, help=f"denoising steps (default {steps})")
    p.add_argument("--seeds", default=seeds, help=f"comma-separated seeds (default {seeds})")
    p.add_argument("--model", default="attnlens-tiny", help="model (default: the embedded attnlens-tiny)")
    p.add_argument("--rerecord", action="store_true", help="record again even when a complete run exists")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples for the tables")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a small model and a busy machine more threads are slower)")
    return p


def seeds_of(text: str) -> list[int]:
    return [int(s) for s in str(text).split(",") if s.strip()]


#: the scripts' run folders name the prompt by its first 40 slug characters (``attnlens.sweep.run_path``)
SLUG_LIMIT = 40


class Recorder:
    """Records runs with ``attnlens.sample`` (one pipeline load), reusing a complete run with the same prompt, seed,
    method, options and step count, so a script can be rerun cheaply after a change to the analysis."""

    def __init__(self, model: str, root: Path, steps: int, rerecord: bool = False):
        self.model, self.root, self.steps, self.rerecord = model, root, steps, rerecord
        self._pipe = None
        self.recorded = 0
        self.reused = 0

    @property
    def pipe(self):
        if self._pipe is None:
            import attnlens

            self._pipe = attnlens.load_pipeline(self.model)
        return self._pipe

    def run(self, prompt: str, seed: int, method: str = "none", options: dict[str, Any] | None = None,
            label: str | None = None) -> Path:
        import attnlens
        from attnlens.sweep import reusable, run_name, run_path

        options = dict(options or {})
        path = run_path(self.root, prompt, run_name(method, label=label), seed, slug_limit=SLUG_LIMIT)
        if not self.rerecord and reusable(path, prompt=prompt, seed=seed, method=method, steps=self.steps,
                                          settings={"analysis_options": options, "label": label}):
            self.reused += 1
            return path
        t = time.perf_counter()
        attnlens.sample(self.pipe, prompt, method=method, method_options=options, seed=seed, out=path,
                        num_inference_steps=self.steps, overwrite=True,
                        manifest={"label": label, "analysis_options": options, "model_id": self.model})
        self.recorded += 1
        print(f"  recorded {path.relative_to(self.root)} ({time.perf_counter() - t:.1f} s)", file=sys.stderr)
        return path


def scaled_steps(k: int, steps: int, of: int = 50) -> int:
    """``k`` steps of a ``of``-step schedule mapped onto ``steps`` steps (at least 1)."""
    return max(1, round(k * steps / of))


def prompts_from_datasets(n: int, kinds: Iterable[str] = ("cc500", "attend-excite")) -> list[str]:
    """A handful of prompts from ``../shared/datasets``: alternately CC-500 lines ("a {colour} {object} and a
    {colour} {object}") and Attend-and-Excite's "animals_objects" prompts, in file order (deterministic)."""
    pools = []
    for kind in kinds:
        if kind == "cc500":
            f = DATASETS / "CC-500.txt"
            if f.is_file():
                pools.append([x.strip() for x in f.read_text().splitlines() if x.strip()])
        elif kind == "attend-excite":
            f = DATASETS / "attend-excite-prompts.json"
            if f.is_file():
                data = json.loads(f.read_text())
                pools.append([p for p in data.get("animals_objects", []) if " and a " in p and len(p.split()) >= 6])
    if not pools:
        return ["a red apple and a green banana", "a blue car and a yellow bench", "a black cat and a white dog"][:n]
    out, i = [], 0
    while len(out) < n and any(pools):
        pool = pools[i % len(pools)]
        if pool:
            out.append(pool.pop(0))
        i += 1
    return out


def write_tables(comparison, out: Path, name: str = "table") -> list[Path]:
    from attnlens.compare import to_csv, to_latex, to_markdown

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for suffix, text in (("md", to_markdown(comparison)), ("csv", to_csv(comparison)), ("tex", to_latex(comparison))):
        p = out / f"{name}.{suffix}"
        p.write_text(text)
        paths.append(p)
    return paths


def write_figure(fig, out: Path, name: str = "figure") -> list[Path]:
    from attnlens.figures import save_figure

    return [save_figure(fig, out / f"{name}.{s}") for s in ("pdf", "png")]


def analyse(runs_root: Path, out: Path, **kwargs):
    """Analyse every run under ``runs_root`` into OUT/metrics.parquet and return the table."""
    from attnlens.analysis import read_table, write_parquet

    report = write_parquet([runs_root], out / "metrics.parquet", **kwargs)
    for note in report.notes:
        print(f"  note: {note}", file=sys.stderr)
    return read_table(out / "metrics.parquet")


def setup(args) -> tuple[float, Path, list[int], "Recorder"]:
    """The common start of a script: quiet warnings, torch threads; returns (start time, output folder, seeds, the
    run recorder on ``--runs`` or ``OUT/runs``)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(max(1, args.threads))
    t0 = time.perf_counter()
    return t0, args.out, seeds_of(args.seeds), Recorder(args.model, args.runs or args.out / "runs", args.steps,
                                                         args.rerecord)


def markdown_table(df, floatfmt: str = ".4g") -> str:
    """A DataFrame (index + columns) as a GitHub Markdown table, without optional dependencies."""
    index_names = [str(n) for n in (df.index.names if df.index.nlevels > 1 else [df.index.name or ""])]
    header = index_names + [str(c) for c in df.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(index_names)
                                                               + ["---:"] * len(df.columns)) + "|"]
    for idx, row in df.iterrows():
        idx = idx if isinstance(idx, tuple) else (idx,)
        cells = [str(i) for i in idx] + [format(v, floatfmt) if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def done(out: Path, paths: list[Path], t0: float, rec: Recorder) -> None:
    print(f"recorded {rec.recorded} run(s), reused {rec.reused}; {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    for p in paths:
        print(p)
