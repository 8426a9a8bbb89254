"""The CLI's contract: one output sink (``--format text|json``), flags that mean one thing everywhere, bad input as
one line and exit 2, the figure spec shared with the dashboard, typed errors, no global side effects."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

import attnlens
from attnlens import errors as E
from conftest import PROMPT

SLUG = "-".join(PROMPT.split())


@pytest.fixture(scope="module")
def root(tiny_pipe, tmp_path_factory):
    """none and syngen, seeds 1 and 2, 3 steps: enough for paired comparisons and every figure."""
    root = tmp_path_factory.mktemp("fmt-runs")
    for method in ("none", "syngen"):
        for seed in (1, 2):
            attnlens.sample(tiny_pipe, PROMPT, method=method, seed=seed, num_inference_steps=3,
                            out=root / SLUG / f"{method}-seed{seed}")
    return root


def as_json(run_cli, *args) -> object:
    code, out, err = run_cli(*args, "--format", "json")
    assert code == 0, err
    return json.loads(out)  # stdout holds exactly one JSON document


# ------------------------------------------------------------------------------------------------------ --format
def test_info_and_ls_json(root, run_cli):
    run = root / SLUG / "syngen-seed2"
    info = as_json(run_cli, "info", run)
    assert info["prompt"] == PROMPT and info["seed"] == 2 and info["method"] == "syngen"
    assert info["path"] == str(run) and info["layers"]
    code, out, _ = run_cli("info", run, "--json")  # the alias gives the same document
    assert code == 0 and json.loads(out) == info
    rows = as_json(run_cli, "ls", root)
    assert sorted((r["method"], r["seed"]) for r in rows) == [("none", 1), ("none", 2), ("syngen", 1), ("syngen", 2)]
    code, text, _ = run_cli("ls", root)
    assert code == 0 and text.count("complete") == 4 and not text.lstrip().startswith("[")


def test_analyze_json(root, run_cli, tmp_path):
    out = tmp_path / "m.parquet"
    doc = as_json(run_cli, "analyze", root, "--metric", "jsd", "--out", out)
    assert doc["out"] == str(out) and doc["runs"] == 4 and doc["rows"] > 0 and out.is_file()
    assert {r["method"] for r in doc["summary"]} == {"none", "syngen"}


def test_compare_json_matches_csv(root, run_cli, tmp_path):
    doc = as_json(run_cli, "compare", root, "--metric", "jsd", "--role", "bound", "--n-boot", "50")
    assert doc["by"] == "method" and doc["baseline"] == "none" and doc["boot_seed"] == 0
    rows = {r["method"]: r for r in doc["table"]}
    assert set(rows) == {"none", "syngen"} and rows["syngen"]["n"] == 2
    code, csv_text, _ = run_cli("compare", root, "--metric", "jsd", "--role", "bound", "--n-boot", "50",
                                "--format", "csv")
    assert code == 0
    import io

    import pandas as pd

    csv = pd.read_csv(io.StringIO(csv_text)).set_index("method")
    assert csv.loc["syngen", "mean"] == pytest.approx(rows["syngen"]["mean"], rel=1e-5)  # CSV: 6 significant digits
    # --boot-seed is the bootstrap's seed (not a run seed): another seed moves the interval, not the mean
    other = as_json(run_cli, "compare", root, "--metric", "jsd", "--role", "bound", "--n-boot", "50",
                    "--boot-seed", "7")
    o = {r["method"]: r for r in other["table"]}
    assert o["syngen"]["mean"] == rows["syngen"]["mean"] and other["boot_seed"] == 7
    # --out FILE.json writes the same document
    code, _, _ = run_cli("compare", root, "--metric", "jsd", "--role", "bound", "--n-boot", "50",
                         "--out", tmp_path / "c.json")
    assert code == 0 and json.loads((tmp_path / "c.json").read_text())["table"] == doc["table"]


def test_record_json(run_cli, tmp_path):
    doc = as_json(run_cli, "record", "a red cat", "--seed", "3", "--n-steps", "2", "--out", tmp_path)
    assert [(d["prompt"], d["seed"], d["method"]) for d in doc] == [("a red cat", 3, "none")]
    run = attnlens.open_run(doc[0]["path"])
    assert run.manifest["steps"] == 2 and run.recorded_steps() == [0, 1, 2]


def test_record_steps_is_a_selection_and_n_steps_the_count(run_cli, tmp_path):
    code, out, err = run_cli("record", "a red cat", "--n-steps", "3", "--steps", "0,2", "--out", tmp_path)
    assert code == 0, err
    run = attnlens.open_run(out.strip().splitlines()[0])
    assert run.manifest["steps"] == 3 and run.recorded_steps() == [0, 2]
    # a bare number for --steps is a valid selection but probably meant as a count: say so
    code, _, err = run_cli("record", "a red cat", "--n-steps", "2", "--steps", "1", "--out", tmp_path / "b")
    assert code == 0 and "use --n-steps 1" in err


def test_figure_json_and_testbed_render_json(root, run_cli, tmp_path):
    doc = as_json(run_cli, "figure", "losses", root, "--out", tmp_path / "l.png")
    assert doc["kind"] == "losses" and doc["panels"] >= 1 and Path(doc["out"]).is_file()
    doc = as_json(run_cli, "testbed", "render", "--out", tmp_path / "shapes", "--n", "2")
    assert doc == {"out": str(tmp_path / "shapes"), "n": 2, "seed": 0, "split": "train"}
    assert len(list((tmp_path / "shapes").glob("*.png"))) == 2


def test_testbed_module_entry_runs_the_typer_command(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "attnlens.testbed.render", "--out", str(tmp_path), "--n", "1",
                           "--format", "json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["n"] == 1
    proc = subprocess.run([sys.executable, "-m", "attnlens", "testbed", "train", "--help"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "Examples" in proc.stdout and "--unet-steps" in proc.stdout


# ------------------------------------------------------------------------------------------------------ figures
def test_figure_curves_defaults_to_the_headline_metrics(root, run_cli, tmp_path):
    from attnlens.analysis import HEADLINE

    out = tmp_path / "headline.png"
    doc = as_json(run_cli, "figure", "curves", root, "--out", out)
    assert out.is_file() and doc["panels"] == len(HEADLINE)
    doc = as_json(run_cli, "figure", "curves", root, "--role", "modifier", "--out", tmp_path / "mod.png")
    assert doc["panels"] == sum(r == "modifier" for _, r in HEADLINE)


def test_dashboard_export_and_cli_build_the_same_spec(root, run_cli, tmp_path, monkeypatch):
    """The export's FigureSpec is the one `attnlens figure` builds from the command the page shows, and both
    draw it through attnlens.figures.render, to the same bytes."""
    from attnlens import figures as F
    from dashboard import data as D

    seen = []
    real = F.render

    def spy(spec, out, notes=None):
        seen.append(spec)
        return real(spec, out, notes)

    monkeypatch.setattr(F, "render", spy)
    runs = (str(root / SLUG / "none-seed1"), str(root / SLUG / "syngen-seed1"))
    for spec in (D.ExportSpec("maps", "png", runs, tokens=("red",), steps=(2,), layer="res16"),
                 D.ExportSpec("curves", "pdf", runs, metric="jsd", role="bound", width="page"),
                 D.ExportSpec("layers", "png", runs, metric="entropy", role="noun")):
        cmd = D.export_command(spec).split()
        out = tmp_path / spec.file_name
        cmd[cmd.index("--out") + 1] = str(out)
        code, _, err = run_cli(*cmd[1:])
        assert code == 0, err
        assert seen[-1] == spec.figure  # the same spec, field for field
        assert D.export_figure(spec) == out.read_bytes(), spec.kind


def test_figure_spec_round_trips_through_the_cli(root, run_cli, tmp_path, monkeypatch):
    from attnlens import figures as F

    seen = []
    monkeypatch.setattr(F, "render", lambda spec, out, notes=None: (seen.append(spec), (_ for _ in ()).throw(
        E.BadOption("stop"))))
    spec = F.FigureSpec("curves", (str(root),), metrics=("jsd", "otsu_iou"), role=None, by="variant",
                        layer="res16", steps="0:2", baseline="none", tokens=("red",), width="5", partial=True)
    code, _, err = run_cli("figure", *spec.cli_args(tmp_path / "x.pdf"))
    assert code == 2 and seen == [spec], err


# ------------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("args, message", [
    (["ls", "runs", "--bogus"], "No such option: --bogus"),
    (["record", "a cat", "-m", "attnlens-tiny"], "No such option: -m"),  # -m is --metric, never the model
    (["record", "a cat", "--n-steps", "many"], "Invalid value for '--n-steps'"),
    (["info", "x", "--format", "yaml"], "unknown --format 'yaml'"),
    (["info", "x", "--json", "--format", "text2"], "unknown --format 'text2'"),
    (["info", "x", "--json", "--format", "text"], None),  # the default: --json wins (an alias, not a conflict)
    (["compare", "x", "--format", "xml"], "unknown --format 'xml'"),
    (["figure", "curvs", "x", "--out", "f.png"], "did you mean curves"),
    (["figure", "curves", "x", "--out", "f.png", "--width", "wide"], "unknown width 'wide'"),
    (["figure", "layers", "x", "--out", "f.png"], "exactly one --metric"),
    (["figure", "maps", "x", "--out", "f.gif"], "unknown figure format"),
    (["testbed", "render", "--out", "x", "--split", "val"], "unknown --split 'val'"),
    (["testbed", "evaluate"], "nothing to evaluate"),
    (["testbed", "train", "--steps", "3"], "No such option: --steps"),
    (["bench", "sanity", "--n", "0"], "--n must be at least 1"),
])
def test_bad_flags_exit_2_with_one_line(args, message, run_cli):
    if message is None:
        code, out, err = run_cli(*args)
        assert code == 2 and "not an attnlens run" in err  # got past the flags to the missing run
        return
    code, out, err = run_cli(*args)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert message in err and lines[0].startswith("error: ") and "Traceback" not in err
    assert len(lines) == 2 and lines[1].startswith("hint: ") and out == ""


def test_errors_are_caught_by_type(root, tmp_path):
    from attnlens import figures as F

    with pytest.raises(E.BadOption) as exc:
        F.draw(F.FigureSpec("curvs", (str(root),)))
    assert isinstance(exc.value, E.ConfigError) and isinstance(exc.value, ValueError)
    assert isinstance(exc.value, attnlens.AttnlensError) and "curves" in exc.value.hint
    with pytest.raises(E.MetricNotFound) as exc:
        F.draw(F.FigureSpec("curves", (str(root),), metrics=("jsd",), role="nosuchrole"))
    assert isinstance(exc.value, LookupError) and "roles:" in exc.value.hint
    with pytest.raises(E.EmptySelection):
        F.draw(F.FigureSpec("maps", (str(root / SLUG / "none-seed1"),), steps="40:50"))
    with pytest.raises(E.BadOption):
        F.figure_width("wide")
    assert E.NotARunError is E.RunNotFound and issubclass(E.RunExists, E.StoreError)
    assert all(issubclass(getattr(E, n), E.AttnlensError) for n in E.__all__)
    e = E.ModelNotFound("no model", hint="pass a folder")
    assert (e.message, e.hint, str(e)) == ("no model", "pass a folder", "no model (pass a folder)")


# ------------------------------------------------------------------------------------------------------ side effects
def test_importing_attnlens_changes_no_global_state():
    """Importing attnlens (and attnlens.figures) leaves matplotlib's backend, pyplot, the warning filters and the
    libraries' progress bars as they were (third-party packages are imported first: their own import-time filters
    are theirs)."""
    script = textwrap.dedent("""
        import sys, warnings, logging
        import matplotlib, numpy, torch, zarr, pandas, diffusers, transformers, scipy.special, scipy.stats  # noqa: F401
        import skimage.filters, PIL.Image, pyarrow  # noqa: F401
        from diffusers.utils import logging as dlog
        from transformers.utils import logging as tlog
        backend = dict.__getitem__(matplotlib.rcParams, "backend")
        filters = list(warnings.filters)
        bars = (dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled())
        levels = [logging.getLogger(n).level for n in ("diffusers", "transformers")]
        import attnlens, attnlens.figures, attnlens.cli, attnlens.analysis, attnlens.compare  # noqa: F401
        assert dict.__getitem__(matplotlib.rcParams, "backend") is backend, "backend changed"
        assert "matplotlib.pyplot" not in sys.modules, "pyplot imported"
        assert list(warnings.filters) == filters, [f for f in warnings.filters if f not in filters]
        assert (dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled()) == bars == (True, True)
        assert [logging.getLogger(n).level for n in ("diffusers", "transformers")] == levels
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_in_process_cli_restores_warning_filters_and_environment(root, run_cli, monkeypatch):
    import os

    monkeypatch.delenv("DIFFUSERS_VERBOSITY", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        before = list(warnings.filters)
        code, _, err = run_cli("ls", root)
        assert code == 0, err
        assert list(warnings.filters) == before  # no resetwarnings(), no filters left behind
    assert "DIFFUSERS_VERBOSITY" not in os.environ


def test_the_cli_answers_help_without_loading_torch():
    """``attnlens --help`` stays fast: neither the package root nor the command modules import torch."""
    import subprocess
    import sys

    code = ("import sys, attnlens.cli; attnlens.cli._register(); "
            "print(sorted(m for m in ('torch', 'diffusers', 'zarr') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    from attnlens.cli import record as record_cmd
    from attnlens.models import DEFAULT_MODEL

    assert record_cmd.DEFAULT_MODEL == DEFAULT_MODEL
