"""Stores on ``s3://`` URLs, against a local S3-compatible server (moto's server mode on 127.0.0.1, started here):
record, ls, info, analyze and the dashboard's index read and write ``s3://bucket/root``; the manifest is the last
object of a run, and a publish that stops part way never leaves a run that reads as complete."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("moto.server")
pytest.importorskip("boto3")
pytest.importorskip("s3fs")

import attnlens  # noqa: E402
from attnlens.errors import RunNotFound  # noqa: E402
from attnlens.store import remote  # noqa: E402
from attnlens.sweep import complete_run  # noqa: E402
from s3_server import moto_s3  # noqa: E402

PROMPT = "a red crown and a golden strawberry"


@pytest.fixture
def s3(monkeypatch, tmp_path):
    with moto_s3(monkeypatch, tmp_path / "home") as client:
        yield client


def test_record_ls_info_analyze_and_dashboard_index_on_s3(s3, run_cli, tmp_path):
    code, out, err = run_cli("record", PROMPT, "--model", "attnlens-tiny", "--n-steps", "2", "--seed", "0",
                             "--seed", "1", "--out", "s3://bucket/root", "--format", "json")
    assert code == 0, err
    urls = [r["path"] for r in json.loads(out)]
    assert urls == [f"s3://bucket/root/a-red-crown-and-a-golden-strawberry/none-seed{s}" for s in (0, 1)]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="bucket", Prefix="root/")["Contents"]]
    assert "root/a-red-crown-and-a-golden-strawberry/none-seed0/manifest.json" in keys
    assert any("/data.zarr/attention/" in k for k in keys) and not any(".attnlens-lock" in k for k in keys)

    code, out, err = run_cli("ls", "s3://bucket/root", "--format", "json")
    assert code == 0, err
    rows = json.loads(out)
    assert [(r["path"], r["status"], r["seed"]) for r in rows] == [(u, "complete", s) for s, u in enumerate(urls)]

    code, out, err = run_cli("info", urls[1], "--format", "json")
    assert code == 0, err
    assert json.loads(out)["seed"] == 1 and json.loads(out)["prompt"] == PROMPT

    # a second record refuses the complete runs, as on disk
    code, _, err = run_cli("record", PROMPT, "--model", "attnlens-tiny", "--n-steps", "2", "--out", "s3://bucket/root")
    assert code == 2 and "already holds a complete run" in err

    table = tmp_path / "m.parquet"
    code, out, err = run_cli("analyze", "s3://bucket/root", "--metric", "entropy", "--out", table, "--format", "json")
    assert code == 0, err
    assert json.loads(out)["runs"] == 2
    import pandas as pd

    remote_rows = pd.read_parquet(table)
    # the same maps read from fresh local copies of the objects give the same table
    local = [remote.fetch_run(u, tmp_path / "copy" / str(k)) for k, u in enumerate(urls)]
    here = attnlens.analysis.analyze_runs(local, metrics=["entropy"])
    assert len(remote_rows) == len(here) > 0
    assert sorted(remote_rows.value.round(6)) == sorted(here.value.round(6))

    from dashboard.data import scan_root

    entries = scan_root("s3://bucket/root")
    assert [(e.status, e.seed, e.prompt) for e in entries] == [("complete", 0, PROMPT), ("complete", 1, PROMPT)]
    assert attnlens.open_run(urls[0]).maps(attnlens.open_run(urls[0]).layers[0], step=1).shape[0] == 1


def test_the_manifest_is_the_last_object_and_a_broken_publish_is_never_complete(s3, tiny_pipe, tmp_path, monkeypatch):
    run = attnlens.sample(tiny_pipe, PROMPT, out=tmp_path / "run", num_inference_steps=2)
    url = "s3://bucket/root/run"
    fs, _ = remote.filesystem(url)
    written: list[str] = []
    real_put = fs.put_file  # fsspec keeps one file system per arguments: remote.filesystem returns this one

    def spy(lpath, rpath, *args, **kwargs):
        written.append(rpath)
        return real_put(lpath, rpath, *args, **kwargs)

    monkeypatch.setattr(fs, "put_file", spy)
    remote.publish_run(run.path, url)
    assert written[-1].endswith("/run/manifest.json") and len(written) > 5
    assert complete_run(url)

    def broken(lpath, rpath, *args, **kwargs):  # the connection drops after a few objects
        if len(written) > 8:
            raise OSError("connection reset")
        written.append(rpath)
        return real_put(lpath, rpath, *args, **kwargs)

    written.clear()
    monkeypatch.setattr(fs, "put_file", broken)
    with pytest.raises(attnlens.errors.StoreError, match="cannot write"):
        remote.publish_run(run.path, url)
    assert not complete_run(url)  # the old completion marker went first; the new one never came
    with pytest.raises(RunNotFound):
        remote.read_remote_manifest(url)
