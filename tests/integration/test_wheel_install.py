"""A non-editable install ships and serves the dashboard: the project is built into a wheel, installed with
``pip install --no-deps --no-index`` into a fresh venv that sees this environment's dependencies but not its
(editable) attnlens, and ``<venv>/bin/attnlens dashboard ROOT`` is started from outside the source tree. The test
waits for Streamlit's health endpoint, fetches the page, runs the page script once over Streamlit's websocket (as a
browser does on first load) and fetches the step player the script declares, then stops the server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import site
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dashboard import fixtures as FX  # noqa: E402

pytestmark = pytest.mark.slow

PACKAGES = ("attnlens", "dashboard")  # the top-level packages the wheel must hold, with all their files
STEP_PLAYER = "dashboard/step_player/index.html"
SERVER_START_S = 60.0  # torch and the analysis are imported before the server listens


def _run(cmd: list[str], *, timeout: float, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _copy_sources(dst: Path) -> Path:
    """What the build reads: the top-level files (pyproject.toml, README.md, ...) and the top-level packages. A copy,
    so the build's egg-info and build/ folders land outside the checkout."""
    dst.mkdir()
    for p in REPO.iterdir():
        if p.is_file() and not p.name.startswith("."):
            shutil.copy2(p, dst / p.name)
        elif p.is_dir() and (p / "__init__.py").is_file():
            shutil.copytree(p, dst / p.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    return dst


def _dependency_dirs() -> list[str]:
    """The site-packages of the environment running the tests (where the dependencies are installed), symlinks
    resolved and deduplicated."""
    paths = sysconfig.get_paths()
    dirs: list[str] = []
    for d in [paths["purelib"], paths["platlib"], *site.getsitepackages()]:
        r = os.path.realpath(d)
        if os.path.isdir(r) and r not in dirs:
            dirs.append(r)
    return dirs


def _clean_env() -> dict[str, str]:
    """This environment without anything that would put the checkout or the test venv's attnlens on the path."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH", "VIRTUAL_ENV",
                        "__PYVENV_LAUNCHER__", "ATTNLENS_DASHBOARD_APP", "ATTNLENS_DASHBOARD_ROOT")}
    env.update(PYTHONNOUSERSITE="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", HF_HUB_OFFLINE="1",
               STREAMLIT_BROWSER_GATHER_USAGE_STATS="false", TOKENIZERS_PARALLELISM="false")
    return env


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def _wait_healthy(proc: subprocess.Popen, base: str, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the dashboard exited {proc.returncode} before serving:\n{log.read_text()}")
        try:
            status, body = _get(base + "/_stcore/health", timeout=2)
            if status == 200 and body.strip() == b"ok":
                return
        except OSError:
            pass
        time.sleep(0.3)
    pytest.fail(f"the dashboard was not healthy after {SERVER_START_S:.0f} s:\n{log.read_text()}")


def _run_page_script(port: int, timeout: float = 60.0) -> tuple[int, list[str], list[str]]:
    """One script run over Streamlit's websocket, as a browser's first load starts it: the finish status, the
    element kinds the page sent and the texts of any exception elements."""
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ClientState_pb2 import ClientState
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
    from websockets.sync.client import connect

    kinds: list[str] = []
    errors: list[str] = []
    with connect(f"ws://127.0.0.1:{port}/_stcore/stream", subprotocols=["streamlit"],
                 origin=f"http://127.0.0.1:{port}", open_timeout=10) as ws:
        msg = BackMsg()
        msg.rerun_script.CopyFrom(ClientState(query_string=""))
        ws.send(msg.SerializeToString())
        deadline = time.monotonic() + timeout
        while True:
            fwd = ForwardMsg()
            fwd.ParseFromString(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            kind = fwd.WhichOneof("type")
            if kind == "script_finished":
                return fwd.script_finished, kinds, errors
            if kind == "delta" and fwd.delta.WhichOneof("type") == "new_element":
                element = fwd.delta.new_element.WhichOneof("type")
                kinds.append(element)
                if element == "exception":
                    ex = fwd.delta.new_element.exception
                    errors.append(f"{ex.type}: {ex.message}\n" + "\n".join(ex.stack_trace))


def test_wheel_installs_and_serves_the_dashboard(tiny_pipe, tmp_path, tmp_path_factory):
    # the root: real tiny recordings (the same ones tests/integration/test_dashboard.py records, shared per session)
    root = FX.record_root(tmp_path_factory.getbasetemp() / "dashboard-recorded", tiny_pipe,
                          methods=("none", "syngen"), seed=1, steps=2, heads="all")
    env = _clean_env()

    # 1. build the wheel offline, from a copy of the sources (setuptools of this environment, no isolation)
    src = _copy_sources(tmp_path / "src")
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(wheels), str(src)], timeout=180, env=env, cwd=tmp_path)
    (wheel,) = wheels.glob("attnlens-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"dashboard/__init__.py", "dashboard/app.py", "dashboard/ui.py", STEP_PLAYER} <= names
    expected = sorted(p.relative_to(src).as_posix() for pkg in PACKAGES for p in (src / pkg).rglob("*")
                      if p.is_file() and not p.name.startswith("."))
    assert [n for n in expected if n not in names] == [], "files of the packages missing from the wheel"

    # 2. a fresh venv: install the wheel alone (pip sees nothing else), then let it see the dependencies
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], timeout=120, env=env)
    py = venv / "bin" / "python"
    fresh_site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           timeout=60, env=env).stdout.strip()).resolve()
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q", str(wheel)],
         timeout=180, env=env, cwd=tmp_path)
    deps = [d for d in _dependency_dirs() if Path(d) != fresh_site]
    # a .pth adds these folders to the path; the .pth files inside them (the editable attnlens finder) are not run
    (fresh_site / "attnlens_test_deps.pth").write_text("\n".join(deps) + "\n")

    outside = tmp_path / "elsewhere"  # cwd outside the source tree: nothing found relative to it
    outside.mkdir()
    probe = ("import json, attnlens, dashboard, importlib.metadata as md; "
             "print(json.dumps({'attnlens': attnlens.__file__, 'dashboard': dashboard.__file__, "
             "'app': str(dashboard.APP), 'dist': str(md.distribution('attnlens').locate_file(''))}))")
    where = json.loads(_run([str(py), "-c", probe], timeout=120, env=env, cwd=outside).stdout.strip().splitlines()[-1])
    for key in ("attnlens", "dashboard", "app"):
        assert Path(where[key]).resolve().is_relative_to(fresh_site), (key, where[key], fresh_site)
    assert Path(where["dist"]).resolve() == fresh_site, where
    assert (fresh_site / STEP_PLAYER).read_bytes() == (REPO / STEP_PLAYER).read_bytes()

    attnlens_bin = venv / "bin" / "attnlens"
    printed = _run([str(attnlens_bin), "dashboard", str(root), "--print-command"], timeout=120, env=env,
                   cwd=outside).stdout
    assert f"streamlit run {fresh_site / 'dashboard' / 'app.py'} " in printed, printed

    # 3. serve it, fetch the page, run the page script once, fetch the step player the script declared
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(attnlens_bin), "dashboard", str(root), "--port", str(port)], cwd=outside,
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_healthy(proc, base, log)
        status, page = _get(base + "/")
        assert status == 200 and b"<html" in page.lower() and b'id="root"' in page, page[:300]

        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        finished, kinds, errors = _run_page_script(port)
        assert errors == [], errors
        assert finished == ForwardMsg.FINISHED_SUCCESSFULLY, (finished, log.read_text())
        assert "imgs" in kinds and "component_instance" in kinds, kinds  # final images and the step player
        status, player = _get(base + "/component/dashboard.ui.step_player/index.html")
        assert status == 200 and player == (fresh_site / STEP_PLAYER).read_bytes()
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
    served = log.read_text()
    assert f"attnlens dashboard: {root.resolve()} at http://localhost:{port}" in served, served
    assert "Traceback" not in served, served

    # 4. a wheel without the dashboard (what `pip install attnlens` gave before): one line and a hint, exit 2
    shutil.rmtree(fresh_site / "dashboard")
    broken = subprocess.run([str(attnlens_bin), "dashboard", str(root), "--print-command"], capture_output=True,
                            text=True, timeout=120, env=env, cwd=outside)
    assert broken.returncode == 2, (broken.stdout, broken.stderr)
    assert "error: the dashboard package is not installed" in broken.stderr and "hint: " in broken.stderr
    assert "Traceback" not in broken.stderr and broken.stdout == "", broken


def test_find_app_override_and_a_shadowing_package(tmp_path, monkeypatch, capsys):
    """``$ATTNLENS_DASHBOARD_APP`` wins when it names a file; one naming no file falls back to the installed
    dashboard with a warning; another package named ``dashboard`` is reported, not served."""
    import types

    import dashboard
    from attnlens.cli import main
    from attnlens.cli.dashboard import APP_ENV, find_app

    own = tmp_path / "my_app.py"
    own.write_text("")
    monkeypatch.setenv(APP_ENV, str(own))
    assert find_app() == own.resolve()
    monkeypatch.setenv(APP_ENV, str(tmp_path / "missing.py"))
    assert find_app() == dashboard.APP
    assert f"${APP_ENV}={tmp_path / 'missing.py'} is not a file" in capsys.readouterr().err
    monkeypatch.delenv(APP_ENV)
    other = types.ModuleType("dashboard")
    other.__file__ = str(tmp_path / "dashboard" / "__init__.py")
    monkeypatch.setitem(sys.modules, "dashboard", other)
    assert main(["dashboard", str(tmp_path), "--print-command"]) == 2
    captured = capsys.readouterr()
    assert "is not attnlens's dashboard" in captured.err and "hint: another package named" in captured.err
    assert captured.out == "" and "Traceback" not in captured.err
