"""One run through each entry point (``attnlens.record``, ``attnlens.sample``, ``attnlens record``,
``attnlens bench``), read back through every reader (``info --json``, ``ls --json``, ``analyze``, the dashboard's
run index, ``Run``): prompt, seed, model and method agree everywhere, and are the values the caller gave."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import attnlens
from dashboard.data import scan_root

PROMPT = "a red crown and a golden strawberry"


def _cli(*args: str, cwd=None) -> str:
    res = subprocess.run([sys.executable, "-m", "attnlens", *args], capture_output=True, text=True, cwd=cwd,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


@pytest.fixture(scope="module")
def root(tmp_path_factory, tiny_pipe):
    root = tmp_path_factory.mktemp("entry-points")
    pipe = tiny_pipe
    # 1. the plain pipeline under attnlens.record (the README's first workflow)
    with attnlens.record(pipe, root / "library-record", prompts=[PROMPT], seeds=[3]) as rec:
        out = pipe(PROMPT, num_inference_steps=2, generator=torch.Generator().manual_seed(3))
        rec.save_images(out.images)
    # 2. attnlens.sample with a guidance method
    attnlens.sample(pipe, PROMPT, method="syngen", seed=4, out=root / "library-sample", num_inference_steps=2)
    # 3. the record command
    _cli("record", PROMPT, "--model", "attnlens-tiny", "--method", "attend-excite", "--seed", "5",
         "--n-steps", "2", "--out", str(root / "cli-record"))
    # 4. the bench command (shapes model, one held-out prompt, unguided)
    _cli("bench", "binding", "--prompts", "1", "--seeds", "6", "--method", "none", "--sweep", "", "--n-steps", "2",
         "--no-analyse", "--out", str(root / "cli-bench"))
    return root


def expected(root) -> dict[str, dict]:
    bench = pd.read_csv(root / "cli-bench" / "outcomes.csv")
    assert len(bench) == 1
    return {
        "library-record": {"prompt": PROMPT, "seed": 3, "method": "none", "model": "attnlens-tiny"},
        "library-sample": {"prompt": PROMPT, "seed": 4, "method": "syngen", "model": "attnlens-tiny"},
        "cli-record": {"prompt": PROMPT, "seed": 5, "method": "attend-excite", "model": "attnlens-tiny"},
        "cli-bench": {"prompt": bench["prompt"][0], "seed": 6, "method": "none", "model": "attnlens-shapes"},
    }


def _entry_point(root, path) -> str:
    return path.relative_to(root).parts[0]


def test_every_reader_agrees_with_what_was_recorded(root, tmp_path):
    want = expected(root)
    paths = sorted(attnlens.find_runs(root))
    assert sorted({_entry_point(root, p) for p in paths}) == sorted(want) and len(paths) == 4

    seen: dict[str, dict[str, dict]] = {}
    for p in paths:
        ep = _entry_point(root, p)
        run = attnlens.open_run(p)
        seen.setdefault(ep, {})["Run"] = {"prompt": run.info.prompt, "seed": run.info.seed,
                                          "method": run.info.method_name, "model": run.info.model_id}
        info = json.loads(_cli("info", str(p), "--json"))
        seen[ep]["info"] = {k: info[k] for k in ("prompt", "seed", "method", "model")}
    for row in json.loads(_cli("ls", str(root), "--json")):
        seen[_entry_point(root, Path(row["path"]))]["ls"] = {
            k: row[k] for k in ("prompt", "seed", "method", "model")}
    for e in scan_root(root):
        seen[e.rel.split("/")[0]]["dashboard"] = {"prompt": e.prompt, "seed": e.seed, "method": e.method,
                                                  "model": e.model}
    table = tmp_path / "t.parquet"
    _cli("analyze", str(root), "--out", str(table), "--metric", "entropy")
    t = pd.read_parquet(table, columns=["run", "prompt", "seed", "method"]).drop_duplicates()
    for row in t.itertuples():
        seen[_entry_point(root, Path(row.run))]["analyze"] = {
            "prompt": row.prompt, "seed": int(row.seed), "method": row.method}

    for ep, readers in seen.items():
        assert sorted(readers) == ["Run", "analyze", "dashboard", "info", "ls"], (ep, sorted(readers))
        for reader, values in readers.items():
            for key, value in values.items():
                assert value == want[ep][key], f"{ep}: {reader} reads {key}={value!r}, recorded {want[ep][key]!r}"


def test_manifest_schema_is_complete_for_every_entry_point(root):
    for p in attnlens.find_runs(root):
        m = attnlens.open_run(p).manifest
        for key in ("schema_version", "status", "prompt", "seed", "model", "method", "recording", "samples"):
            assert m.get(key) is not None, (p, key)
        assert m["recording"]["heads"] in ("mean", "all")
        assert [s["seed"] for s in m["samples"]] == [m["seed"]]
        assert m["samples"][0]["prompt"] == m["prompt"] and m["samples"][0]["pieces"][0] == "<|startoftext|>"
