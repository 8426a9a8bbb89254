"""The dashboard (``attnlens dashboard``): every view and interaction through ``streamlit.testing`` (AppTest) on
real tiny recorded runs, the pure helpers (paths, URL state, plots, data), the export (byte-identical to
``attnlens figure``) and the CLI command."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dashboard import data as D  # noqa: E402
from dashboard import fixtures as FX  # noqa: E402
from dashboard import plots as P  # noqa: E402
from dashboard.paths import UnsafePath, resolve_under  # noqa: E402
from dashboard.state import ViewState, query_equal  # noqa: E402

APP = REPO / "dashboard" / "app.py"
PROMPT = FX.PROMPT
SLUG = "-".join(PROMPT.split())


# ------------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def recorded(tiny_pipe, tmp_path_factory):
    """none + syngen for one (prompt, seed 1), 2 steps, every head recorded (real tiny recordings)."""
    return FX.record_root(tmp_path_factory.getbasetemp() / "dashboard-recorded", tiny_pipe,
                          methods=("none", "syngen"), seed=1, steps=2, heads="all")


@pytest.fixture(scope="module")
def root(recorded, tmp_path_factory):
    """The recorded runs plus clones under seed 2 (two paired (prompt, seed) units)."""
    return FX.make_test_root(tmp_path_factory.mktemp("dash-root"), recorded, seeds=(1, 2))


@pytest.fixture(scope="module")
def damaged_root(recorded, tmp_path_factory):
    """As ``root`` plus an incomplete run, a run with unreadable arrays and a run with a truncated manifest."""
    return FX.make_test_root(tmp_path_factory.mktemp("dash-damaged"), recorded, seeds=(1,), damaged=True)


def app(monkeypatch, root: Path, **query):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("ATTNLENS_DASHBOARD_ROOT", str(root))
    at = AppTest.from_file(str(APP), default_timeout=120)
    for k, v in query.items():
        at.query_params[k] = v
    return at.run()


def images(at) -> list:
    """The final images (captioned pictures; the colour bar has no caption)."""
    return [im for im in at.get("image") if any(im.captions)]


def player(at) -> dict:
    """The arguments of the Compare view's step player (the custom component: AppTest cannot run its JavaScript,
    so the test reads what the page sends it)."""
    found = [c for c in at.get("component_instance") if c.proto.component_name.endswith("step_player")]
    assert len(found) == 1, [c.proto.component_name for c in at.get("component_instance")]
    return json.loads(found[0].proto.json_args)


def cells(at) -> list[list]:
    """The map columns of the step player that have maps: per run, per step, a data-URI image per token (None:
    the step is not recorded)."""
    comps = [c for c in at.get("component_instance") if c.proto.component_name.endswith("step_player")]
    if not comps:
        return []
    return [c["frames"] for c in player(at)["columns"] if c is not None and c["frames"] is not None]


def report_step(at, step: int, seq: int = 1):
    """What the step player sends after the slider moved (a debounced ``setComponentValue`` of ``{step, seq}``).
    AppTest has no setter for a custom component's value: the widget state is added to the next run by hand."""
    from streamlit.proto.WidgetStates_pb2 import WidgetState

    comp = next(c for c in at.get("component_instance") if c.proto.component_name.endswith("step_player"))
    states = at._tree.get_widget_states()
    states.widgets.append(WidgetState(id=comp.proto.id, json_value=json.dumps({"step": step, "seq": seq})))
    return at._run(states)


def plotly_charts(at) -> list:
    return [e for e in _walk(at.main) if getattr(e, "type", "") == "plotly_chart"]


def _walk(node):
    yield node
    ch = getattr(node, "children", None)
    for c in (ch.values() if isinstance(ch, dict) else ch or []):
        yield from _walk(c)


def markdown_text(at) -> str:
    return "\n".join(str(m.value) for m in at.markdown)


def no_failures(at) -> None:
    assert not at.exception, [e.value for e in at.exception]


def by_label(elements, label: str):
    hits = [e for e in elements if e.label == label]
    assert hits, f"no widget labelled {label!r}: {[e.label for e in elements]}"
    return hits[0]


def column_titles(at) -> list[str]:
    return [str(m.value).strip("*") for m in at.main.markdown if str(m.value).startswith("**") and
            str(m.value).count("**") == 2 and len(str(m.value)) < 60]


# ------------------------------------------------------------------------------------------------------ pure parts
def test_resolve_under_refuses_paths_outside_the_root(tmp_path):
    (tmp_path / "root" / "a" / "run").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "root" / "link").symlink_to(tmp_path / "outside")
    root = tmp_path / "root"
    assert resolve_under(root, "a/run") == (root / "a" / "run").resolve()
    assert resolve_under(root, "a/../a/run") == (root / "a" / "run").resolve()
    for bad in ("../outside", "a/../../outside", "/etc/passwd", "~root", "", "  ", "link", "link/x", "C:\\x", "a\x00b"):
        with pytest.raises(UnsafePath):
            resolve_under(root, bad)


def test_view_state_round_trips_through_the_query():
    s = ViewState(view="metrics", prompt="a red crown", seed=3, methods=["none", "syngen"], tokens=["red", "#2"],
                  layer="res16", phase="guidance", step=7, metric="leak_in", role="modifier", f_status=["running"])
    q = s.to_query()
    assert q["seed"] == "3" and q["methods"] == ["none", "syngen"] and "head" not in q  # defaults stay out
    assert ViewState.from_query(q) == s
    assert query_equal({"a": ["x"]}, {"a": "x"}) and not query_equal({"a": "x"}, {"a": "y"})
    junk = ViewState.from_query({"seed": "x", "step": "1.5", "view": "nope", "it": "-3", "unknown": "1",
                                 "scale": ["each"], "tokens": ["", "red"]})
    assert junk.seed is None and junk.step is None and junk.view == "compare" and junk.it == 0
    assert junk.scale == "each" and junk.tokens == ["red"]


def test_map_cells_follow_the_figure_colouring():
    import matplotlib

    m = P.scaled_map(np.arange(16.0).reshape(4, 4))
    assert abs(np.nanmean(m) - 1.0) < 1e-12  # p·h·w: mean 1
    rgba = P.heat_rgba(m, float(np.nanmin(m)), float(np.nanmax(m)))
    assert rgba.shape == (4, 4, 4) and rgba.dtype == np.uint8
    top = (np.array(matplotlib.colormaps["inferno"](1.0)[:3]) * 255).round()
    assert np.abs(rgba[-1, -1, :3].astype(float) - top).max() <= 1 and rgba[-1, -1, 3] == round(0.85 * 255)
    assert rgba[0, 0, 3] == 0  # the minimum: transparent (opacity grows with the value)
    nan = P.heat_rgba(np.full((2, 2), np.nan), 0.0, 1.0)
    assert (nan[..., 3] == 0).all()
    under = P.under_image(np.zeros((64, 64, 3), dtype=np.uint8))
    assert under.shape == (P.RENDER, P.RENDER) and int(under[0, 0]) == round(0.25 * 255)
    assert P.data_uri(P.png(rgba), "image/png").startswith("data:image/png;base64,iVBOR")


def _png_alpha(uri: str) -> np.ndarray:
    import base64
    import io

    from PIL import Image

    assert uri.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGBA"))[..., 3]


def test_step_frames_cover_every_step_with_one_scale():
    """The step player's payload: one image per step per token per run, None for a step a run did not record and
    for a map without mass, the shared colour scale taken over every step (and every run)."""
    ramp = P.scaled_map(np.arange(1.0, 17.0).reshape(4, 4))  # max ≈ 1.88
    flat = P.scaled_map(np.ones((4, 4)))  # 1 everywhere
    peak = P.scaled_map(np.eye(4))  # max 4: the largest value of all, at step 2 only
    nomass = P.scaled_map(np.zeros((4, 4)))  # NaN
    maps = {"a": {0: [ramp, flat], 1: [flat, ramp], 2: [peak, nomass]},
            "b": {0: [flat, flat]}}  # an incomplete run: step 0 only
    frames, (lo, hi) = P.step_frames(maps, [0, 1, 2], "shared")
    assert set(frames) == {"a", "b"}
    assert [len(f) for f in frames["a"]] == [2, 2, 2]  # a PNG per token at every step
    assert frames["b"][1:] == [None, None] and len(frames["b"][0]) == 2  # missing steps: None (dimmed cells)
    assert frames["a"][2][1] is None  # no mass at that step: no image
    assert all(u.startswith("data:image/png;base64,") for f in frames["a"] for u in f if u)
    assert (lo, hi) == P.value_range([ramp, flat, peak])  # over every step of every run
    assert hi == pytest.approx(4.0)
    # the ramp's maximum (1.88) is far below the shared maximum (4, at step 2): not fully opaque at step 0
    assert _png_alpha(frames["a"][0][0]).max() < round(0.85 * 255) * 0.5
    assert _png_alpha(frames["a"][2][0]).max() == round(0.85 * 255)  # the peak is
    # per map: each map on its own range, so the ramp's maximum is fully opaque at every step
    each, _ = P.step_frames(maps, [0, 1, 2], "each")
    assert _png_alpha(each["a"][0][0]).max() == round(0.85 * 255)
    assert _png_alpha(each["a"][1][1]).max() == round(0.85 * 255)
    # the shared scale makes the same map the same picture at every step; a map with its own scale too
    assert frames["a"][0][1] == frames["a"][1][0] == frames["b"][0][0]
    empty, rng = P.step_frames({}, [0, 1], "shared")
    assert empty == {} and rng == (0.0, 1.0)


def test_step_player_component_files():
    """The component is plain HTML/JS next to the page (no build step): index.html speaks Streamlit's component
    protocol and loads the player (player.js, player.css), which the notebook widget shares."""
    from dashboard.ui import PLAYER_DIR

    index = PLAYER_DIR / "index.html"
    assert PLAYER_DIR.parent == REPO / "dashboard" and index.is_file()
    text = index.read_text()
    for needle in ('"streamlit:componentReady"', "apiVersion: 1", '"streamlit:render"', '"streamlit:setFrameHeight"',
                   '"streamlit:setComponentValue"', 'dataType: "json"', '<script src="player.js">',
                   'href="player.css"'):
        assert needle in text, needle
    assert 'type = "range"' in (PLAYER_DIR / "player.js").read_text()  # the step slider


def test_scan_marks_incomplete_and_corrupted_runs(damaged_root):
    entries = D.scan_root(damaged_root)
    status = {e.rel: e.status for e in entries}
    assert status[f"{SLUG}/syngen-seed3"] == "running"
    assert status["broken/none-seed9"] == "corrupted"
    broken = D.entry_by_rel(entries, "broken/none-seed9")
    assert "corrupted" in broken.error
    assert D.units(entries)[PROMPT] == [1, 3]
    labels = D.column_labels(D.unit_runs(entries, PROMPT, 1))
    assert sorted(labels.values()) == ["none", "syngen", "syngen-broken"]
    assert D.filter_entries(entries, status=["running"])[0].rel == f"{SLUG}/syngen-seed3"


def test_leakage_matrix_outside_column_is_the_analysis_leak_out(root):
    from attnlens.analysis import analyze_runs

    run = D.open_run(root / SLUG / "syngen-seed1")
    parse = D.parse_of(run)
    maps = D.read_maps(run, "all", 1)
    mat, own = D.leakage_matrix(maps, parse)
    assert list(mat.index) == ["red", "golden"] and list(mat.columns) == ["crown", "strawberry", "outside"]
    assert own == {"red": "crown", "golden": "strawberry"}
    df = analyze_runs([run.path], metrics=["leak_out"], layers=["all"], steps=[1], phases=["sample"])
    for tok in ("red", "golden"):
        expected = df[(df.token == tok)]["value"].iloc[0]
        assert mat.loc[tok, "outside"] == pytest.approx(expected, rel=1e-9, abs=1e-12)


# ------------------------------------------------------------------------------------------------------ AppTest
def test_empty_root(monkeypatch, tmp_path):
    at = app(monkeypatch, tmp_path)
    no_failures(at)
    assert not at.error
    assert any("No runs under" in str(i.value) for i in at.info)
    assert images(at) == []


def test_compare_view_shows_images_maps_and_parse(monkeypatch, root):
    at = app(monkeypatch, root)
    no_failures(at)
    assert not at.error
    assert column_titles(at)[:2] == ["none", "syngen"]
    assert len(images(at)) == 2 and "final image" in images(at)[0].captions[0]
    args = player(at)  # the step player: the maps of every step, moved in the browser
    assert args["steps"] == [0, 1, 2] and args["step"] == 2 and args["ncols"] == 4
    assert args["tokens"] == ["red", "crown", "golden", "strawberry"] and args["phase"] == "sample"
    assert [c["label"] for c in args["columns"]] == ["none", "syngen"]
    assert all(c["under"].startswith("data:image/jpeg;base64,") for c in args["columns"])  # the grey image per run
    assert all(len(c["t"]) == 3 and all(isinstance(t, int) for t in c["t"]) for c in args["columns"])
    cols = cells(at)  # per column, per step: a PNG per token
    assert len(cols) == 2 and all(len(f) == 3 and all(len(x) == 4 for x in f) for f in cols)
    assert all(u.startswith("data:image/png;base64,") for f in cols for x in f for u in x)
    assert cols[0][0] != cols[0][2]  # the steps differ
    assert at.query_params["prompt"] == PROMPT and at.query_params["seed"] == "1" and at.query_params["step"] == "2"
    assert "red [2] → crown [3]" in markdown_text(at)  # the parse (sets and positions)
    assert by_label(at.multiselect, "Tokens").value == ["red", "crown", "golden", "strawberry"]
    assert any("Shared colour scale" in str(c.value) for c in at.caption)


def test_selecting_a_method(monkeypatch, root):
    at = app(monkeypatch, root)
    methods = by_label(at.button_group, "Methods")
    assert set(methods.options if hasattr(methods, "options") else ["none", "syngen"]) >= {"none", "syngen"}
    methods.set_value(["syngen"]).run()
    no_failures(at)
    assert "none" not in column_titles(at) and "syngen" in column_titles(at)
    assert at.query_params["methods"] == "syngen"


def test_the_step_player_reports_the_step(monkeypatch, root):
    at = app(monkeypatch, root)
    before, finals = player(at), [im.value for im in images(at)]
    assert before["ack"] == 0 and not at.select_slider  # no Streamlit slider in Compare: the player is the slider
    report_step(at, 0, seq=1)  # the player moved to step 0 in the browser and reports it
    no_failures(at)
    assert at.query_params["step"] == "0"
    after = player(at)
    assert after["step"] == 0 and after["ack"] == 1  # the echo the player recognises (no visual reset)
    assert after["frames_id"] == before["frames_id"] and after["columns"] == before["columns"]  # nothing rebuilt
    assert [im.value for im in images(at)] == finals
    by_label(at.toggle, "Export figure").set_value(True).run()  # the export panel follows the step
    assert any("--steps 0" in str(c.value) for c in at.code)
    report_step(at, 99, seq=2)  # a step that is not recorded falls back to the last one
    no_failures(at)
    assert at.query_params["step"] == "2" and player(at)["step"] == 2 and player(at)["ack"] == 2
    by_label(at.button_group, "View").set_value("metrics").run()  # the Metrics view keeps the step
    no_failures(at)
    assert player(at)["step"] == 2 and not at.select_slider
    report_step(at, 1, seq=3)  # moved in the Metrics view's player (the leakage tables)
    no_failures(at)
    assert at.query_params["step"] == "1"
    by_label(at.button_group, "View").set_value("compare").run()
    no_failures(at)
    assert player(at)["step"] == 1 and at.query_params["step"] == "1"  # and the player starts where Metrics left


def test_switching_layers_phase_and_heads(monkeypatch, root):
    at = app(monkeypatch, root, step="1")
    layer = by_label(at.selectbox, "Layer / resolution")
    shown = " | ".join(layer.options)  # labels: "res16 (mean of 3 layers at 16×16)", "up2.0 · 16×16", ...
    assert layer.value == "all" and "res16 (mean of" in shown and "res4 (mean of" in shown
    assert "up2.0 · 16×16" in shown
    first = player(at)
    assert first["step"] == 1
    layer.set_value("res16").run()
    no_failures(at)
    assert at.query_params["layer"] == "res16" and cells(at) != [c["frames"] for c in first["columns"]]
    assert player(at)["frames_id"] != first["frames_id"]  # new maps: the player rebuilds
    name = "up_blocks.2.attentions.0.transformer_blocks.0.attn2"
    by_label(at.selectbox, "Layer / resolution").set_value(name).run()
    assert at.query_params["layer"] == name
    head = by_label(at.selectbox, "Head")
    assert not head.disabled and "0" in head.options  # heads were recorded (heads="all")
    head.set_value("0").run()
    no_failures(at)
    assert at.query_params["head"] == "0"
    assert any("head 0" in str(c.value) for c in at.caption)
    by_label(at.selectbox, "Phase").set_value("guidance").run()
    no_failures(at)
    captions = [str(c.value) for c in at.caption]
    assert any("no 'guidance' maps" in c for c in captions)  # the none run has no guidance phase; syngen has


def test_tokens_pieces_and_scale(monkeypatch, root):
    at = app(monkeypatch, root, tokens=["golden", "#0"], scale="each")
    no_failures(at)
    assert by_label(at.multiselect, "Tokens").value == ["golden", "#0"]
    assert by_label(at.radio, "Colour scale").value == "each"
    assert at.query_params["tokens"] == ["golden", "#0"]
    assert player(at)["tokens"][0] == "golden" and player(at)["tokens"][1].startswith("#0")
    assert all(len(x) == 2 for f in cells(at) for x in f)


def test_view_state_from_the_url(monkeypatch, root):
    at = app(monkeypatch, root, seed="2", step="1", layer="res8", methods="none", view="compare")
    no_failures(at)
    assert by_label(at.selectbox, "Seed").value == 2
    assert player(at)["step"] == 1  # the player opens at the URL's step
    assert by_label(at.selectbox, "Layer / resolution").value == "res8"
    assert column_titles(at) == ["none"]
    stale = app(monkeypatch, root, seed="99", step="40", layer="nope", prompt="not recorded")
    no_failures(stale)  # values the root does not hold fall back to the defaults
    assert by_label(stale.selectbox, "Seed").value == 1 and stale.query_params["step"] == "2"
    assert player(stale)["step"] == 2


def test_runs_view_and_url_paths_stay_inside_the_root(monkeypatch, root):
    at = app(monkeypatch, root, view="runs", run=f"{SLUG}/syngen-seed2")
    no_failures(at)
    assert by_label(at.selectbox, "Run details").value == f"{SLUG}/syngen-seed2"
    assert any('"syngen"' in str(j.value) or "syngen" in str(j.value) for j in at.json)
    for bad in ("../../etc", "/etc/passwd", f"{SLUG}/../../.."):
        at = app(monkeypatch, root, view="runs", run=bad)
        no_failures(at)
        assert any("Refused" in str(w.value) for w in at.warning), bad
        assert "etc" not in json.dumps(at.query_params.get("run", ""))
    at = app(monkeypatch, root, view="runs", run=f"{SLUG}/none-seed1")
    next(b for b in at.button if b.label.startswith("Compare the methods")).click().run()
    no_failures(at)
    assert at.query_params.get("view") is None and at.query_params["seed"] == "1" and cells(at)


def test_incomplete_and_corrupted_runs(monkeypatch, damaged_root):
    at = app(monkeypatch, damaged_root)
    no_failures(at)
    errors = [str(e.value) for e in at.error]
    assert any("broken/none-seed9" in e for e in errors)  # the unreadable manifest: a card in the sidebar
    assert any("syngen-broken-seed1" in e and "cannot read" in e for e in errors)  # unreadable arrays: its column
    assert column_titles(at) == ["none", "syngen", "syngen-broken"]
    assert len(images(at)) == 2 and len(cells(at)) == 2  # the two good runs still show their image and maps
    assert player(at)["columns"][2] is None  # the broken run: its error card, no maps
    by_label(at.selectbox, "Seed").set_value(3).run()
    no_failures(at)
    assert not [e for e in at.error if "syngen-seed3" in str(e.value)]
    assert "incomplete · running" in markdown_text(at)  # the incomplete run is marked
    args = player(at)
    assert args["steps"] == [0, 1, 2]
    none, syngen = cells(at)  # the incomplete run recorded step 0 only: the later steps are dimmed cells
    assert all(f is not None for f in none) and syngen[0] is not None and syngen[1:] == [None, None]
    assert any("no 'sample' maps at steps 1, 2" in str(c.value) for c in at.caption)
    report_step(at, 2)
    no_failures(at)
    assert at.query_params["step"] == "2" and player(at)["step"] == 2


def test_metrics_view(monkeypatch, root):
    at = app(monkeypatch, root, view="metrics", step="1")
    no_failures(at)
    assert not at.error
    assert by_label(at.selectbox, "Metric").value == "jsd" and by_label(at.selectbox, "Role").value == "bound"
    assert len(plotly_charts(at)) == 3  # curves, layer × step, loss terms
    leak = player(at)  # the leakage matrices of every step, moved in the browser
    assert leak["step"] == 1 and leak["steps"] == [0, 1, 2] and not at.select_slider
    labels = " | ".join(c["label"] for c in leak["columns"])
    assert len(leak["columns"]) == 2 and "none" in labels and "syngen" in labels
    for col in leak["columns"]:
        assert len(col["tables"]) == 3
        t = col["tables"][1]
        assert t["rows"] == ["red", "golden"] and t["cols"][-1] == "outside" and t["own"]["red"] == t["cols"][0]
        shares = np.array(t["z"], dtype=float)
        assert np.all((shares >= 0) & (shares <= 1 + 1e-6))  # shares of attention
    by_label(at.selectbox, "Metric").set_value("entropy").run()
    no_failures(at)
    assert by_label(at.selectbox, "Role").options == ["modifier", "noun"]
    assert player(at)["frames_id"] == leak["frames_id"]  # the leakage does not depend on the metric: not rebuilt
    report_step(at, 0, seq=1)
    no_failures(at)
    assert at.query_params["metric"] == "entropy" and at.query_params["step"] == "0"
    assert len(plotly_charts(at)) == 3 and player(at)["step"] == 0 and player(at)["ack"] == 1


def test_across_prompts_view(monkeypatch, root):
    at = app(monkeypatch, root, view="across", metric="jsd", role="unbound")
    no_failures(at)
    assert not at.error
    table = at.dataframe[0].value
    assert list(table.columns) == ["method", "jsd [unbound]"]
    assert list(table["method"])[:2] == ["none (baseline)", "syngen"] and "Δ syngen − none" in list(table["method"])
    assert any("n = 2 (prompt, seed) units" in str(c.value) for c in at.caption)
    assert [b.label for b in at.get("download_button")] == ["CSV", "Markdown", "LaTeX"]


def test_export_panel_offers_the_cli_figure(monkeypatch, root):
    at = app(monkeypatch, root, step="1", tokens=["red", "#0"])
    no_failures(at)
    assert not at.get("download_button")  # the export panel opens on demand
    by_label(at.toggle, "Export figure").set_value(True).run()
    no_failures(at)
    code = [str(c.value) for c in at.code]
    assert any(c.startswith("attnlens figure maps") and "--steps 1" in c and "--token red" in c and "#0" not in c
               for c in code)
    assert [b.label for b in at.get("download_button")] == ["Export figure (PDF)"]


# ------------------------------------------------------------------------------------------------------ export
def test_exported_figures_are_the_cli_files(root, tmp_path, capsys):
    from attnlens.cli import main

    runs = (str(root / SLUG / "none-seed1"), str(root / SLUG / "syngen-seed1"))
    specs = [
        D.ExportSpec("maps", "pdf", runs, tokens=("red", "crown"), steps=(1,), layer="res16"),
        D.ExportSpec("curves", "png", runs, metric="jsd", role="bound"),
        D.ExportSpec("losses", "pdf", runs),
    ]
    for spec in specs:
        got = D.export_figure(spec)
        cmd = D.export_command(spec).split()
        out = tmp_path / spec.file_name
        i = cmd.index("--out")
        cmd[i + 1] = str(out)
        assert main(cmd[1:]) == 0, capsys.readouterr().err
        assert got == out.read_bytes(), spec.kind  # byte for byte what `attnlens figure` writes
        assert got[:4] in (b"%PDF", b"\x89PNG")


# ------------------------------------------------------------------------------------------------------ CLI
def test_cli_dashboard_command(root, capsys, monkeypatch):
    from attnlens.cli import main

    assert main(["dashboard", str(root), "--print-command"]) == 0
    out = capsys.readouterr().out
    assert "--server.address 127.0.0.1" in out and "--server.headless true" in out
    assert "--browser.gatherUsageStats false" in out and f"-- --root {root.resolve()}" in out
    assert main(["dashboard", str(root), "--host", "0.0.0.0", "--port", "9001", "--print-command"]) == 0
    out = capsys.readouterr().out
    assert "--server.address 0.0.0.0" in out and "--server.port 9001" in out
    assert main(["dashboard", str(root / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    monkeypatch.setenv("ATTNLENS_DASHBOARD_APP", str(root / "nope.py"))
    assert main(["dashboard", str(root), "--print-command"]) == 0  # falls back to the checkout's dashboard/app.py


def test_the_colour_bar_has_tick_labels():
    from dashboard import plots as P

    bare = P.colorbar(0.1, 3.7, ticks=False)
    bar = P.colorbar(0.1, 3.7)
    assert bare.shape == (12, 256, 3) and bar.shape[0] > bare.shape[0] + 10  # room for the labels below the bar
    below = bar[-14:].astype(int).sum(axis=-1)  # the label strip: dark text on white
    assert (below < 300).sum() > 50 and (below > 700).mean() > 0.5
    assert np.array_equal(P.colorbar(1.0, 1.0), P.colorbar(1.0, 1.0, ticks=False))  # no range: no ticks to draw


def test_query_problems_name_what_the_url_loses():
    from dashboard.state import query_problems

    problems = query_problems({"seed": "x", "step": "-2", "view": "nope", "colour": "red", "layer": "res16",
                               "tokens": ["red", "crown"]})
    assert len(problems) == 4
    assert any("seed=x" in p and "whole number" in p for p in problems)
    assert any("step=-2" in p and "negative" in p for p in problems)
    assert any("view=nope" in p for p in problems) and any("colour" in p for p in problems)
    assert query_problems({"seed": "1", "view": "runs", "tokens": ["a"]}) == []
