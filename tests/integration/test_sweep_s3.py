"""``attnlens sweep SPEC --out s3://bucket/root`` against a local S3-compatible server (moto's server mode on
127.0.0.1, started here): every cell published with its manifest last, ``sweep.json`` one object at the root, a
cell whose manifest never arrived (a crash mid-publish) recorded again on resume while no complete run is written
twice, a scorer added on resume run on the published runs, ``sweep status``, ``ls`` and ``analyze`` on the URL;
a worker whose publish failed publishes its staged run on retry; a missing bucket or an endpoint that does not
answer is one ``error:`` line and exit 2."""

from __future__ import annotations

import json
import socket
from collections import Counter

import pytest

pytest.importorskip("moto.server")
pytest.importorskip("boto3")
pytest.importorskip("s3fs")

from attnlens.sweeps import load_spec, read_events, read_sweep  # noqa: E402
from s3_server import moto_s3  # noqa: E402

pytestmark = pytest.mark.slow

SPEC = """
model = "attnlens-tiny"
steps = 2
prompts = ["a red circle and a blue square", "a green triangle"]
methods = [{ name = "none" }, { name = "syngen" }]
"""
ROOT = "s3://bucket/sweeps/first"


@pytest.fixture
def s3(monkeypatch, tmp_path):
    with moto_s3(monkeypatch, tmp_path / "home") as client:
        yield client


def _objects(client, prefix: str = "sweeps/first/") -> dict[str, dict]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket="bucket", Prefix=prefix)
    return {o["Key"]: o for page in pages for o in page.get("Contents", [])}


def _manifests(client) -> dict[str, tuple[str, object]]:
    """Each run's manifest object: key -> (ETag, LastModified)."""
    return {k: (o["ETag"], o["LastModified"]) for k, o in _objects(client).items() if k.endswith("/manifest.json")}


def test_a_sweep_to_s3_is_published_resumed_after_a_lost_manifest_and_read_by_status_ls_analyze(
        s3, run_cli, tmp_path):
    spec = tmp_path / "sweep.toml"
    spec.write_text(SPEC)
    args = ("sweep", spec, "--out", ROOT, "--workers", "1", "--threads", "1", "--format", "json")
    code, out, err = run_cli(*args)
    assert code == 0, err
    result = json.loads(out)
    assert (result["cells"], result["ran"], result["complete"], result["failed"]) == (4, 4, 4, 0)

    cells = load_spec(spec).cells(ROOT)
    assert [c.path for c in cells][0] == f"{ROOT}/a-red-circle-and-a-blue-square/none-seed0"
    keys = _objects(s3)
    assert "sweeps/first/sweep.json" in keys and not any(".attnlens-lock" in k for k in keys)
    assert any("/data.zarr/attention/" in k for k in keys)
    first = _manifests(s3)
    assert sorted(first) == sorted(f"sweeps/first/{c.rel}/manifest.json" for c in cells)
    # the manifest is the last object of each run (moto's LastModified has a one-second grain: not later than any)
    for c in cells:
        run_keys = [o for k, o in keys.items() if k.startswith(f"sweeps/first/{c.rel}/")]
        assert max(o["LastModified"] for o in run_keys) == keys[f"sweeps/first/{c.rel}/manifest.json"]["LastModified"]
    data = read_sweep(ROOT)  # one object, written by the driver
    assert data["protocol"]["model"] == "attnlens-tiny" and [c["state"] for c in data["cells"]] == ["complete"] * 4
    assert all(c["scores"] == {} for c in data["cells"])
    staging = tmp_path / "home" / "staging"
    assert not staging.exists() or not any(staging.iterdir())  # removed after each successful publish

    # a crash mid-publish: one run's data is there, its manifest never arrived
    lost = cells[2]
    s3.delete_object(Bucket="bucket", Key=f"sweeps/first/{lost.rel}/manifest.json")
    code, out, err = run_cli("sweep", "status", ROOT, "--format", "json")
    assert code == 0, err
    assert {r["id"]: r["state"] for r in json.loads(out)} == {c.id: ("pending" if c is lost else "complete")
                                                                for c in cells}

    # resumed with a scorer added: the lost cell is recorded (and scored from its local copy before it is
    # published), the three complete ones are only scored (read from the store), never recorded again
    spec.write_text(SPEC.replace("methods =", 'scorers = ["shapes"]\nmethods ='))
    code, out, err = run_cli(*args)
    assert code == 0, err
    result = json.loads(out)
    assert (result["ran"], result["complete"], result["reused"], result["failed"]) == (4, 1, 3, 0)
    assert all(set(c["scores"]["shapes"]) >= {"success", "misbinding"} for c in read_sweep(ROOT)["cells"])
    again = _manifests(s3)
    lost_key = f"sweeps/first/{lost.rel}/manifest.json"
    assert lost_key in again
    assert {k: v for k, v in again.items() if k != lost_key} == {k: v for k, v in first.items() if k != lost_key}
    starts = Counter(e["cell"] for e in read_events(ROOT) if e["event"] == "start")
    published = Counter(e["cell"] for e in read_events(ROOT) if e["event"] == "publish")
    assert starts == published == Counter({c.id: 2 if c is lost else 1 for c in cells})

    code, out, err = run_cli("sweep", "status", ROOT, "--format", "json")
    assert code == 0 and sorted(r["state"] for r in json.loads(out)) == ["complete"] + ["reused"] * 3, err
    code, out, err = run_cli("ls", ROOT, "--format", "json")
    assert code == 0, err
    assert sorted(r["path"] for r in json.loads(out)) == sorted(c.path for c in cells)
    assert {r["status"] for r in json.loads(out)} == {"complete"}
    code, out, err = run_cli("analyze", ROOT, "--metric", "entropy", "--out", tmp_path / "m.parquet", "--format", "json")
    assert code == 0, err
    assert json.loads(out)["runs"] == 4


def test_a_missing_bucket_or_an_endpoint_that_does_not_answer_is_one_error_line(s3, run_cli, tmp_path, monkeypatch):
    spec = tmp_path / "sweep.toml"
    spec.write_text(SPEC)
    code, out, err = run_cli("sweep", spec, "--out", "s3://no-such-bucket/root", "--workers", "1")
    assert code == 2 and out == "" and "Traceback" not in err, err
    assert err.startswith("error: cannot write 's3://no-such-bucket/root/sweep.json'") and "bucket" in err
    code, _, err = run_cli("sweep", "status", "s3://bucket/nothing-here")
    assert code == 2 and err.startswith("error: 's3://bucket/nothing-here' holds no sweep"), err

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import s3fs

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore would try again with back-off first
    s3fs.S3FileSystem.clear_instance_cache()
    for cmd in (("sweep", spec, "--out", ROOT, "--workers", "1"), ("sweep", "status", ROOT)):
        code, out, err = run_cli(*cmd)
        assert code == 2 and out == "" and "Traceback" not in err, err
        assert err.startswith(f"error: cannot read '{ROOT}/sweep.json'") and "endpoint" in err
        assert sum(line.startswith("error:") for line in err.splitlines()) == 1


def test_a_worker_whose_publish_failed_publishes_its_staged_run_without_recording_it_again(tiny_pipe, tmp_path,
                                                                                          monkeypatch):
    from attnlens.errors import StoreError
    from attnlens.store import is_run
    from attnlens.sweep import complete_run
    from attnlens.sweeps import parse_spec, plan, worker

    monkeypatch.setenv("ATTNLENS_HOME", str(tmp_path / "home"))
    spec = parse_spec({"model": "attnlens-tiny", "steps": 2, "prompts": ["a red circle"], "methods": [{"name": "none"}]})
    root = f"memory://bucket/{tmp_path.name}"  # one file system per process: a name of this test's own
    [cell] = spec.cells(root)
    monkeypatch.setitem(worker._PIPES, ("attnlens-tiny", None), tiny_pipe)
    real, calls = worker.publish_run, []

    def flaky(local, url):  # the first upload fails (the connection drops), the next ones go through
        calls.append(url)
        if len(calls) == 1:
            raise StoreError(f"cannot write '{url}': connection reset")
        return real(local, url)

    monkeypatch.setattr(worker, "publish_run", flaky)
    first = worker.run_cell(spec, cell, root)
    assert first["state"] == "failed" and "connection reset" in first["error"]
    assert complete_run(worker.staging(cell)) and not is_run(cell.path)  # kept, complete, not published
    manifest, todo = plan(spec, root)
    assert todo == [cell] and manifest.cell(cell.id)["state"] == "pending"

    second = worker.run_cell(spec, cell, root)
    assert second["state"] == "complete" and calls == [cell.path, cell.path]
    assert [e["event"] for e in read_events(root)] == ["start", "finish", "publish"]  # recorded once
    assert complete_run(cell.path) and not worker.staging(cell).exists()
    manifest, todo = plan(spec, root)
    assert todo == [] and manifest.cell(cell.id)["state"] == "reused"
    assert read_sweep(root)["cells"][0]["state"] == "reused"  # the object at ROOT/sweep.json
    assert worker.run_cell(spec, cell, root)["state"] == "reused"
