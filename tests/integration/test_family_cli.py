"""The transformer families on the command line (issue 15): SD3's --guide-text (clip | t5 | both) round-trips
through the manifest and the run's label; methods that need UNet layers are refused on a transformer before
anything is written (exit 2, one line, no traceback, no run folder)."""

from __future__ import annotations

import pytest

import attnlens
from attnlens.analysis.runs import variant_label
from conftest import PROMPT


def test_guide_text_round_trips_through_the_manifest_and_the_label(run_cli, tmp_path):
    code, out, err = run_cli("record", PROMPT, "--model", "attnlens-tiny-sd3", "--method", "syngen", "--n-steps", "2",
                             "--guide-text", "both", "--out", tmp_path)
    assert code == 0, err
    (path,) = [p for p in tmp_path.glob("*/*") if p.is_dir()]
    assert path.name == "syngen+text-both-seed0"
    run = attnlens.open_run(path)
    assert run.manifest["method"]["guide_text"] == "both"
    assert variant_label(run.manifest).startswith("syngen[text=both]")
    assert len(run.scalars()["loss"]) == 2


@pytest.mark.parametrize("model, args, words", [
    ("attnlens-tiny-pixart", ["--method", "syngen", "--guide-text", "clip"], ["guide text 'clip'", "pixart"]),
    ("attnlens-tiny", ["--method", "syngen", "--guide-text", "t5"], ["guide text 't5'", "sd"]),
    ("attnlens-tiny-sd3", ["--method", "syngen", "--guide-text", "gemma"], ["--guide-text 'gemma'"]),
    ("attnlens-tiny-sd3", ["--method", "initno"], ["'initno'", "sd3", "self-attention"]),
    ("attnlens-tiny-sana", ["--method", "initno"], ["'initno'", "sana"]),
    ("attnlens-tiny-pixart", ["--method", "structured"], ["'structured'", "pixart"]),
    ("attnlens-tiny-sd3", ["--method", "structured"], ["'structured'", "sd3"]),
])
def test_refused_before_anything_is_written(run_cli, tmp_path, model, args, words):
    code, out, err = run_cli("record", PROMPT, "--model", model, "--n-steps", "2", *args, "--out", tmp_path / "runs")
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) <= 2 and "Traceback" not in err, err  # the error line (and its hint)
    assert all(w in err for w in words), err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("manifest.json"))
    assert not any(p.is_dir() for p in (tmp_path / "runs").glob("*/*")) if (tmp_path / "runs").exists() else True
