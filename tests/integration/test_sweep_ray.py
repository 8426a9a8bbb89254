"""``attnlens sweep --executor ray`` on a real local Ray cluster started here (a head without CPUs and two worker
nodes of one CPU each, all on 127.0.0.1): a sweep of 2 methods × 2 prompts × 2 seeds of attnlens-tiny with 2 steps,
with one Ray worker process killed while it records; then ``attnlens analyze --executor ray`` on the same cluster.
A second sweep writes to ``s3://`` on a local S3 server (moto's server mode, started before the nodes so that they
inherit its endpoint): the Ray workers publish their cells, and ``analyze --executor ray`` reads the URL root.

The nodes run ``ray start --block`` as child processes of the test, and the finaliser ends those processes by
their id (``--block`` stops the node's own processes when it is terminated)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

import attnlens  # noqa: E402
from attnlens.sweeps import cell_states, load_spec, read_events, read_sweep  # noqa: E402

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")

SPEC = """
model = "attnlens-tiny"
steps = 2
seeds = [0, 1]
prompts = ["a red crown and a golden strawberry", "a blue cat and a green dog"]

[recording]
dtype = "fp16"

[[methods]]
name = "none"

[[methods]]
name = "syngen"
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: the local S3 server's variables (endpoint, test credentials) and a cache folder of the module's own (staging
#: folders, copies of runs read from the store, the event log of a URL root), set before the nodes start so that
#: their workers reach the server and the test reads the same cache
S3_ENV: dict[str, str] = {}


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", **S3_ENV)
    return env


def _wait(pred, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server on 127.0.0.1 with a bucket ``bucket`` (None when moto, boto3 or s3fs is not installed),
    started before the cluster's nodes, which inherit its variables (:data:`S3_ENV`)."""
    try:
        import boto3
        import s3fs  # noqa: F401
        from moto.server import ThreadedMotoServer
    except ModuleNotFoundError:
        yield None
        return
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    home = tempfile.mkdtemp(prefix="attnlens-home-")
    S3_ENV.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                  AWS_DEFAULT_REGION="us-east-1", NO_PROXY="127.0.0.1", no_proxy="127.0.0.1", ATTNLENS_HOME=home)
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                 region_name="us-east-1").create_bucket(Bucket="bucket")
    try:
        yield endpoint
    finally:
        S3_ENV.clear()
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(s3_endpoint):
    tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths must stay under 107 bytes
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--block", "--node-ip-address", "127.0.0.1", "--object-store-memory", "100000000",
              "--disable-usage-stats"]
    nodes: list[subprocess.Popen] = []

    def start(args: list[str]) -> None:
        log = open(tmp / f"node{len(nodes)}.log", "wb")
        nodes.append(subprocess.Popen([RAY, "start", *args, *common], env=_env(), stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))

    try:
        start(["--head", "--port", str(port), "--num-cpus", "0", "--include-dashboard=false", "--temp-dir", str(tmp),
               "--dashboard-agent-listen-port", str(_free_port())])
        def worker() -> None:
            start(["--address", address, "--num-cpus", "1", "--dashboard-agent-listen-port", str(_free_port())])

        for _ in range(2):
            time.sleep(1)
            worker()
        # a worker node's raylet has crashed while starting on a loaded machine (once, in a fresh-clone run): a node
        # whose process has ended is replaced, up to twice, before the tests get the cluster
        for _ in range(2):
            if _workers_ready(address, 60):
                break
            for p in list(nodes[1:]):
                if p.poll() is not None:
                    nodes.remove(p)
                    worker()
        yield address
    finally:
        for p in reversed(nodes):  # the processes this fixture started, by their id
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(nodes):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def _sweep(spec: Path, out: Path, address: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "attnlens", "sweep", str(spec), "--out", str(out), "--executor",
                             "ray", "--address", address, "--format", "json", *extra], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@contextlib.contextmanager
def _ended(proc: subprocess.Popen):
    """Around the wait for a sweep this test started: the process is ended (by its id) if it outlives the block."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _workers_ready(address: str, timeout: float = 120) -> bool:
    """Whether the cluster offers the two worker nodes' CPUs within ``timeout`` s (one driver, polling)."""
    return _probe(address, timeout).returncode == 0


def _probe(address: str, timeout: float) -> subprocess.CompletedProcess:
    code = ("import ray, sys, time; ray.init(address=sys.argv[1], logging_level='ERROR'); end = time.time() + "
            "float(sys.argv[2])\nwhile ray.cluster_resources().get('CPU', 0) < 2 and time.time() < end: time.sleep(0.2)"
            "\nsys.exit(ray.cluster_resources().get('CPU', 0) < 2)")
    return subprocess.run([sys.executable, "-c", code, address, str(timeout)], env=_env(), capture_output=True,
                          text=True, timeout=timeout + 60)


def _wait_for_workers(address: str, timeout: float = 120) -> None:
    """Block until the cluster offers the two worker nodes' CPUs (one driver, polling)."""
    probe = _probe(address, timeout)
    assert probe.returncode == 0, f"the Ray cluster did not get its two worker nodes: {probe.stderr[-500:]}"


def test_ray_sweep_survives_a_killed_worker_and_analyze_runs_on_the_cluster(cluster, tmp_path):
    _wait_for_workers(cluster)
    spec = tmp_path / "sweep.toml"
    spec.write_text(SPEC)
    out = tmp_path / "out"
    proc = _sweep(spec, out, cluster)
    with _ended(proc):
        # kill the first Ray worker process seen recording, while it records
        start = _wait(lambda: next((e for e in read_events(out) if e["event"] == "start"), None), 240,
                      "a cell to start")
        victim = int(start["worker"].rsplit(":", 1)[1])
        killed_mid_run = not any(e["event"] == "finish" and e["worker"] == start["worker"] for e in read_events(out))
        os.kill(victim, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr
    result = json.loads(stdout)
    cells = load_spec(spec).cells(out)
    assert result["cells"] == len(cells) == 8 and result["failed"] == 0

    # every cell complete, in sweep.json and in its own run folder, with the cell's settings
    states = cell_states(out)
    assert {c["state"] for c in states} == {"complete"}
    for c in cells:
        m = attnlens.open_run(c.path).manifest
        assert m["status"] == "complete" and m["method"]["name"] == c.variant.method
        assert (m["prompt"], m["seed"]) == (c.prompt, c.seed)
    # no run lost or written twice: exactly one finished recording per cell; the killed one was started again
    events = read_events(out)
    finished = Counter(e["cell"] for e in events if e["event"] == "finish")
    assert finished == Counter({c.id: 1 for c in cells})
    started = Counter(e["cell"] for e in events if e["event"] == "start")
    if killed_mid_run:
        assert started[start["cell"]] == 2
        assert next(e for e in events if e["event"] == "finish" and e["cell"] == start["cell"])["worker"] != start["worker"]
        assert read_sweep(out)["cells"][[c.id for c in cells].index(start["cell"])]["attempts"] == 1

    # the tables computed on the cluster equal the ones computed here
    table = tmp_path / "ray.parquet"
    done = subprocess.run([sys.executable, "-m", "attnlens", "analyze", str(out), "--executor", "ray", "--address",
                           cluster, "--metric", "entropy", "--out", str(table)], env=_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    from attnlens.analysis import analyze_runs

    import pandas as pd

    here = analyze_runs(sorted(c.path for c in cells), metrics=["entropy"])
    there = pd.read_parquet(table)
    key = ["run", "sample", "step", "phase", "iteration", "layer", "token", "metric"]
    pd.testing.assert_frame_equal(there.sort_values(key).reset_index(drop=True)[here.columns.tolist()],
                                  here.sort_values(key).reset_index(drop=True), check_dtype=False)


def test_ray_sweep_to_s3_is_published_by_the_workers_and_analyzed_on_the_cluster(cluster, s3_endpoint, tmp_path,
                                                                                 monkeypatch):
    if s3_endpoint is None:
        pytest.skip("needs moto, boto3 and s3fs")
    import s3fs

    for k, v in S3_ENV.items():  # this process reads what the workers wrote (the event log: the same cache)
        monkeypatch.setenv(k, v)
    s3fs.S3FileSystem.clear_instance_cache()
    _wait_for_workers(cluster)
    spec = tmp_path / "sweep.toml"
    spec.write_text(SPEC.replace("seeds = [0, 1]", "seeds = [0]").replace('[[methods]]\nname = "syngen"\n', ""))
    root = f"s3://bucket/{tmp_path.name}"
    proc = _sweep(spec, root, cluster)
    with _ended(proc):
        stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr
    cells = load_spec(spec).cells(root)
    result = json.loads(stdout)
    assert (result["cells"], result["complete"], result["failed"]) == (len(cells), 2, 0)
    assert {c["state"] for c in cell_states(root)} == {"complete"}
    # each cell published once, by a Ray worker process (not the driver), with its manifest on the store
    published = [e for e in read_events(root) if e["event"] == "publish"]
    assert Counter(e["cell"] for e in published) == Counter({c.id: 1 for c in cells})
    assert all(int(e["worker"].rsplit(":", 1)[1]) != proc.pid for e in published)
    for c in cells:
        m = attnlens.open_run(c.path).manifest
        assert m["status"] == "complete" and (m["prompt"], m["seed"]) == (c.prompt, c.seed)

    table = tmp_path / "ray.parquet"
    done = subprocess.run([sys.executable, "-m", "attnlens", "analyze", root, "--executor", "ray", "--address",
                           cluster, "--metric", "entropy", "--out", str(table)], env=_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    from attnlens.analysis import analyze_runs

    import pandas as pd

    here = analyze_runs(sorted(c.path for c in cells), metrics=["entropy"])
    there = pd.read_parquet(table)
    assert len(there) == len(here) > 0
    assert sorted(there.value.round(6)) == sorted(here.value.round(6))
