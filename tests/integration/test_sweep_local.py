"""``attnlens sweep`` with the local executor: a sweep of attnlens-tiny (2 steps) stopped with Ctrl-C and resumed
(cells finished before the stop are reused, never recorded twice), ``sweep status``, the shapes scorer, and bad
specs refused with one line and exit 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import attnlens
from attnlens.sweeps import cell_states, load_spec, read_events, read_sweep

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

SPEC = """
model = "attnlens-tiny"
steps = 2
seeds = [0]
prompts = ["a red circle and a blue square", "a green triangle"]
scorers = ["shapes"]                # the shapes world's evaluator (on random weights its verdicts are noise)

[[methods]]
name = "none"

[[methods]]
name = "syngen"
grid = { step_size = [10, 20] }
"""


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.Popen([sys.executable, "-m", "attnlens", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def _finish(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """The process's output once it ends; on a timeout the process (started by this test) is ended first."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        raise


def test_a_sweep_stopped_with_ctrl_c_resumes_and_never_records_a_cell_twice(tmp_path):
    spec = tmp_path / "sweep.toml"
    spec.write_text(SPEC)
    out = tmp_path / "out"
    proc = _cli("sweep", str(spec), "--out", str(out), "--workers", "1", "--threads", "1", start_new_session=True)
    try:
        end = time.monotonic() + 180
        while sum(e["event"] == "finish" for e in read_events(out)) < 2 and time.monotonic() < end:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: the driver and its workers
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert "rerun the same command to resume" in err and "Traceback" not in err
    states = Counter(c["state"] for c in cell_states(out))
    before = {e["cell"] for e in read_events(out) if e["event"] == "finish"}
    scored = {c["id"] for c in read_sweep(out)["cells"] if c["scores"]}  # results the driver heard before the stop
    assert 2 <= len(before) < 6 and states["complete"] == len(before) and states["pending"] == 6 - len(before)

    status = _cli("sweep", "status", str(out), "--format", "json")
    rows = json.loads(_finish(status, 120)[0])
    assert sum(r["state"] == "pending" for r in rows) == 6 - len(before)

    proc = _cli("sweep", str(spec), "--out", str(out), "--workers", "2", "--threads", "1", "--format", "json")
    stdout, err = _finish(proc, 540)  # about 30 s on a quiet 2-core machine
    assert proc.returncode == 0, err
    result = json.loads(stdout)
    assert result["cells"] == 6 and result["failed"] == 0 and result["pending"] == 0
    # cells the driver heard of are not handed out again; a cell recorded but not yet scored is (it is reused)
    assert result["ran"] == 6 - len(scored) and result["reused"] == len(before - scored)
    finished = Counter(e["cell"] for e in read_events(out) if e["event"] == "finish")
    cells = load_spec(spec).cells(out)
    assert finished == Counter({c.id: 1 for c in cells})  # every run written exactly once
    data = read_sweep(out)
    assert data["protocol"]["model"] == "attnlens-tiny" and data["protocol"]["model_digest"]
    assert data["protocol"]["scheduler"] and data["protocol"]["seeds"] == [0]
    for c, rec in zip(cells, data["cells"]):
        assert rec["id"] == c.id and rec["state"] in ("complete", "reused")
        m = attnlens.open_run(c.path).manifest
        assert m["status"] == "complete" and m["sweep_cell"]["options"] == c.variant.options
        if "step_size" in c.variant.options:
            assert m["method"]["hyperparameters"]["step_size"] == c.variant.options["step_size"]
        assert set(rec["scores"]["shapes"]) >= {"success", "misbinding", "object_accuracy"}

    # a third run reuses everything, and a changed protocol is refused
    proc = _cli("sweep", str(spec), "--out", str(out), "--format", "json")
    stdout, err = _finish(proc, 240)
    assert proc.returncode == 0 and json.loads(stdout)["ran"] == 0, err
    spec.write_text(SPEC.replace("steps = 2", "steps = 3"))
    proc = _cli("sweep", str(spec), "--out", str(out))
    _, err = _finish(proc, 240)
    assert proc.returncode == 2 and err.startswith("error: ") and "another protocol (differs in: steps)" in err
