"""``make demo`` runs ``python -m attnlens.demo``: the same commands at a small scale (tiny model, 2 steps, one
seed) leave every file the demo promises, with content."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

import attnlens
from attnlens.analysis.runs import variant_label
from attnlens.demo import METHODS


@pytest.mark.slow
def test_demo_records_intervenes_scores_analyses_compares_and_draws(tmp_path):
    out = tmp_path / "demo"
    res = subprocess.run([sys.executable, "-m", "attnlens.demo", "--out", str(out), "--n-steps", "2", "--seeds", "1",
                          "--model", "attnlens-tiny"], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    runs = [attnlens.open_run(p) for p in sorted(attnlens.find_runs(out / "runs"))]
    labels = sorted(variant_label(r.manifest) for r in runs)
    assert len(runs) == len(METHODS) + 1 and sorted(set(r.info.method_name for r in runs)) == sorted(METHODS)
    swapped = [r for r in runs if r.manifest.get("interventions")]
    assert len(swapped) == 1 and "swap(red,golden)" in variant_label(swapped[0].manifest)  # labelled as such
    for run in runs:
        assert run.complete and run.info.seed == 1 and run.info.steps == 2
        # every loop index recorded (--n-steps is the count; PNDM runs one extra loop index: 2 steps = 3 timesteps)
        assert run.recorded_steps() == list(range(len(run.timesteps()))) and len(run.timesteps()) in (2, 3)
    table = pd.read_parquet(out / "metrics.parquet", columns=["method", "metric"])
    assert set(table["method"]) == set(METHODS) and "jsd" in set(table["metric"])
    comparison = (out / "comparison.md").read_text()
    assert all(label in comparison for label in labels if label != "none")
    for name in ("first_maps.png", "maps.pdf", "curves.pdf", "losses.pdf"):
        f = out / "figures" / name
        assert f.stat().st_size > 1000, name
        assert f.read_bytes()[:4] in (b"%PDF", b"\x89PNG"), name
    assert "first image and map figure after" in res.stderr
    assert "attnlens dashboard" in res.stderr and "You are looking at" in res.stderr  # what is on screen, what next
