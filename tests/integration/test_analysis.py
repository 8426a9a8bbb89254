"""attnlens analyze / compare / figure on tiny recorded runs, checked against direct computation from the stores.

One module-scoped fixture records, with the embedded model at 32×32 (maps at 8, 4 and 2) and 2 inference steps:
``none`` seeds 0 and 1 and ``syngen`` seed 0 on "a red apple and a green banana", plus a ``none`` run interrupted
after 2 steps (status ``failed``). Any error while recording fails every test that uses the fixture.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import attnlens
from attnlens import metrics as M
from attnlens.analysis import (COLUMNS, Analysis, analyze_runs, available_records,
                               load_table, otsu_thresholds, read_table, run_parse, select_tokens, write_parquet)
from attnlens.errors import AttnlensError
from attnlens.store import PHASES

PROMPT = "a red apple and a green banana"
KW = dict(num_inference_steps=2, height=32, width=32)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("analysis-runs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model runs several times faster on one thread, above all on a busy machine
    try:
        record_runs(base)
    finally:
        torch.set_num_threads(threads)
    return base


def record_runs(base: Path) -> None:
    pipe = attnlens.load_pipeline("attnlens-tiny")
    for seed in (0, 1):
        attnlens.sample(pipe, PROMPT, method="none", seed=seed, out=base / "runs" / f"none-seed{seed}", **KW)
    guided = attnlens.sample(pipe, PROMPT, method="syngen", method_options={"resolution": 8}, seed=0,
                             out=base / "runs" / "syngen-seed0", **KW)
    assert guided.complete and guided.manifest["method"]["name"] == "syngen"

    def stop(i: int, n: int) -> None:
        if i == 2:
            raise RuntimeError("interrupted on purpose")

    with pytest.raises(RuntimeError):
        attnlens.sample(pipe, PROMPT, method="none", seed=2, out=base / "failed" / "none-seed2",
                        num_inference_steps=4, height=32, width=32, progress=stop)


@pytest.fixture(scope="module")
def table(root) -> pd.DataFrame:
    return analyze_runs(root / "runs")


def unit_stack(x: np.ndarray, sel) -> np.ndarray:
    """(token, h, w) → (unit, h, w): the mean of each unit's pieces (the documented rule)."""
    return np.stack([x[list(u.positions)].mean(axis=0) for u in sel.units])


def rows(df: pd.DataFrame, **eq) -> pd.DataFrame:
    keep = np.ones(len(df), dtype=bool)
    for k, v in eq.items():
        keep &= (df[k] == v).to_numpy()
    return df[keep]


# ------------------------------------------------------------------------------------------------------ the table
def test_table_columns_and_coverage(root, table):
    assert list(table.columns) == COLUMNS
    assert table["run"].nunique() == 3
    assert set(table["method"]) == {"none", "syngen"}
    run = attnlens.open_run(root / "runs" / "none-seed0")
    sel = select_tokens(run_parse(run))
    labels = {u.label for u in sel.units}
    assert labels == {"red", "apple", "green", "banana"}
    assert {p.role for p in sel.pairs} == {"bound", "unbound", "entities"}
    assert {"red|apple", "green|banana"} <= set(rows(table, role="bound")["token"])
    layers = set(table["layer"])
    assert set(run.layers) <= layers and {"all", "res8", "res4", "res2"} <= layers
    # every (layer, step) of the none run has one row per unit per token metric
    r = rows(table, run=str(run.path), metric="entropy")
    assert len(r) == len(labels) * (len(run.layers) + 4) * len(run.recorded_steps())


def test_values_match_direct_computation(root, table):
    run = attnlens.open_run(root / "runs" / "none-seed0")
    sel = select_tokens(run_parse(run))
    layer, step = run.layers[0], 1
    x = run.maps(layer, step)[0].astype(np.float64).mean(axis=0)  # (token, h, w), heads averaged
    u = unit_stack(x, sel)
    got = rows(table, run=str(run.path), layer=layer, step=step, phase="sample")

    def value(metric, token):
        v = rows(got, metric=metric, token=token)["value"].to_numpy()
        assert v.size == 1, (metric, token)
        return v[0]

    for i, unit in enumerate(sel.units):
        assert value("entropy", unit.label) == pytest.approx(M.spatial_entropy(u[i]), rel=1e-12)
        assert value("tv_paper", unit.label) == pytest.approx(M.tv_paper(u[i]), rel=1e-12)
        assert value("tv_released", unit.label) == pytest.approx(M.tv_released(u[i]), rel=1e-12)
        assert value("neglect_peak", unit.label) == pytest.approx(M.neglect(u[i]).peak, rel=1e-12)
    for p in sel.pairs:
        for metric in M.OVERLAP_METRICS:
            expected = M.overlap(u[p.a], u[p.b], metric)
            assert value(metric, p.label) == pytest.approx(expected, rel=1e-9, abs=1e-12), (metric, p.label)
    regions = M.entity_regions(u[list(sel.entities)])
    for mi, e in sel.modifiers:
        others = [j for j in range(len(sel.entities)) if j != e]
        label = sel.units[mi].label
        assert value("leak_in", label) == pytest.approx(M.leak_in_prompt(u[mi], regions[e], regions[others]), abs=1e-12)
        assert value("leak_out", label) == pytest.approx(M.leak_out_of_prompt(u[mi], regions), abs=1e-12)
    t = sel.prompt_length
    te = M.token_allocation_entropy(x, prompt_slice=slice(1, t + 1)).mean
    assert value("token_entropy", "*") == pytest.approx(te, rel=1e-12)


def test_aggregates_match_direct_computation(root, table):
    run = attnlens.open_run(root / "runs" / "none-seed1")
    sel = select_tokens(run_parse(run))
    step = 2
    per_layer = {n: run.maps(n, step)[0].astype(np.float64).mean(axis=0) for n in run.layers}
    res8 = np.mean([m for m in per_layer.values() if m.shape[-1] == 8], axis=0)
    every = np.mean([M.resample_maps(m, 8, renormalize=False) for m in per_layer.values()], axis=0)
    for name, agg in (("res8", res8), ("all", every)):
        u = unit_stack(agg, sel)
        got = rows(table, run=str(run.path), layer=name, step=step, phase="sample", metric="jsd")
        for p in sel.pairs:
            v = rows(got, token=p.label)["value"].to_numpy()
            assert v[0] == pytest.approx(M.jensen_shannon(u[p.a], u[p.b]), rel=1e-6, abs=1e-12)


def test_chunk_reader_equals_zarr(root, tmp_path, monkeypatch):
    """Run.read_records through the fast chunk reader equals the same records read through zarr, missing chunks
    included (NaN, the fill value)."""
    src = root / "runs" / "none-seed0"
    shutil.copytree(src, tmp_path / "run")
    run = attnlens.open_run(tmp_path / "run")
    slow = attnlens.open_run(tmp_path / "run")
    monkeypatch.setattr(slow, "chunk_reader", lambda layer: None)  # this one reads through zarr
    for r in (run, slow):  # as an incomplete run (a missing chunk is NaN there; in a complete run it is damage)
        r.manifest["status"] = "running"
    layer = run.layers[1]
    assert run.chunk_reader(layer) is not None
    recs = [(0, 0), (2, 0), (1, 0)]
    direct, via_zarr = run.read_records(layer, recs, 0), slow.read_records(layer, recs, 0)
    assert np.array_equal(direct, via_zarr) and np.isfinite(direct).all()
    arr = run.array(layer)
    (run.data_path / "attention" / layer / "maps" / arr.metadata.encode_chunk_key((2, 0, 0, 0, 0, 0, 0, 0))).unlink()
    direct, via_zarr = run.read_records(layer, recs, 0), slow.read_records(layer, recs, 0)
    assert np.isnan(direct[1]).all() and np.array_equal(direct[[0, 2]], via_zarr[[0, 2]])
    assert np.isnan(via_zarr[1]).all()


def test_otsu_vectorised_equals_skimage():
    from skimage.filters import threshold_otsu

    rng = np.random.default_rng(0)
    maps = rng.random((60, 16, 16)) ** 3
    maps[::7] = np.round(maps[::7] * 64) / 64  # ties and values on bin edges
    maps[3] = 0.25  # constant: no split
    maps[5, 0, 0] = np.nan  # non-finite
    maps = maps.astype(np.float16).astype(np.float64)
    got = otsu_thresholds(torch.from_numpy(maps)).numpy()
    for m, g in zip(maps, got):
        if not np.isfinite(m).all() or m.max() == m.min():
            assert g == np.inf
        else:
            assert g == threshold_otsu(m)


def test_trajectory_and_scalars(root, table):
    guided = attnlens.open_run(root / "runs" / "syngen-seed0")
    plain = attnlens.open_run(root / "runs" / "none-seed0")
    a, b = guided.latents()[:, 0].astype(np.float64), plain.latents()[:, 0].astype(np.float64)
    expected = np.linalg.norm((a - b).reshape(len(a), -1), axis=1)
    got = rows(table, run=str(guided.path), metric="latent_drift").sort_values("step")
    np.testing.assert_allclose(got["value"].to_numpy(), expected, rtol=1e-12)
    assert (rows(table, run=str(plain.path), metric="latent_drift")["value"] == 0).all()
    seed1 = rows(table, run=str(root / "runs" / "none-seed1"), metric="latent_drift")
    assert len(seed1) and (seed1["value"] == 0).all()  # a none run is its own reference
    loss = guided.scalars()["loss"][:, :, 0]
    got = rows(table, run=str(guided.path), metric="scalar/loss")
    for r in got.itertuples():
        assert r.value == pytest.approx(float(loss[r.step, r.iteration]), rel=1e-6)
    assert len(got) == int(np.isfinite(loss).sum())
    assert set(rows(table, run=str(guided.path))["phase"]) >= {"sample", "guidance"}


# ------------------------------------------------------------------------------------------------------ streaming
def test_parquet_streaming_equals_in_memory(root, table, tmp_path):
    a = Analysis(root / "runs", batch_elements=2_000)  # tiny batches: many tables, same values
    report = write_parquet(a, tmp_path / "m.parquet", row_group_rows=5_000)
    import pyarrow.parquet as pq

    assert pq.ParquetFile(tmp_path / "m.parquet").metadata.num_row_groups > 1
    back = read_table(tmp_path / "m.parquet")
    assert report.rows == len(back) == len(table)
    key = ["run", "step", "phase", "iteration", "layer", "token", "metric"]
    x = back.sort_values(key).reset_index(drop=True)
    y = table.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(x[key], y[key])
    np.testing.assert_allclose(x["value"].to_numpy(), y["value"].to_numpy(), rtol=1e-12, equal_nan=True)
    assert len(report.summary) >= 1 and "runs" in report.summary.columns


def test_filters(root):
    df = analyze_runs(root / "runs", metrics=["jsd", "leak_*"], layers=["all"], steps="0:2", phases=["sample"])
    assert set(df["metric"]) <= {"jsd", "leak_in", "leak_out"}
    assert set(df["layer"]) == {"all"} and set(df["step"]) == {0, 1} and set(df["phase"]) == {"sample"}
    df = analyze_runs(root / "runs" / "none-seed0", layers=["8"], metrics=["entropy"])
    assert set(df["resolution"]) == {8} and "all" not in set(df["layer"])


def test_partial_runs(root, tmp_path):
    a = Analysis([root / "runs", root / "failed"])
    assert any("incomplete" in n and "--partial" in n for n in a.notes)
    assert len(a.runs) == 3
    failed = tmp_path / "failed-copy"
    shutil.copytree(root / "failed" / "none-seed2", failed)
    run = attnlens.open_run(failed)
    assert run.status == "failed"
    records, last = available_records(run)
    assert last == 1 and records[("sample", 0)] == [0, 1]
    df = analyze_runs(failed, partial=True, metrics=["entropy"])
    assert set(df["step"]) == {0, 1}
    # a chunk missing in one layer at step 1 (the writer died mid-step): analyse step 0 only
    arr = run.array(run.layers[-1])
    chunk = run.data_path / "attention" / run.layers[-1] / "maps" / arr.metadata.encode_chunk_key((1, 0, 0, 0, 0, 0, 0, 0))
    chunk.unlink()
    df = analyze_runs(failed, partial=True, metrics=["entropy"])
    assert set(df["step"]) == {0}
    with pytest.raises(AttnlensError):
        analyze_runs(failed)  # incomplete and not --partial: nothing to analyse


def test_bad_input(tmp_path, root):
    with pytest.raises(AttnlensError, match="does not exist"):
        analyze_runs(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AttnlensError, match="no runs"):
        analyze_runs(tmp_path / "empty")
    with pytest.raises(AttnlensError, match="unknown metric"):
        analyze_runs(root / "runs", metrics=["jsdd"])
    with pytest.raises(AttnlensError, match="unknown phase"):
        analyze_runs(root / "runs", phases=["sampling"])


# ------------------------------------------------------------------------------------------------------ compare
def test_compare_on_runs(root, table):
    from attnlens.compare import compare

    df = load_table(root / "runs", metrics=["jsd"], layers=["all"])
    c = compare(df, by="method", metrics=["jsd"], roles=["bound"])
    assert c.baseline == "none"
    t = c.table.set_index("group")
    assert t.loc["none", "n"] == 1 and t.loc["none", "dropped"] == 1  # seed 1 has no syngen partner
    direct = rows(table, layer="all", phase="sample", metric="jsd", role="bound", seed=0)
    for g in ("none", "syngen"):
        assert t.loc[g, "mean"] == pytest.approx(rows(direct, method=g)["value"].mean(), rel=1e-12)
    assert t.loc["syngen", "diff"] == pytest.approx(t.loc["syngen", "mean"] - t.loc["none", "mean"], rel=1e-9)


# ------------------------------------------------------------------------------------------------------ CLI
def test_cli_analyze_compare_figure(root, tmp_path, capsys):
    from attnlens.cli import main

    out = tmp_path / "m.parquet"
    assert main(["analyze", str(root / "runs"), "--out", str(out), "--layers", "all"]) == 0
    captured = capsys.readouterr()
    assert out.is_file() and "rows from" in captured.out
    assert main(["compare", str(out), "--metric", "jsd", "--role", "bound", "--format", "csv"]) == 0
    csv = capsys.readouterr().out
    assert csv.startswith("metric,role,method,n")
    fig = tmp_path / "maps.png"
    assert main(["figure", "maps", str(root / "runs" / "none-seed0"), str(root / "runs" / "none-seed1"),
                 "--token", "red", "--steps", "0,2", "--width", "column", "--out", str(fig)]) == 0
    from PIL import Image

    with Image.open(fig) as im:
        assert im.size[0] == round(3.25 * 300)
    # bad input: one line + hint on stderr, exit status 2, no traceback
    capsys.readouterr()
    assert main(["analyze", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and "hint:" in err
    assert main(["compare", str(out), "--metric", "nope"]) == 2
    bad = tmp_path / "x.gif"
    assert main(["figure", "curves", str(out), "--metric", "jsd", "--role", "bound", "--out", str(bad)]) == 2


def test_maps_figure_panels(root):
    from attnlens.figures import maps_figure, panel_count

    runs = [attnlens.open_run(root / "runs" / f"none-seed{s}") for s in (0, 1)]
    fig = maps_figure(runs, tokens=["red", "banana"], steps=[0, 1, 2], layer="res8", width="column")
    assert panel_count(fig) == 2 * 2 * 3
    assert tuple(fig.get_size_inches().round(2))[0] == 3.25
    assert PHASES[0] == "sample"


@pytest.mark.parametrize("damage", ["delete", "garbage"])
def test_a_damaged_chunk_of_a_complete_run_is_named_not_read_as_nan(root, tmp_path, damage):
    """A complete run's manifest lists its records: a chunk that is gone or does not decode is reported with its
    layer and step by every reader (analysis's fast path, zarr's path, figures), never tabulated or drawn."""
    shutil.copytree(root / "runs" / "none-seed0", tmp_path / "run")
    run = attnlens.open_run(tmp_path / "run")
    layer = run.layers[0]
    chunk = run.data_path / "attention" / layer / "maps" / run.array(layer).metadata.encode_chunk_key((1,) + (0,) * 7)
    if damage == "delete":
        chunk.unlink()
    else:
        chunk.write_bytes(b"not a blosc chunk at all")
    with pytest.raises(AttnlensError, match=f"layer {layer}, phase sample, step 1"):
        analyze_runs(tmp_path / "run", metrics=["entropy"])
    if damage == "delete":
        with pytest.raises(AttnlensError, match="step 1"):
            attnlens.open_run(tmp_path / "run").read(layer, [0, 1], "sample", 0, sample=0)
