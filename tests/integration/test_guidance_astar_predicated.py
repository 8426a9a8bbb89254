"""A-STAR and Predicated Diffusion through ``attnlens record``: several seeds per call, ``--bind`` overrides and
method options reach the loss."""

from __future__ import annotations

import attnlens
from conftest import PROMPT
from dashboard.data import scan_root


def test_a_star_two_seeds_and_bind_in_one_call(run_cli, tmp_path):
    out = tmp_path / "astar"
    code, _, stderr = run_cli("record", PROMPT, "--method", "a-star", "--seed", "0", "--seed", "1",
                              "--bind", "golden>crown", "--n-steps", "2", "-o", str(out))
    assert code == 0, stderr
    runs = [attnlens.open_run(m.parent) for m in sorted(out.rglob("manifest.json"))]
    assert len(runs) == 2
    for run in runs:
        s = run.scalars()
        # retention compares with the previous step of the same sample: none at step 0 of either seed
        assert s["retention"][0, 0, 0] == 0.0 and s["retention"][1, 0, 0] > 0.0
        assert s["segregation"][0, 0, 0] > 0.0
        sets = run.manifest["parse"]["sets"]
        assert any(u["word"] == "golden" for st in sets if st["noun"]["word"] == "crown" for u in st["modifiers"])
    # the dashboard lists the runs under the method's name, beside the others
    assert {e.method for e in scan_root(out)} == {"a-star"}


def test_predicated_possession_option_reaches_the_loss(run_cli, tmp_path):
    out = tmp_path / "pred"
    code, _, stderr = run_cli("record", PROMPT, "--method", "predicated", "-O", 'possession=[["crown", "strawberry"]]',
                              "-O", "refinement_steps=1", "--n-steps", "1", "-o", str(out))
    assert code == 0, stderr
    (manifest,) = out.rglob("manifest.json")
    run = attnlens.open_run(manifest.parent)
    assert run.manifest["method"]["hyperparameters"]["possession"] == [["crown", "strawberry"]]
    s = run.scalars()
    assert s["possession"][0, 0, 0] > 0.0 and s["leak"][0, 0, 0] > 0.0 and s["refinement_iterations"][0, 0, 0] == 1
    code, _, stderr = run_cli("record", PROMPT, "--method", "predicated", "-O", 'possession=[["hat", "crown"]]',
                              "--n-steps", "1", "-o", str(tmp_path / "bad"))
    assert code == 2 and "not in the prompt" in stderr and "Traceback" not in stderr
