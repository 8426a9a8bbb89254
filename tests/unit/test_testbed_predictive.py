"""ROC AUC with DeLong intervals (attnlens.testbed.predictive) against direct pairwise computation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from attnlens.errors import AttnlensError
from attnlens.testbed.predictive import auc_agreement_figure, auc_cluster_bootstrap, auc_delong, best_predictors, metric_auc


def pairwise_auc(x, y):
    pos, neg = x[y], x[~y]
    k = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    return k.mean(), k


def delong_se(x, y):
    """DeLong's variance from the pairwise kernel, by its definition (no ranks)."""
    _, k = pairwise_auc(x, y)
    v10, v01 = k.mean(axis=1), k.mean(axis=0)
    return np.sqrt(v10.var(ddof=1) / len(v10) + v01.var(ddof=1) / len(v01))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_and_se_equal_the_pairwise_definition_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.random(40) < 0.4
    x = np.round(rng.normal(size=(3, 40)) + 0.8 * y, 1)  # rounding makes ties
    res = auc_delong(x, y)
    for g in range(3):
        assert res["auc"][g] == pytest.approx(pairwise_auc(x[g], y)[0], abs=1e-12)
        assert res["se"][g] == pytest.approx(delong_se(x[g], y), rel=1e-9)
        assert res["low"][g] <= res["auc"][g] <= res["high"][g]
    assert (res["n_pos"] == y.sum()).all() and (res["n_neg"] == (~y).sum()).all()


def test_perfect_reversed_and_uninformative_scores():
    y = np.array([0, 0, 0, 1, 1, 1], bool)
    x = np.array([[1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1], [1, 1, 1, 1, 1, 1]], float)
    res = auc_delong(x, y)
    assert res["auc"].tolist() == [1.0, 0.0, 0.5]
    assert res["se"][0] == 0.0 and res["high"][0] == 1.0


def test_one_class_only_gives_nan_and_nan_scores_are_refused():
    assert np.isnan(auc_delong(np.arange(4.0), np.ones(4, bool))["auc"]).all()
    with pytest.raises(AttnlensError):
        auc_delong(np.array([1.0, np.nan]), np.array([True, False]))
    with pytest.raises(AttnlensError):
        auc_delong(np.arange(3.0), np.array([True, False]))


def _table(n=30, seed=0):
    rng = np.random.default_rng(seed)
    success = rng.random(n) < 0.5
    rows = []
    for i in range(n):
        run = f"r{i}"
        for step in range(3):
            # "signal" separates better with the step; "noise" carries no information
            for tok, mult in (("a", 1.0), ("b", 0.5)):
                rows.append((run, "signal", "bound", "all", "sample", step, tok,
                             mult * (success[i] * step + rng.normal())))
            rows.append((run, "noise", "noun", "all", "sample", step, "a", rng.normal()))
            rows.append((run, "signal", "bound", "all", "guidance", step, "a", 0.0))
        rows.append((run, "scalar/loss", "scalar", "-", "guidance", 0, "", rng.normal()))
    df = pd.DataFrame(rows, columns=["run", "metric", "role", "layer", "phase", "step", "token", "value"])
    outcomes = pd.DataFrame({"run": [f"r{i}" for i in range(n)], "success": success})
    return df, outcomes


def test_metric_auc_groups_runs_and_averages_tokens():
    df, outcomes = _table()
    auc = metric_auc(df, outcomes)
    assert set(auc["phase"]) == {"sample"} and "scalar/loss" not in set(auc["metric"])
    one = auc[(auc.metric == "signal") & (auc.step == 2)].iloc[0]
    rows = df[(df.metric == "signal") & (df.step == 2) & (df.phase == "sample")]
    x = rows.groupby("run")["value"].mean().loc[outcomes.run].to_numpy()
    assert one["auc"] == pytest.approx(pairwise_auc(x, outcomes.success.to_numpy())[0])
    sig = auc[auc.metric == "signal"].sort_values("step")["auc"].to_numpy()
    assert sig[-1] > 0.9 and sig[-1] > sig[0]
    best = best_predictors(auc)
    assert best.iloc[0]["metric"] == "signal" and best.iloc[0]["step"] == 2
    sub = metric_auc(df, outcomes, runs=[f"r{i}" for i in range(10)])
    assert (sub["n_pos"] + sub["n_neg"] == 10).all()


def test_metric_auc_errors():
    df, outcomes = _table()
    with pytest.raises(AttnlensError, match="no column"):
        metric_auc(df, outcomes, label="nope")
    with pytest.raises(AttnlensError, match="no metric rows"):
        metric_auc(df, outcomes.assign(run=outcomes.run + "x"))


def test_fixed_point_is_the_last_step_of_the_all_aggregate(tmp_path):
    """The pre-fixed point takes layer ``all`` at its last step for every (metric, role) — whatever step or layer
    would look best — and the bench writes it for all runs beside the unguided ones."""
    from attnlens.testbed.bench import _fixed_tables
    from attnlens.testbed.predictive import fixed_point

    df, outcomes = _table()
    other = df[df.metric == "signal"].assign(layer="up", value=lambda d: -d["value"])  # a better-looking layer
    auc = metric_auc(pd.concat([df, other]), outcomes)
    fixed = fixed_point(auc)
    assert set(fixed["layer"]) == {"all"} and set(fixed["step"]) == {2}
    assert sorted(zip(fixed.metric, fixed.role)) == [("noise", "noun"), ("signal", "bound")]
    row = auc[(auc.metric == "signal") & (auc.layer == "all") & (auc.step == 2)].iloc[0]
    assert fixed.iloc[0]["metric"] == "signal" and fixed.iloc[0]["auc"] == row["auc"]
    sub = fixed_point(metric_auc(df, outcomes, runs=[f"r{i}" for i in range(12)]))
    paths = _fixed_tables([("success", fixed, sub), ("bound", fixed, None)], tmp_path)
    text = paths[0].read_text()
    assert "AUC, unguided runs" in text and text.count("| signal | bound |") == 2
    assert text.index("AUC for `success`") < text.index("AUC for `bound`")
    saved = pd.read_csv(paths[1])
    assert set(saved.columns) >= {"auc", "auc_unguided", "label"} and list(saved["label"].unique()) == ["success", "bound"]
    part = saved[saved["label"] == "success"]
    assert (part["n_pos_unguided"] + part["n_neg_unguided"] == 12).all()
    assert saved.loc[saved["label"] == "bound", "auc_unguided"].isna().all()


def test_cluster_bootstrap_counts_copies_of_a_unit_once():
    """Four near-copies of each unit (the same scores and label, as when several methods change nothing) narrow
    DeLong's interval by about half; the unit bootstrap gives exactly the interval of the units alone."""
    rng = np.random.default_rng(3)
    y = rng.random(40) < 0.4
    x = np.round(rng.normal(size=(2, 40)) + 0.8 * y, 1)
    units = [f"u{i:02d}" for i in range(40)]
    alone = auc_cluster_bootstrap(x, y, units, n_boot=500)
    copies = auc_cluster_bootstrap(np.repeat(x, 4, axis=1), np.repeat(y, 4), np.repeat(units, 4), n_boot=500)
    for k in ("auc", "low", "high", "se"):
        np.testing.assert_allclose(copies[k], alone[k], rtol=1e-12)
    assert (copies["n_clusters"] == 40).all() and (copies["n_pos"] == 4 * y.sum()).all()
    width = lambda r: r["high"] - r["low"]  # noqa: E731
    d1, d4 = auc_delong(x, y), auc_delong(np.repeat(x, 4, axis=1), np.repeat(y, 4))
    assert (width(d4) < 0.6 * width(d1)).all()
    # with one run per unit the bootstrap's spread is DeLong's, up to resampling noise
    np.testing.assert_allclose(alone["se"], d1["se"], rtol=0.25)
    assert (alone["low"] <= alone["auc"]).all() and (alone["auc"] <= alone["high"]).all()


def test_cluster_bootstrap_one_draw_is_the_auc_of_the_resampled_runs():
    """The weighted AUC of a draw equals the plain AUC of the runs of the drawn units, repeated as drawn."""
    rng = np.random.default_rng(4)
    y = np.repeat(rng.random(12) < 0.5, 3)
    x = rng.normal(size=36) + y
    units = np.repeat([f"u{i:02d}" for i in range(12)], 3)  # ids sort as their numbers: draw i is unit i
    r = auc_cluster_bootstrap(x, y, units, n_boot=1, seed=7)
    draw = np.random.default_rng(7).multinomial(12, np.full(12, 1 / 12), size=1)[0]
    keep = np.concatenate([np.flatnonzero(units == f"u{u:02d}").repeat(c) for u, c in enumerate(draw)])
    assert r["low"][0] == pytest.approx(pairwise_auc(x[keep], y[keep])[0], abs=1e-12) == r["high"][0]
    with pytest.raises(AttnlensError, match="cluster ids"):
        auc_cluster_bootstrap(x, y, units[:-1])


def test_metric_auc_with_clusters_keeps_delong_beside_the_unit_interval():
    df, outcomes = _table()
    plain = metric_auc(df, outcomes)
    units = {r: int(r[1:]) // 2 for r in outcomes.run}  # two runs per unit
    t = metric_auc(df, outcomes, clusters=units, n_boot=200)
    np.testing.assert_array_equal(t["auc"], plain["auc"])
    np.testing.assert_array_equal(t["delong_low"], plain["low"])
    assert (t["n_clusters"] == 15).all() and not np.allclose(t["low"], plain["low"])
    with pytest.raises(AttnlensError, match="no cluster id"):
        metric_auc(df, outcomes, clusters={"r0": 0})


def test_auc_agreement_figure_puts_each_metric_at_its_two_aucs():
    from attnlens.figures import panel_count

    rows = []
    for model, sign in (("a", 1), ("b", -1)):
        for lab in ("bound", "success"):
            for metric, auc in (("jsd", 0.8), ("iou", 0.3), ("tv", 0.6)):
                a = 0.5 + sign * (auc - 0.5) if metric == "iou" else auc  # iou flips direction between models
                rows.append((model, lab, "all", metric, "x", a, a - 0.1, a + 0.1))
    t = pd.DataFrame(rows, columns=["model", "label", "runs", "metric", "role", "auc", "low", "high"])
    fig = auc_agreement_figure(t, "a", "b", highlight=[("jsd", "x")])
    assert panel_count(fig) == 2
    ax = fig.attnlens_panels[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["same direction (2)", "opposite (1)"]
    same = ax.lines[3].get_xydata()  # after the two 0.5 lines and the diagonal: the first error-bar series
    assert sorted(map(tuple, same.round(6))) == [(0.6, 0.6), (0.8, 0.8)]
    assert any(a.get_text() == "jsd [x]" for a in ax.texts)
    with pytest.raises(AttnlensError, match="no AUC rows for model"):
        auc_agreement_figure(t, "a", "c")
    with pytest.raises(AttnlensError, match="no AUC rows for labels"):
        auc_agreement_figure(t, "a", "b", labels=["nope"])
