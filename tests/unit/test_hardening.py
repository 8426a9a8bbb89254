"""Bad input never damages data already written, and is refused with a one-line error naming the option."""

from __future__ import annotations

import math

import pytest

import attnlens
from attnlens.cli import main
from attnlens.errors import BadOption, RunNotFound, StoreError
from attnlens.sampler import check_sampling_options
from attnlens.store import RunWriter, prepare_run_dir


def _run(path, status="running"):
    w = RunWriter(path, {"prompt": "p", "seed": 0})
    w.finish(status)
    return path


@pytest.mark.parametrize("status", ["running", "failed", "complete"])
def test_replacing_a_run_keeps_what_attnlens_did_not_write(tmp_path, status):
    run = _run(tmp_path / "run", status)
    (run / "notes.txt").write_text("my notes")
    nested = _run(run / "inner", "complete")
    with pytest.raises(StoreError, match="did not write"):
        prepare_run_dir(run, overwrite=True)
    assert (run / "notes.txt").read_text() == "my notes" and attnlens.open_run(nested).complete
    assert attnlens.open_run(run).status == status  # the refused run is untouched too


def test_replacing_a_run_deletes_only_its_own_files(tmp_path):
    run = _run(tmp_path / "run", "failed")
    (run / "image.png").write_bytes(b"")
    prepare_run_dir(run)
    assert list(run.iterdir()) == []


@pytest.mark.parametrize("kwargs, word", [
    ({"seed": 2**64}, "seed"), ({"seed": 1.5}, "seed"), ({"seed": True}, "seed"),
    ({"num_inference_steps": 0}, "steps"), ({"guidance_scale": math.nan}, "guidance"),
    ({"guidance_scale": -1.0}, "guidance"), ({"height": 0}, "height"), ({"width": -64}, "width"),
])
def test_sampling_options_outside_their_range_are_refused(kwargs, word):
    options = {"seed": 0, "num_inference_steps": 2, "guidance_scale": 7.5, "height": None, "width": None, **kwargs}
    with pytest.raises(BadOption, match=word):
        check_sampling_options(**options)
    check_sampling_options(seed=2**64 - 1, num_inference_steps=1, guidance_scale=0.0, height=64, width=64)


def test_ls_of_a_file_is_an_error(tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(RunNotFound):
        list(attnlens.find_runs(f))
    assert main(["ls", str(f)]) == 2
    err = capsys.readouterr().err
    assert "is a file" in err and "Traceback" not in err


def test_a_step_selection_outside_the_schedule_is_refused(tiny_pipe, tmp_path):
    from attnlens.errors import EmptySelection
    from attnlens.recording import RecordingConfig

    with pytest.raises(EmptySelection, match="keeps none of the 2 denoising steps"):
        attnlens.sample(tiny_pipe, "a red crown", out=tmp_path / "r", num_inference_steps=2,
                        recording=RecordingConfig(steps=slice(5, 9)))
    assert not (tmp_path / "r").exists()  # refused before anything was written


@pytest.mark.parametrize("method, prompt, what", [
    ("syngen", "a cat", "nothing to bind"),
    ("attend-excite", "running quickly", "no subject"),
])
def test_guidance_with_nothing_to_act_on_says_so(tiny_pipe, tmp_path, method, prompt, what):
    with pytest.warns(UserWarning, match=what):
        run = attnlens.sample(tiny_pipe, prompt, method=method, out=tmp_path / "r", num_inference_steps=2)
    assert any(what in w for w in run.manifest["prompt_warnings"])


def test_guidance_that_can_act_is_silent(tiny_pipe, tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        run = attnlens.sample(tiny_pipe, "a red crown", method="syngen", out=tmp_path / "r", num_inference_steps=2,
                              method_options={"intervention_steps": 1})  # a schedule that fits 2 steps: no warning
    assert not run.manifest["prompt_warnings"]


def test_a_50_step_schedule_at_fewer_steps_is_announced(tiny_pipe, tmp_path):
    from attnlens.methods._schedule import ScheduleWarning

    with pytest.warns(ScheduleWarning, match="at 2 steps it guides every step"):
        run = attnlens.sample(tiny_pipe, "a red crown", method="syngen", out=tmp_path / "r", num_inference_steps=2)
    assert any("written for 50 steps" in w for w in run.manifest["prompt_warnings"])


def test_a_step_selection_limits_the_guidance_phase_too(tiny_pipe, tmp_path):
    from attnlens.recording import RecordingConfig

    run = attnlens.sample(tiny_pipe, "a red crown and a golden strawberry", method="syngen", out=tmp_path / "r",
                          num_inference_steps=4, recording=RecordingConfig(steps=slice(None, None, 2)),
                          method_options={"intervention_steps": 4})
    assert run.recorded_steps(phase="sample") == [0, 2, 4]
    assert run.recorded_steps(phase="guidance") == [0, 2]  # guided at 0..3, stored at the selected steps only
