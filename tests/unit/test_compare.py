"""attnlens.compare on small synthetic metric tables whose answers are known."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from attnlens.analysis import COLUMNS
from attnlens.compare import (bootstrap_means, compare, fmt, latex_escape, render, select_rows, to_csv, to_latex,
                              to_markdown, to_rich, unit_values)
from attnlens.errors import AttnlensError


def make_table(values: dict[tuple[str, str, int], list[float]], metric: str = "jsd", role: str = "bound",
               layer: str = "all", phase: str = "sample") -> pd.DataFrame:
    """Rows for {(method, prompt, seed): [value at step 0, value at step 1, ...]}."""
    out = []
    for (method, prompt, seed), vals in values.items():
        for step, v in enumerate(vals):
            out.append({"run": f"runs/{method}-{prompt}-{seed}", "method": method, "variant": method,
                        "prompt": prompt, "seed": seed, "sample": 0, "step": step, "timestep": 1000.0 - step,
                        "phase": phase, "iteration": 0, "layer": layer, "resolution": 16, "token": "red|apple",
                        "role": role, "metric": metric, "value": float(v)})
    return pd.DataFrame(out, columns=COLUMNS)


def paired(n_units: int = 6, shift: float = 0.1, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data = {}
    for k in range(n_units):
        base = rng.normal(1.0, 0.3)
        data[("none", f"p{k % 3}", k)] = [base, base + 0.05]
        data[("syngen", f"p{k % 3}", k)] = [base + shift, base + 0.05 + shift]
    return make_table(data)


# ------------------------------------------------------------------------------------------------------ statistics
def test_bootstrap_deterministic_and_paired():
    v = np.random.default_rng(0).normal(size=(20, 3))
    a = bootstrap_means(v, n_boot=500, seed=0)
    b = bootstrap_means(v, n_boot=500, seed=0)
    for k in ("mean", "low", "high"):
        np.testing.assert_array_equal(a[k], b[k])
    assert np.all(a["low"] <= a["mean"]) and np.all(a["mean"] <= a["high"])
    np.testing.assert_allclose(a["mean"], v.mean(axis=0))
    c = bootstrap_means(v, n_boot=500, seed=1)
    assert not np.array_equal(a["low"], c["low"])  # the seed matters
    one = bootstrap_means(v[:1], n_boot=500)
    np.testing.assert_array_equal(one["low"], one["high"])  # a single unit: no interval


def test_constant_paired_difference_has_zero_width_interval():
    c = compare(paired(shift=0.1), by="method", metrics=["jsd"])
    t = c.table.set_index("group")
    assert t.loc["syngen", "diff"] == pytest.approx(0.1)
    assert t.loc["syngen", "diff_low"] == pytest.approx(0.1) and t.loc["syngen", "diff_high"] == pytest.approx(0.1)
    assert t.loc["none", "low"] < t.loc["none", "high"]  # the groups themselves vary across units
    assert np.isnan(t.loc["none", "diff"])


def test_unit_values_average_within_unit_first():
    # unit A has 4 steps, unit B 1 step: the group mean is the mean of the unit means, not of the rows
    df = make_table({("none", "a", 0): [1.0, 1.0, 1.0, 1.0], ("none", "b", 0): [3.0]})
    u = unit_values(df, by="method")
    assert sorted(u["value"]) == [1.0, 3.0]
    c = compare(df, metrics=["jsd"])
    assert c.table["mean"].iloc[0] == pytest.approx(2.0)


def test_pairing_drops_unshared_units():
    df = make_table({("none", "a", 0): [1.0], ("none", "a", 1): [2.0], ("syngen", "a", 0): [1.5]})
    c = compare(df, metrics=["jsd"], n_boot=100)
    t = c.table.set_index("group")
    assert t.loc["none", "n"] == 1 and t.loc["none", "dropped"] == 1
    assert t.loc["none", "mean"] == 1.0  # only the shared unit (a, 0)
    assert any("not present in every method" in n for n in c.notes)


def test_baseline_and_grouping():
    df = paired()
    assert compare(df, metrics=["jsd"]).baseline == "none"
    c = compare(df, metrics=["jsd"], baseline="syngen")
    t = c.table.set_index("group")
    assert t.loc["none", "diff"] == pytest.approx(-0.1)
    with pytest.raises(AttnlensError, match="baseline"):
        compare(df, metrics=["jsd"], baseline="nope")
    with pytest.raises(AttnlensError, match="paired"):
        compare(df, by="seed")
    with pytest.raises(AttnlensError, match="cannot group"):
        compare(df, by="colour")
    df2 = df.copy()
    df2.loc[df2["method"] == "syngen", "variant"] = "syngen(negative=False)"
    c = compare(df2, by="variant", metrics=["jsd"])
    assert set(c.groups) == {"none", "syngen(negative=False)"}


def test_selection_defaults_and_errors():
    df = pd.concat([
        paired(),
        make_table({("none", "p0", 0): [0.5], ("syngen", "p0", 0): [0.4]}, layer="res16"),
        make_table({("none", "p0", 0): [0.0, 0.0], ("syngen", "p0", 0): [0.2, 0.3]}, metric="latent_drift_rel",
                   role="latent", layer="latent"),
    ], ignore_index=True)
    sel = select_rows(df)  # headline metrics, layer all (+ the latent rows), phase sample
    assert set(sel["layer"]) == {"all", "latent"}
    assert set(sel["metric"]) == {"jsd", "latent_drift_rel"}
    assert set(select_rows(df, metrics=["jsd"], layers=["res16"])["layer"]) == {"res16"}
    assert set(select_rows(df, metrics=["jsd"], steps="1:")["step"]) == {1}
    with pytest.raises(AttnlensError, match="not in the table"):
        select_rows(df, metrics=["cosine"])
    with pytest.raises(AttnlensError, match="role"):
        select_rows(df, metrics=["jsd"], roles=["noun"])
    with pytest.raises(AttnlensError, match="layer"):
        select_rows(df, metrics=["jsd"], layers=["res99"])
    with pytest.raises(AttnlensError, match="empty"):
        select_rows(df.iloc[:0])
    c = compare(df, metrics=["latent_drift_rel"])
    assert c.table.set_index("group").loc["syngen", "mean"] == pytest.approx(0.25)


# ------------------------------------------------------------------------------------------------------ rendering
def test_renderers():
    c = compare(paired(), metrics=["jsd"], n_boot=200)
    back = pd.read_csv(io.StringIO(to_csv(c)))
    assert list(back.columns[:4]) == ["metric", "role", "method", "n"] and len(back) == 2
    md = to_markdown(c)
    lines = [x for x in md.splitlines() if x.startswith("|")]
    assert lines[0].startswith("| method | jsd [bound] |") and len(lines) == 2 + 3  # header, rule, 2 groups, Δ
    assert "Δ syngen − none" in md
    tex = to_latex(c)
    for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}{lr}"):
        assert rule in tex
    assert r"$\Delta$ syngen -- none" in tex and "95\\%" in tex
    text = render(c, "table")
    assert "jsd [bound]" in text and "baseline" in text
    assert to_rich(c).row_count == 3
    with pytest.raises(AttnlensError):
        render(c, "html")


def test_latex_escaping_and_numbers():
    assert latex_escape("leak_in [modifier] 50%") == r"leak\_in [modifier] 50\%"
    assert latex_escape("a&b#c$") == r"a\&b\#c\$"
    assert fmt(0.123456) == "0.123" and fmt(12.3456) == "12.3" and fmt(1.5e-6) == "1.50e-06"
    assert fmt(float("nan")) == "–" and fmt(0.0) == "0"


@pytest.mark.parametrize("n_units, warned", [(3, True), (12, False)])
def test_small_samples_are_flagged(n_units, warned):
    c = compare(paired(n_units=n_units), metrics=["jsd"], roles=["bound"], n_boot=200)
    says = [n for n in c.notes if "too narrow to trust" in n]
    assert bool(says) == warned
    if warned:
        assert f"only {n_units} paired" in says[0]
