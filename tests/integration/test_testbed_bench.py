"""The binding benchmark (attnlens bench binding / sanity) on the embedded tiny model: runs, scores, tables, AUC."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from attnlens.errors import AttnlensError
from attnlens.testbed.bench import bench_variants, heldout_prompts, run_binding_bench, score_run
from attnlens.testbed.evaluate import parse_caption, score
from attnlens.testbed.render import is_held_out
from conftest import attnlens_cmd


def test_heldout_prompts_are_distinct_two_object_captions_with_a_held_out_pair():
    prompts = heldout_prompts(10)
    assert len(prompts) == len(set(prompts)) == 10
    for p in prompts:
        objs = parse_caption(p)
        assert len(objs) == 2 and all(o.size_word is None for o in objs)
        assert any(is_held_out(o.colour, o.shape) for o in objs)
    assert heldout_prompts(10) == prompts  # deterministic
    with pytest.raises(AttnlensError):
        heldout_prompts(10, limit=5)


def test_variants_are_released_defaults_plus_a_step_size_sweep():
    vs = bench_variants(["none", "syngen", "attend-excite"], sweep=[0.5, 1.0, 2.0])
    labels = [v.label for v in vs]
    assert labels == ["none", "syngen", "attend-excite", "syngen step_size=10", "syngen step_size=40",
                      "attend-excite scale_factor=10", "attend-excite scale_factor=40"]
    assert vs[3].options == {"step_size": 10.0} and vs[3].sweep and not vs[1].sweep
    capped = bench_variants(["attend-excite"], sweep=[2.0], overrides={"attend-excite": {"max_refinement_steps": 1}})
    assert capped[1].options == {"max_refinement_steps": 1, "scale_factor": 40.0}
    with pytest.raises(AttnlensError, match="unknown method"):
        bench_variants(["nope"])


@pytest.fixture(scope="module")
def bench(tiny_pipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    res = run_binding_bench(tiny_pipe, out, prompts=["a red circle and a blue square"], seeds=[0, 1],
                            methods=["none", "syngen"], sweep=[4.0], steps=3, n_boot=100, progress=False,
                            log=lambda s: None)
    return out, res


@pytest.mark.slow
def test_every_run_is_recorded_and_scored_from_its_own_image(bench, tiny_pipe):
    out, res = bench
    o = res.outcomes
    assert len(o) == 6 and res.recorded == 6
    assert set(o["variant"]) == {"none", "syngen", "syngen step_size=80"}
    for _, row in o.iterrows():
        from attnlens import open_run

        run = open_run(row["run"])
        assert run.manifest["label"] == row["variant"] and run.manifest["seed"] == row["seed"]
        direct = score(np.asarray(run.image(0).convert("RGB")), row["prompt"])
        assert row["success"] == direct.success and row["neglect"] == direct.neglect
        assert row["object_accuracy"] == direct.n_correct / 2
        assert score_run(row["run"])["misbinding"] == direct.misbinding
    hp = open_run(o[o.variant == "syngen step_size=80"]["run"].iloc[0]).manifest["method"]["hyperparameters"]
    assert hp["step_size"] == 80.0
    saved = pd.read_csv(out / "outcomes.csv")
    assert len(saved) == 6 and (out / "binding.md").read_text().count("syngen step_size=80") >= 1


@pytest.mark.slow
def test_binding_table_means_equal_the_outcome_means(bench):
    _, res = bench
    t = res.comparison.table
    for variant, part in res.outcomes.groupby("variant"):
        for metric in ("success", "neglect", "object_accuracy"):
            row = t[(t.group == variant) & (t.metric == metric)].iloc[0]
            assert row["mean"] == pytest.approx(part[metric].astype(float).mean())
            assert row["n"] == 2
    assert (t[t.metric == "neglect"]["higher_is"] == "worse").all()


@pytest.mark.slow
def test_rerun_reuses_complete_runs(bench, tiny_pipe):
    out, _ = bench
    again = run_binding_bench(tiny_pipe, out, prompts=["a red circle and a blue square"], seeds=[0, 1],
                              methods=["none", "syngen"], sweep=[4.0], steps=3, n_boot=100, progress=False,
                              analyse=False, log=lambda s: None)
    assert again.recorded == 0 and again.reused == 6


@pytest.mark.slow
def test_auc_of_the_recorded_maps(bench):
    from attnlens.analysis import read_table
    from attnlens.testbed.predictive import metric_auc

    out, res = bench
    df = read_table(out / "metrics.parquet")
    assert set(df["run"]) == set(res.outcomes["run"])
    o = res.outcomes.assign(success=[True, False] * 3)  # the random tiny model never succeeds: inject labels
    auc = metric_auc(df, o)
    assert len(auc) and auc["auc"].between(0, 1).all()
    assert set(auc["n_pos"]) == {3} and set(auc["n_neg"]) == {3}


def test_bad_prompt_is_refused(tiny_pipe, tmp_path):
    with pytest.raises(AttnlensError, match="cannot score"):
        run_binding_bench(tiny_pipe, tmp_path, prompts=["a red crown and a golden strawberry"], seeds=[0],
                          methods=["none"], sweep=[], steps=2, progress=False)


def test_sanity_report(tiny_pipe, tmp_path):
    from attnlens.testbed.sanity import KINDS, run_sanity

    rep = run_sanity(tiny_pipe, n=2, steps=2, save=tmp_path / "s.png", progress=False)
    assert list(rep["kinds"]) == list(KINDS)
    for r in rep["kinds"].values():
        assert r["n_images"] == 2 and 0.0 <= r["success_rate"] <= 1.0 and 0.0 <= r["both_present"] <= 1.0
    assert len(list(tmp_path.glob("s-*.png"))) == len(KINDS)


def test_cli_bench_errors_are_one_line(tmp_path):
    r = subprocess.run([*attnlens_cmd(), "bench", "binding", "--prompts", "0", "--out", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--prompts" in r.stderr
    r = subprocess.run([*attnlens_cmd(), "bench", "binding", "--seeds", "a,b", "--out", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "comma-separated integers" in r.stderr
    help_ = subprocess.run([*attnlens_cmd(), "bench", "binding", "--help"], capture_output=True, text=True)
    assert help_.returncode == 0 and "Examples" in help_.stdout


def test_calibration_runs_on_validation_and_feeds_the_test_bench(tiny_pipe, tmp_path):
    from attnlens.testbed.calibrate import run_calibration
    from attnlens.testbed.protocol import read_calibration, split_of

    doc = run_calibration(tiny_pipe, tmp_path / "cal", methods=["syngen"], factors=[1.0, 4.0], prompts=2, seeds=[0],
                          steps=3, progress=False, log=lambda s: None)
    assert doc["prompts"] and all(split_of(p) == "val" for p in doc["prompts"])
    rows = {r["factor"]: r for r in doc["table"]}
    assert set(rows) == {1.0, 4.0} and rows[4.0]["value"] == 80.0 and all(r["n"] == 2 for r in rows.values())
    outcomes = pd.read_csv(tmp_path / "cal" / "outcomes.csv")
    for f, r in rows.items():  # each row is the mean of its own runs' evaluator verdicts
        sub = outcomes[outcomes["variant"] == r["label"]]
        assert r["bound"] == pytest.approx(sub["bound"].astype(float).mean())
    best = max(rows.values(), key=lambda r: (r["bound"], r["success"], -abs(np.log(r["factor"]))))
    assert doc["chosen"]["syngen"]["factor"] == best["factor"]
    assert "**syngen**" in (tmp_path / "cal" / "calibration.md").read_text()
    factor = read_calibration(tmp_path / "cal" / "calibration.json")["syngen"]
    res = run_binding_bench(tiny_pipe, tmp_path / "test", prompts=2, seeds=[0], methods=["none", "syngen"], sweep=[],
                            steps=3, analyse=False, n_boot=50, progress=False, log=lambda s: None, split="test",
                            calibrated={"syngen": factor})
    o = res.outcomes
    assert all(split_of(p) == "test" for p in o["prompt"])
    assert set(o.loc[o["calibrated"], "variant"]) == {doc["chosen"]["syngen"]["label"]}


def test_cli_bench_power_and_calibrate_errors(tmp_path, run_cli):
    code, out, err = run_cli("bench", "power", "--delta", "0.1", "--discordant", "0.25", "--json")
    assert code == 0 and '"units": 194' in out
    pilot = tmp_path / "outcomes.csv"
    pd.DataFrame([{"variant": v, "prompt": "p", "seed": s, "misbinding": int(v == "syngen" and s == 0)}
                  for v in ("none", "syngen") for s in range(4)]).to_csv(pilot, index=False)
    code, out, err = run_cli("bench", "power", "--pilot", pilot, "--json")
    assert code == 0 and '"discordant": 0.25' in out and '"n": 4.0' in out
    for args, needle in ((("bench", "power", "--delta", "0.5", "--discordant", "0.2"), "[|δ|, 1]"),
                         (("bench", "power", "--pilot", tmp_path / "nope.csv"), "no pilot table"),
                         (("bench", "calibrate", "--method", "none", "--out", tmp_path), "no method to calibrate"),
                         (("bench", "calibrate", "--objective", "misbinding", "--out", tmp_path), "minimise"),
                         (("bench", "binding", "--split", "train", "--out", tmp_path), "unknown split"),
                         (("bench", "binding", "--calibration", pilot, "--out", tmp_path), "not a calibration file")):
        code, out, err = run_cli(*args)
        assert code == 2 and needle in err and "Traceback" not in err, (args, err)


def test_cli_bench_progress_bar_counts_runs_to_record_and_only_on_a_terminal(tmp_path, run_cli, monkeypatch,
                                                                                tiny_pipe):
    import attnlens.testbed.bench as bench_module

    monkeypatch.setattr(bench_module, "load_pipeline", lambda *a, **k: tiny_pipe)
    args = ("bench", "binding", "--prompts", "1", "--seeds", "0", "--sweep", "", "--n-steps", "2", "--no-analyse",
            "--n-boot", "20", "--out", tmp_path, "--method", "none", "--method", "syngen")
    code, out, err = run_cli(*args, "--format", "json")  # JSON: no bar, stdout parses
    assert code == 0 and json.loads(out)["recorded"] == 2 and "binding bench" not in err
    code, out, err = run_cli(*args)  # text, but stderr is not a terminal: no bar either
    assert code == 0 and "binding bench" not in err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code, out, err = run_cli(*args, "--method", "syngen-entropy")  # a terminal: the bar counts what is left to record
    assert code == 0 and "binding bench (2 of 3 runs reused)" in err and "1/1" in err, err


def test_bench_intervention_variants_edit_each_prompt_against_its_own_scene(tiny_pipe, tmp_path):
    """`--intervene mask-gt` is the unguided model with each object's words masked to that prompt's ground-truth
    boxes: the boxes come from the caption's own scene, the maps are zero outside them, a literal intervention text
    applies as written, and a second benchmark reuses the runs."""
    from attnlens import open_run
    from attnlens.testbed.scene_edits import scene_of

    prompts = heldout_prompts(2)
    kw = dict(prompts=prompts, seeds=[0], methods=["none"], sweep=[], steps=2, analyse=False, n_boot=50,
              progress=False, log=lambda s: None, interventions=["mask-gt", "swap-colours steps=0:1", "ablate and"])
    res = run_binding_bench(tiny_pipe, tmp_path, **kw)
    o = res.outcomes
    assert set(o["variant"]) == {"none", "none + mask-gt", "none + swap-colours steps=0:1", "none + ablate and"}
    assert res.recorded == 8
    for p in prompts:
        scene = scene_of(p)
        run = open_run(o[(o["variant"] == "none + mask-gt") & (o["prompt"] == p)]["run"].iloc[0])
        edits = run.manifest["interventions"]
        assert [e["op"] for e in edits] == ["mask", "mask"]
        for e, obj in zip(edits, scene.objects):
            assert e["tokens"] == [obj.colour, obj.shape]
            np.testing.assert_allclose(e["box"], [v / scene.image_size for v in obj.bbox], atol=1e-3)
        colour = run.token_positions(scene.objects[0].colour)[0]
        r0, c0, r1, c1 = (v / scene.image_size for v in scene.objects[0].bbox)
        for layer in run.layers:
            m = run.maps(layer, 0)[0, :, colour]  # (head, y, x)
            h, w = m.shape[-2:]
            # cells that do not overlap the box at all (cells on its edge keep the part inside)
            rows = (np.arange(h + 1) / h)
            cols = (np.arange(w + 1) / w)
            out_r = (rows[1:] <= r0) | (rows[:-1] >= r1)
            out_c = (cols[1:] <= c0) | (cols[:-1] >= c1)
            outside = out_r[:, None] | out_c[None, :]
            assert outside.any()
            assert (m[:, outside] == 0).all() and m.sum() > 0
        swap = open_run(o[(o["variant"] == "none + swap-colours steps=0:1") & (o["prompt"] == p)]["run"].iloc[0])
        colours = [obj.colour for obj in scene.objects]
        assert swap.manifest["interventions"][0]["tokens"] == colours
        assert swap.manifest["interventions"][0]["steps"] in ("0:1", [0])
    again = run_binding_bench(tiny_pipe, tmp_path, **kw)
    assert again.recorded == 0 and again.reused == 8


def test_cli_bench_refuses_a_bad_intervention_before_recording(tmp_path, run_cli):
    for bad, words in (("mask-gt colour=red", "takes only"), ("frobnicate red", "unknown intervention")):
        code, out, err = run_cli("bench", "binding", "--prompts", "1", "--seeds", "0", "--intervene", bad,
                                 "--out", tmp_path / "b")
        assert code == 2 and words in err and "Traceback" not in err, err
        assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_auc_of_both_models_script_resamples_units(bench, tmp_path):
    """analyses/09 on two protocol folders: side-by-side fixed-point AUCs with intervals over (prompt, seed) units,
    DeLong's kept in the CSV; a rerun reads the per-run metrics it already wrote."""
    from pathlib import Path

    out, res = bench
    o = res.outcomes.assign(success=[True, False] * 3, bound=[True, True, False] * 2)  # inject labels
    for name in ("a", "b"):
        (tmp_path / name / "test").mkdir(parents=True)
        o.to_csv(tmp_path / name / "test" / "outcomes.csv", index=False)
    script = Path(__file__).resolve().parents[2] / "analyses" / "09_auc_both_models.py"
    cmd = [sys.executable, str(script), "--model", f"a={tmp_path / 'a'}", "--model", f"b={tmp_path / 'b'}",
           "--out", str(tmp_path / "auc")]
    first = subprocess.run(cmd, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    t = pd.read_csv(tmp_path / "auc" / "auc_fixed_models.csv")
    assert set(t["model"]) == {"a", "b"} and set(t["label"]) == {"success", "bound"}
    assert (t["n_clusters"] == 2).all() and {"delong_low", "delong_high"} <= set(t.columns)
    assert ((t["low"] <= t["auc"]) & (t["auc"] <= t["high"])).all()
    md = (tmp_path / "auc" / "auc_fixed_models.md").read_text()
    assert "3/3 runs, 2 units" in md and "resampling (prompt, seed) units" in md
    assert (tmp_path / "auc" / "auc_agreement.pdf").read_bytes()[:4] == b"%PDF"
    a, b = t[t.model == "a"].reset_index(drop=True), t[t.model == "b"].reset_index(drop=True)
    np.testing.assert_array_equal(a["auc"], b["auc"])  # the same runs give the same numbers under either name
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 0 and "analysing run" in first.stderr and "analysing run" not in again.stderr
