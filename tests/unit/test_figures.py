"""attnlens.figures: files produced, of the requested size and panel count, deterministic, headless."""

from __future__ import annotations

import hashlib
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from attnlens import figures as F
from attnlens.analysis import COLUMNS
from attnlens.errors import AttnlensError, BadOption

LAYERS = ["down_blocks.0.attentions.0.transformer_blocks.0.attn2", "mid_block.attentions.0.transformer_blocks.0.attn2",
          "up_blocks.1.attentions.0.transformer_blocks.0.attn2"]


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []

    def add(method, prompt, seed, step, layer, res, token, role, metric, value, phase="sample", it=0):
        rows.append({"run": f"runs/{method}-{seed}", "method": method, "variant": method, "prompt": prompt,
                     "seed": seed, "sample": 0, "step": step, "timestep": 1000.0 - 20 * step, "phase": phase,
                     "iteration": it, "layer": layer, "resolution": res, "token": token, "role": role,
                     "metric": metric, "value": float(value)})

    for method, shift in (("none", 0.0), ("syngen", -0.1), ("attend-excite", 0.05)):
        for prompt in ("a red apple", "a blue cat"):
            for seed in (0, 1, 2):
                for step in range(10):
                    for layer, res in zip(LAYERS + ["all"], (16, 4, 8, 16)):
                        add(method, prompt, seed, step, layer, res, "red|apple", "bound", "jsd",
                            0.4 + shift + 0.01 * step + rng.normal(0, 0.02))
                        add(method, prompt, seed, step, layer, res, "red|banana", "unbound", "jsd",
                            0.6 + rng.normal(0, 0.02))
                        add(method, prompt, seed, step, layer, res, "apple", "noun", "entropy", 4 + rng.normal(0, 0.1))
                    if method != "none":
                        for it in (0, 1):
                            add(method, prompt, seed, step, "-", 0, "-", "scalar", "scalar/loss", 1 / (step + 1 + it),
                                phase="guidance", it=it)
                            add(method, prompt, seed, step, "-", 0, "-", "scalar", "scalar/step_size", 20.0,
                                phase="guidance", it=it)
                        if method == "syngen":
                            add(method, prompt, seed, step, "-", 0, "-", "scalar", "scalar/positive", 0.5 / (step + 1),
                                phase="guidance")
    return pd.DataFrame(rows, columns=COLUMNS)


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_headless_backend():
    assert matplotlib.get_backend().lower() == "agg"


@pytest.mark.parametrize("width,inches", [("column", 3.25), ("page", 6.75), ("5", 5.0)])
def test_curves_size_and_panels(table, tmp_path, width, inches):
    fig = F.curves_figure(table, "jsd", role="bound", width=width)
    assert F.panel_count(fig) == 1
    out = F.save_figure(fig, tmp_path / "curves.png")
    assert png_size(out)[0] == round(inches * 300)
    assert fig.get_size_inches()[0] == pytest.approx(inches)


def test_curves_several_metrics_and_band(table):
    fig = F.curves_figure(table, ["jsd", "entropy"], role=["bound", None], width="page")
    assert F.panel_count(fig) == 2
    curves = F.step_curves(table[(table.metric == "jsd") & (table.role == "bound") & (table.layer == "all")])
    c = curves["syngen"]
    assert c["n"] == 6 and np.all(c["low"] <= c["mean"]) and np.all(c["mean"] <= c["high"])
    assert list(curves) == ["none", "attend-excite", "syngen"]  # the baseline first (black)


def test_layers_and_losses_panels(table, tmp_path):
    fig = F.layers_figure(table, "entropy", width="page")
    assert F.panel_count(fig) == 3  # one heat map per method; the colour bar is not a panel
    ax = fig.attnlens_panels[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["down0.0 (16)", "mid.0 (4)", "up1.0 (8)"]
    assert F.save_figure(fig, tmp_path / "layers.pdf").read_bytes().startswith(b"%PDF")
    fig = F.layers_figure(table, "jsd", role="bound", groups=["syngen"], width="column")
    assert F.panel_count(fig) == 1
    fig = F.losses_figure(table, width="page", per_group=False)
    assert F.panel_count(fig) == 2  # loss, positive (step_size is bookkeeping)
    fig = F.losses_figure(table, width="page")  # one panel per (method, term), each on its own scale
    sc = table[table.metric.str.startswith("scalar/") & ~table.metric.isin(["scalar/step_size"])]
    expected = {f"{m}: {t[len('scalar/'):]}" for m, t in sc.groupby(["method", "metric"], observed=True).size().index
                if t[len("scalar/"):] not in F.BOOKKEEPING}
    assert {ax.get_title() for ax in fig.attnlens_panels} == expected and len(expected) >= 2
    fig = F.losses_figure(table, terms=["loss"], iteration="last", width="column", per_group=False)
    assert F.panel_count(fig) == 1
    fig = F.losses_figure(table, terms=["loss"], iteration="last", width="column")
    assert sorted(ax.get_title() for ax in fig.attnlens_panels) == ["attend-excite: loss", "syngen: loss"]
    out = F.save_figure(fig, tmp_path / "losses.svg")
    assert out.read_text().startswith("<?xml")


def test_deterministic_output(table, tmp_path):
    small = table[table["prompt"] == "a red apple"]
    for suffix in ("pdf", "svg", "png"):
        a = F.save_figure(F.curves_figure(small, "jsd", role="bound", n_boot=50), tmp_path / f"a.{suffix}")
        b = F.save_figure(F.curves_figure(small, "jsd", role="bound", n_boot=50), tmp_path / f"b.{suffix}")
        assert digest(a) == digest(b), suffix


def test_pdf_is_vector_with_embedded_truetype(table, tmp_path):
    out = F.save_figure(F.curves_figure(table, "jsd", role="bound"), tmp_path / "c.pdf")
    data = out.read_bytes()
    assert data.startswith(b"%PDF") and b"/FontFile2" in data and b"/Type3" not in data
    assert b"CreationDate" not in data


def test_errors(table, tmp_path):
    with pytest.raises(AttnlensError, match="several roles"):
        F.curves_figure(table, "jsd")
    with pytest.raises(AttnlensError, match="not in the table"):
        F.curves_figure(table, "jsdd", role="bound")
    with pytest.raises(AttnlensError, match="unknown figure format"):
        F.save_figure(F.curves_figure(table, "jsd", role="bound"), tmp_path / "x.jpg")
    with pytest.raises(AttnlensError, match="width"):
        F.figure_width("poster")
    with pytest.raises(AttnlensError, match="loss term"):
        F.losses_figure(table, terms=["negative"])
    with pytest.raises(AttnlensError, match="no loss terms"):
        F.losses_figure(table[table.method == "none"])


def tiny_store(path: Path, method: str, seed: int) -> Path:
    """A 3-step run with two layers (8×8, 4×4) written directly with RunWriter (no model needed)."""
    from attnlens.parse import BindingSet, Parse, Unit
    from attnlens.store import RunWriter

    pieces = ["<|startoftext|>", "a</w>", "red</w>", "apple</w>", "<|endoftext|>"]
    parse = Parse("a red apple", tuple(pieces), (BindingSet((Unit("red", (2,)),), Unit("apple", (3,)), "A"),),
                  (Unit("apple", (3,)),), "manual")
    w = RunWriter(path, {"prompt": "a red apple", "seed": seed, "steps": 3, "method": {"name": method},
                         "parse": parse.to_dict(), "samples": [{"index": 0, "prompt": "a red apple", "seed": seed,
                                                                 "pieces": pieces}],
                         "records": {"sample": {str(s): [0] for s in range(3)}}})
    rng = np.random.default_rng(seed)
    for s in range(3):
        for name, r in (("down_blocks.0.attentions.0.transformer_blocks.0.attn2", 8),
                        ("up_blocks.1.attentions.0.transformer_blocks.0.attn2", 4)):
            logits = rng.normal(size=(5, r, r))
            p = np.exp(logits) / np.exp(logits).sum(axis=0)
            w.write_map(name, s, "sample", 0, 3, [pieces], 900.0 - 300 * s, p[None, None].astype(np.float16))
    w.write_image((rng.random((32, 32, 3)) * 255).astype(np.uint8), 0, 1)
    w.finish("complete")
    return path


def test_maps_figure(tmp_path):
    runs = [tiny_store(tmp_path / m, m, 0) for m in ("none", "syngen")]
    fig = F.maps_figure(runs, tokens=["red", "apple"], steps=[0, 2], width="page", cell_pixels=32)
    assert F.panel_count(fig) == 2 * 2 * 2  # (runs × tokens) rows × steps columns
    out = F.save_figure(fig, tmp_path / "maps.png", dpi=100)
    assert png_size(out)[0] == round(6.75 * 100)
    fig = F.maps_figure(runs[:1], layer="res8", width="column", cell_pixels=16)  # default tokens (2), steps (3)
    assert F.panel_count(fig) == 2 * 3
    with pytest.raises(AttnlensError, match="not an analysed word"):
        F.maps_figure(runs, tokens=["banana"])
    with pytest.raises(AttnlensError, match="step"):
        F.maps_figure(runs, steps=[7])


# ------------------------------------------------------------------------------------------------------ spec
def test_curves_with_many_metrics_wrap_into_rows(table, tmp_path):
    metrics = ["jsd", "jsd", "jsd", "entropy"]
    roles = ["bound", "unbound", "bound", "noun"]
    fig = F.curves_figure(table, metrics, role=roles, width="column")
    assert F.panel_count(fig) == 4
    rows = {round(ax.get_position().y0, 3) for ax in fig.attnlens_panels}
    assert len(rows) == 2  # 2 × 2 at column width, not 4 side by side
    few = F.curves_figure(table, ["jsd", "jsd"], role=["bound", "unbound"], width="column")
    assert tuple(few.get_size_inches()) == (3.25, 2.4)  # up to three metrics: one row, as before


def test_figure_spec_normalises_and_validates():
    s = F.FigureSpec("maps", ["runs/a", Path("runs/b")], tokens="red,apple", steps=(0, 10, 20))
    assert s.sources == ("runs/a", "runs/b") and s.tokens == ("red", "apple") and s.steps == "0,10,20"
    assert s.figure_width == "page" and F.FigureSpec("curves", ("r",)).figure_width == "column"
    assert s == F.FigureSpec("maps", ("runs/a", "runs/b"), tokens=("red", "apple"), steps="0,10,20")
    for bad, message in ((F.FigureSpec("heat", ("r",)), "unknown figure kind"),
                         (F.FigureSpec("layers", ("r",)), "exactly one --metric"),
                         (F.FigureSpec("maps", ("m.parquet",)), "needs run folders"),
                         (F.FigureSpec("layers", ("r",), metrics=("jsd",), baseline="none"), "applies to curves"),
                         (F.FigureSpec("curves", ("r",), width="wide"), "unknown width"),
                         (F.FigureSpec("curves", ()), "no source")):
        with pytest.raises(AttnlensError, match=message):
            bad.check()


def test_figure_spec_cli_args_name_only_what_differs_from_the_defaults():
    s = F.FigureSpec("curves", ("runs/",), metrics=("jsd", "otsu_iou"), role="bound", steps="0:25",
                     baseline="none", partial=True)
    assert s.cli_args("c.pdf") == ["curves", "runs/", "--out", "c.pdf", "--metric", "jsd", "--metric", "otsu_iou",
                                   "--role", "bound", "--steps", "0:25", "--baseline", "none", "--partial"]
    assert F.FigureSpec("losses", ("r",)).cli_args("l.png") == ["losses", "r", "--out", "l.png"]


def test_draw_from_a_table_equals_the_figure_function(table, tmp_path):
    path = tmp_path / "m.parquet"
    table.to_parquet(path)
    spec = F.FigureSpec("curves", (str(path),), metrics=("jsd",), role="bound", steps="0:5")
    a, _ = F.render(spec, tmp_path / "a.png")
    sel = table[table.step.between(0, 4)]
    F.save_figure(F.curves_figure(sel, ["jsd"], role="bound"), tmp_path / "b.png")
    assert a.read_bytes() == (tmp_path / "b.png").read_bytes()


def test_headline_metrics_by_role():
    from attnlens.analysis import HEADLINE

    assert F.headline_metrics() == ([m for m, _ in HEADLINE], [r for _, r in HEADLINE])
    assert F.headline_metrics("modifier") == (["leak_in", "leak_out"], ["modifier", "modifier"])
    with pytest.raises(AttnlensError, match="no headline metric has role"):
        F.headline_metrics("nosuch")


def _diff_table(rows):
    import pandas as pd

    return pd.DataFrame(rows, columns=["metric", "role", "variant", "diff", "diff_low", "diff_high"])


def test_differences_figure_draws_each_group_at_its_difference_and_interval():
    from attnlens.figures import differences_figure

    a = _diff_table([("misbinding", "image", "none", None, None, None),
                     ("misbinding", "image", "m1", -0.2, -0.3, -0.1), ("misbinding", "image", "m2", 0.0, -0.05, 0.05),
                     ("bound", "image", "m1", 0.1, 0.0, 0.2), ("bound", "image", "m2", 0.0, 0.0, 0.0)])
    b = _diff_table([("misbinding", "image", "m2", 0.1, 0.0, 0.2), ("bound", "image", "m2", -0.1, -0.2, 0.0)])
    fig = differences_figure({"A": a, "B": b}, ["misbinding", "bound"])
    assert F.panel_count(fig) == 2
    ax = fig.attnlens_panels[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["m2", "m1"]  # first group on top, baseline not drawn
    (xa, ya), (xb, yb) = (line.get_data() for line in ax.lines[1:3])  # after the zero line: table A, then B
    assert list(xa) == [-0.2, 0.0] and list(xb) == [0.1]
    assert ya[0] > ya[1] and ya[1] > yb[0]  # m1 above m2; A's marker above B's on the shared row
    bars = ax.collections[0].get_segments()  # table A's interval bars
    assert [tuple(np.round(s[:, 0], 6)) for s in bars] == [(-0.3, -0.1), (-0.05, 0.05)]
    only = differences_figure({"A": a}, ["bound"], groups=["m2"])
    assert [t.get_text() for t in only.attnlens_panels[0].get_yticklabels()] == ["m2"]
    with pytest.raises(BadOption, match="no differences for metric"):
        differences_figure({"A": a}, ["nope"])
    with pytest.raises(BadOption, match="no column"):
        differences_figure({"A": a.drop(columns="diff_low")}, ["bound"])
