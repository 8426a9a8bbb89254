"""Two recordings on one run folder, and Ctrl-C: the run folder's lock (``RUN/.attnlens-lock``), refused at once
while its holder lives and free again after ``kill -9``; ``attnlens record`` interrupted exits 130 with the run
marked interrupted."""

from __future__ import annotations

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
from attnlens.cli import main
from attnlens.errors import RunLocked, StoreError
from attnlens.store import RunWriter, prepare_run_dir
from attnlens.store.layout import LOCK, STATUS_INTERRUPTED
from attnlens.sweep import reusable

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _default_sigint() -> None:
    """In the child: Ctrl-C's default disposition. A test suite started in the background (``make test &``, CI
    runners) inherits SIGINT *ignored* from the shell, and Python keeps an ignored SIGINT ignored, as a user who ran
    ``nohup attnlens record ...`` asked for; the tests below are about an interactive Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)

#: a process that opens a RunWriter on argv[1], writes one map, says "ready", then finishes when told to on stdin
HOLDER = textwrap.dedent("""
    import sys
    import numpy as np
    from attnlens.store import RunWriter
    w = RunWriter(sys.argv[1], {"prompt": "a cat", "seed": 0, "steps": 2, "method": {"name": "none"}})
    tokens = [["<sot>", "a</w>", "cat</w>", "<eot>"]]
    w.write_map("down_blocks.0.attentions.0.transformer_blocks.0.attn2", 0, "sample", 0, 2, tokens, 981.0,
                np.full((1, 1, 4, 8, 8), 0.25, dtype=np.float16))
    print("ready", flush=True)
    sys.stdin.readline()
    w.write_map("down_blocks.0.attentions.0.transformer_blocks.0.attn2", 1, "sample", 0, 2, tokens, 1.0,
                np.full((1, 1, 4, 8, 8), 0.5, dtype=np.float16))
    w.annotate(records={"sample": {"0": [0], "1": [0]}},
               recorded_layers=["down_blocks.0.attentions.0.transformer_blocks.0.attn2"], write=False)
    w.finish()
    print("done", flush=True)
""")


def holder(run: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    line = proc.stdout.readline()  # blocks until the writer holds the lock (or the process died)
    if line.strip() != "ready":
        proc.kill()
        raise AssertionError(f"the holder did not start: {proc.communicate(timeout=30)[1][-2000:]}")
    return proc


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_second_writer_refused_first_completes(tmp_path):
    run = tmp_path / "cli" / "a-cat" / "none-seed0"
    proc = holder(run)
    try:
        before = snapshot(run)
        assert before[LOCK].decode().split()[0] == str(proc.pid)
        for attempt in (lambda: RunWriter(run, {"prompt": "a dog"}), lambda: prepare_run_dir(run),
                        lambda: RunWriter(run, {"prompt": "a dog"}, overwrite=True)):
            with pytest.raises(RunLocked) as info:
                attempt()
            assert f"'{run}' is being recorded by another process (pid {proc.pid})" in info.value.message
            assert "wait for it to finish or choose another --out" in info.value.hint
            assert isinstance(info.value, StoreError)
        assert snapshot(run) == before  # nothing deleted, nothing written

        # the CLI refuses it too, at the path it would record "a cat" to: one line and a hint, exit 2
        cli = subprocess.run([sys.executable, "-m", "attnlens", "record", "a cat", "--model", "attnlens-tiny",
                              "--n-steps", "2", "--out", str(tmp_path / "cli")], capture_output=True, text=True,
                             timeout=300, env=ENV, cwd=tmp_path)
        assert cli.returncode == 2, cli.stderr
        lines = [ln for ln in cli.stderr.splitlines() if ln.strip()]
        assert f"error: '{run}' is being recorded by another process (pid {proc.pid})" in lines
        assert "hint: wait for it to finish or choose another --out" in lines
        assert "Traceback" not in cli.stderr and "free disk space" not in cli.stderr
        assert snapshot(run) == before

        out, err = proc.communicate("go\n", timeout=120)
        assert proc.returncode == 0 and out.strip().endswith("done"), err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=60)
    r = attnlens.open_run(run)
    assert r.complete and r.manifest["prompt"] == "a cat"
    maps = r.read_records("down_blocks.0.attentions.0.transformer_blocks.0.attn2", [(0, 0), (1, 0)])
    assert np.allclose(maps[0], 0.25) and np.allclose(maps[1], 0.5)
    assert not (run / LOCK).exists()  # released, and its file deleted, at finish


def test_lock_is_free_after_kill_9(tmp_path):
    run = tmp_path / "run"
    proc = holder(run)
    try:
        with pytest.raises(RunLocked):
            RunWriter(run, {"prompt": "a dog"})
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    assert (run / LOCK).exists() and json.loads((run / "manifest.json").read_text())["status"] == "running"
    w = RunWriter(run, {"prompt": "a dog"})  # the stale run is replaced; its lock file is taken over
    assert (run / LOCK).read_text().split()[0] == str(os.getpid())
    assert not (run / "data.zarr" / "attention").exists()
    w.finish()
    assert attnlens.open_run(run).complete and attnlens.open_run(run).manifest["prompt"] == "a dog"
    assert not (run / LOCK).exists()


def test_a_recording_killed_before_its_first_manifest_is_replaced(tmp_path):
    """A writer killed between creating data.zarr and its first manifest (seen when Ray killed a sweep worker): its
    lock file, data.zarr and a temporary manifest are left; the next writer replaces them. Without the dead
    writer's lock file the same folder is not known to be ours and is refused."""
    run = tmp_path / "run"
    w = RunWriter(run, {"prompt": "a dog"})
    w.finish()
    (run / "manifest.json").rename(run / ".manifest.json.x1y2z3")  # as if the first write never reached its rename
    (run / LOCK).write_text("999999 gone-host\n")  # the dead holder's file; nobody holds the flock
    w = RunWriter(run, {"prompt": "a cat"})
    w.finish()
    assert attnlens.open_run(run).complete and attnlens.open_run(run).manifest["prompt"] == "a cat"
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []
    (run / "manifest.json").rename(run / ".manifest.json.x1y2z3")
    with pytest.raises(StoreError, match="not an attnlens run"):
        RunWriter(run, {"prompt": "a cow"})


def test_lock_released_on_every_exit_path(tmp_path):
    """A writer that finishes (any status) or is released unlocks; a refused prepare leaves no lock file behind."""
    run = tmp_path / "run"
    w = RunWriter(run, {})
    w.finish(status="failed", error="boom")
    RunWriter(run, {}).release()  # a failed run is replaced, and the folder is free again
    w = RunWriter(run, {})
    w.finish()
    assert not (run / LOCK).exists()
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not an attnlens run"):
        RunWriter(notes, {})
    assert sorted(p.name for p in notes.iterdir()) == ["notes.txt"]  # no lock file in a folder that is not ours


def test_interrupted_run_is_not_reused(tmp_path):
    run = tmp_path / "a-cat" / "none-seed0"
    w = RunWriter(run, {"prompt": "a cat", "seed": 0, "steps": 2, "method": {"name": "none"}})
    w.finish(status=STATUS_INTERRUPTED, error="KeyboardInterrupt")
    assert not reusable(run, prompt="a cat", seed=0, method="none", steps=2)
    assert not attnlens.open_run(run).complete
    RunWriter(run, {}).finish()  # replaced like a failed run, without --overwrite
    assert attnlens.open_run(run).complete


def test_ctrl_c_in_any_command_exits_130(tmp_path, monkeypatch, capsys):
    """typer turns a KeyboardInterrupt into a returned 130 when not in standalone mode: it must not become 0."""
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(attnlens.store, "find_runs", interrupt)
    assert main(["ls", str(tmp_path)]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_ctrl_c_during_record_exits_130_and_marks_the_run(tmp_path):
    out = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "attnlens", "record", "a cat", "--model", "attnlens-tiny",
                             "--n-steps", "200", "--seed", "0", "--seed", "1", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=tmp_path,
                            preexec_fn=_default_sigint)
    run = out / "a-cat" / "none-seed0"
    try:
        deadline = time.monotonic() + 240
        while not (run / "manifest.json").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert (run / "manifest.json").exists(), "the run never started"
        time.sleep(0.5)  # sampling
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr[-2000:]
    assert took < 15, f"exit took {took:.1f} s after Ctrl-C"
    said = [ln for ln in stderr.splitlines() if "interrupted" in ln]
    assert said == [f"interrupted: '{run}' is marked interrupted; 1 remaining prompt/seed run(s) not recorded "
                    f"(seed 1 of 'a cat')"], stderr[-2000:]
    assert "Traceback" not in stderr and stdout == ""
    m = json.loads((run / "manifest.json").read_text())
    assert m["status"] == STATUS_INTERRUPTED and "KeyboardInterrupt" in m["error"]
    assert not (run / LOCK).exists() and not (out / "a-cat" / "none-seed1").exists()
    r = attnlens.open_run(run)
    assert not r.complete and r.status == STATUS_INTERRUPTED
