"""The CLI end to end, the store's safety guarantees, and every bad input of the record issue."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import attnlens
from conftest import PROMPT


def cli(*args: str) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-m", "attnlens", *args], capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            h.update(f.relative_to(folder).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def recorded_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    code, out, err = cli("record", PROMPT, "--seed", "1", "--seed", "2", "--n-steps", "3", "--model", "attnlens-tiny",
                          "--out", str(root))
    assert code == 0, err
    return root


def test_record_ls_info_end_to_end(recorded_root, run_cli):
    runs = sorted(attnlens.find_runs(recorded_root))
    assert [p.name for p in runs] == ["none-seed1", "none-seed2"]
    code, out, _ = run_cli("ls", str(recorded_root))
    assert code == 0 and out.count("complete") == 2 and "seed=1" in out
    code, out, _ = run_cli("info", str(runs[0]), "--json")
    info = json.loads(out)
    assert info["status"] == "complete" and info["prompt"] == PROMPT and info["seed"] == 1
    assert len(info["layers"]) == 10 and info["tokens"][0][3] == "crown</w>"
    assert info["phases"]["sample"]["steps"] == 4
    code, out, _ = run_cli("info", str(runs[0]))
    assert "16x16" in out and "crown</w>" in out
    m = attnlens.open_run(runs[0]).manifest
    for key in ("schema_version", "attnlens_version", "prompt", "seed", "steps", "guidance_scale", "method", "model",
                "dtype", "device", "versions", "timings", "status", "height", "width"):
        assert key in m, key
    assert m["model"]["scheduler"]["class"] == "PNDMScheduler" and m["versions"]["torch"]
    assert attnlens.open_run(runs[0]).image().size == (m["width"], m["height"])


def test_store_opens_with_plain_zarr_and_xarray_without_attnlens(recorded_root):
    run = next(attnlens.find_runs(recorded_root))
    script = textwrap.dedent(f"""
        import sys, json
        sys.modules["attnlens"] = None          # importing attnlens would fail
        import zarr, xarray as xr, numpy as np
        import warnings
        # plain zarr lists the whole hierarchy without meeting a file that is not a zarr node
        warnings.filterwarnings("error", message=".*not recognized as a component.*")
        g = zarr.open_group({str(run / "data.zarr")!r}, mode="r")
        assert {{"attention", "latents"}} <= set(g.group_keys()), list(g.group_keys())
        assert all(hasattr(node, "attrs") for _, node in g.members(max_depth=None))
        layer = sorted(g["attention"].group_keys())[0]
        a = g[f"attention/{{layer}}/maps"]
        assert a.metadata.dimension_names == ("step", "phase", "iteration", "sample", "head", "token", "y", "x")
        ds = xr.open_zarr({str(run / "data.zarr")!r}, group=f"attention/{{layer}}", consolidated=False)
        m = ds.maps.sel(phase="sample", iteration=0).isel(sample=0, head=0)
        assert np.isfinite(m.values).all() and "timestep" in ds.coords
        assert json.load(open({str(run)!r} + "/manifest.json"))["status"] == "complete"
        assert g.attrs["attnlens"]["prompt"]
        print("ok", m.shape)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")


def test_complete_run_refused_without_overwrite(recorded_root, run_cli):
    target = recorded_root / "a-red-crown-and-a-golden-strawberry" / "none-seed1"
    before = digest(target)
    code, _, err = run_cli("record", PROMPT, "--seed", "1", "--n-steps", "2", "--out", str(recorded_root))
    assert code == 2 and "already holds a complete run" in err and "--overwrite" in err
    assert "Traceback" not in err and digest(target) == before


def run_files(run: Path) -> dict[str, bytes]:
    """Every file of a run by relative path, except the manifest and the root attributes (they hold timings)."""
    return {f.relative_to(run).as_posix(): f.read_bytes() for f in sorted(run.rglob("*"))
            if f.is_file() and f.name != "manifest.json" and f.relative_to(run).as_posix() != "data.zarr/zarr.json"}


def test_overwrite_replaces(tmp_path, run_cli):
    """--overwrite leaves exactly what a fresh record of the new command writes: new manifest, new arrays, and no
    file of the replaced run (here: the layers the new command does not record)."""
    old_args = ("--n-steps", "3")
    new_args = ("--n-steps", "2", "--guidance-scale", "5", "--layers", "8")
    code, _, err = run_cli("record", "a cat", *old_args, "--out", str(tmp_path / "replaced"))
    assert code == 0, err
    target = tmp_path / "replaced" / "a-cat" / "none-seed0"
    old = attnlens.open_run(target)
    old_manifest, old_layers, old_latents, old_files = old.manifest, old.layers, old.latents(), run_files(target)
    code, _, err = run_cli("record", "a cat", *new_args, "--overwrite", "--out", str(tmp_path / "replaced"))
    assert code == 0, err
    code, _, err = run_cli("record", "a cat", *new_args, "--out", str(tmp_path / "fresh"))
    assert code == 0, err
    new, fresh = attnlens.open_run(target), attnlens.open_run(tmp_path / "fresh" / "a-cat" / "none-seed0")
    assert new.complete
    assert (old_manifest["steps"], old_manifest["guidance_scale"]) == (3, 7.5)
    assert (new.manifest["steps"], new.manifest["guidance_scale"]) == (2, 5.0)
    assert set(new.layers) == set(fresh.layers) and set(new.layers) < set(old_layers)
    # the replacement's arrays differ from the old run's, and it holds exactly the files of a fresh record
    assert new.latents().shape[0] < old_latents.shape[0]
    assert not np.array_equal(old_latents[1], new.latents()[1])
    stale = set(old_files) - set(run_files(fresh.path))
    assert stale, "the two commands must write different files, else 'no stale file' is not tested"
    new_files, fresh_files = run_files(new.path), run_files(fresh.path)
    assert sorted(new_files.keys() - fresh_files.keys()) == [] and new_files.keys() == fresh_files.keys()
    assert [name for name in new_files if new_files[name] != fresh_files[name]] == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["record", "", "--n-steps", "2"], "empty prompt"),
        (["record", "a cat", "--model", "/no/such/model"], "not found"),
        (["record", "a cat", "--model", "CompVis/stable-diffusion-v1-4"], "not available"),
        (["record", "a cat", "--heads", "some"], "unknown heads option"),
        (["record", "a cat", "--tokens", "few"], "unknown tokens option"),
        (["record", "a cat", "--method", "synjen"], "did you mean syngen"),
        (["record", "a cat", "--steps", "a:b"], "cannot read step selection"),
        (["record", "a cat", "--n-steps", "0"], "at least 1"),
        (["record", "a cat", "--bogus"], "No such option"),
        (["info", "/no/such/run"], "not an attnlens run"),
        (["ls", "/no/such/root"], "does not exist"),
    ],
)
def test_bad_input_one_line_error(args, message, tmp_path, run_cli):
    code, out, err = run_cli(*args, "--out", str(tmp_path)) if args[0] == "record" else run_cli(*args)
    assert code != 0
    assert message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2


def test_long_prompt_truncated_with_warning_naming_dropped_words(tmp_path, run_cli):
    prompt = " ".join(["a red cat"] * 25) + " beside an elephant"
    code, _, err = run_cli("record", prompt, "--n-steps", "1", "--out", str(tmp_path))
    assert code == 0, err
    assert "dropped" in err and "beside an elephant" in err
    m = attnlens.open_run(next(attnlens.find_runs(tmp_path))).manifest
    assert "beside an elephant" in m["prompt_warnings"][0]
    assert len(m["samples"][0]["pieces"]) == 77


def test_output_path_is_a_file_or_unwritable(tmp_path, run_cli):
    f = tmp_path / "file"
    f.write_text("x")
    code, _, err = run_cli("record", "a cat", "--n-steps", "1", "--out", str(f))
    assert code == 2 and "Traceback" not in err
    code, _, err = run_cli("record", "a cat", "--n-steps", "1", "--out", "/sys/attnlens-readonly")
    assert code == 2 and "cannot write" in err and "Traceback" not in err


def test_disk_full_marks_run_failed_and_keeps_other_runs(tiny_pipe, tmp_path, monkeypatch, run_cli):
    """A write error (ENOSPC) on the writer thread: one-line error, run marked failed, other runs untouched."""
    good = attnlens.sample(tiny_pipe, "a cat", seed=0, num_inference_steps=2, out=tmp_path / "cat" / "none-seed0")
    before = digest(good.path)
    calls = {"n": 0}
    original = attnlens.store.RunWriter.write_map

    def failing(self, *args):
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, *args)

    monkeypatch.setattr(attnlens.store.RunWriter, "write_map", failing)
    code, _, err = run_cli("record", "a dog", "--n-steps", "3", "--out", str(tmp_path))
    assert code == 2 and "No space left on device" in err and "Traceback" not in err
    failed = attnlens.open_run(tmp_path / "a-dog" / "none-seed0")
    assert failed.status == "failed" and "No space" in failed.manifest["error"]
    assert digest(good.path) == before


def test_sigkill_leaves_incomplete_run(tmp_path, run_cli):
    """A run killed at any moment is never read as complete."""
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "attnlens", "record", PROMPT, "--n-steps", "400", "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    manifest = None
    while time.time() < deadline:  # the run has started: its manifest says running (on a CPU maps are written
        found = list(out.rglob("manifest.json"))  # in bursts, so none may be on disk yet: that is the point)
        if found and "running" in found[0].read_text():
            manifest = found[0]
            break
        time.sleep(0.2)
    time.sleep(2.0)  # killed mid-sampling
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert manifest is not None, "the run never started writing"
    run = attnlens.open_run(manifest.parent)
    assert run.status == "running" and not run.complete
    code, stdout, _ = run_cli("info", str(manifest.parent))
    assert code == 0 and "incomplete" in stdout
    code, stdout, _ = run_cli("ls", str(out))
    assert stdout.startswith("running")
    # a new record into the same place replaces the incomplete run without --overwrite
    code, _, err = run_cli("record", PROMPT, "--n-steps", "1", "--out", str(out))
    assert code == 0, err


def test_help_teaches(run_cli):
    code, out, _ = run_cli("record", "--help")
    assert code == 0 and "Examples" in out and "--method" in out and "--n-steps" in out and "--steps" in out
    code, out, _ = run_cli("--help")
    assert code == 0 and "record" in out and "info" in out and "ls" in out
