"""Benchmark of the dashboard: first paint and step-slider redraw on a root of tiny runs (``docs/benchmarks.md``).

    python -m dashboard.benchmark                      # records 5 tiny runs, clones them to 100, measures
    python -m dashboard.benchmark --root runs/ --json out/dashboard-bench.json

Measures, on a root of ``--runs`` runs (default 100: the five methods of one recorded (prompt, seed) unit cloned
under 20 seeds, so every run is a real 4-step tiny recording):

* **server** (``streamlit.testing`` AppTest, in this process after the imports ``attnlens dashboard`` preloads):
  the first script run of a session on cold caches (the whole page: run index of the root, the unit's infos,
  the maps of every step for the Compare view's step player, images) and the script runs after a step change
  (the step player's debounced report, in both views. AppTest reruns the whole script;
  the real page reruns only the fragment, so this is an upper bound), for the Compare and the Metrics views; plus
  the size of the step player's arguments (the maps of every step, sent once per selection);
* **browser** (headless Chromium via Selenium, when installed): ``attnlens dashboard ROOT`` in a subprocess;
  first paint = navigation start → the final images and the map cells (inside the step player's iframe) loaded and
  the script idle, on a fresh profile (cold) and on reloads (each reload is a new session). Compare view: an arrow
  key on the step player's range input → the new maps decoded and the next animation frame, timed inside the
  player's document (``slider_redraw_compare``), the same seen from Selenium (``..._wall``: adds the WebDriver
  round trips), and → the step reported and in the URL, the script idle (``slider_report_synced_compare``, not on
  the redraw's path). Metrics view: the same on its step player, whose frames are the leakage tables of every
  step (``slider_redraw_metrics``, ...);
* with ``--baseline``, the Streamlit-slider timings on a throwaway Streamlit page of the same layout (sidebar filters,
  controls, a step slider in a fragment, five columns of an image and an HTML cell) that computes nothing: what a
  Streamlit rerun itself costs on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


import attnlens.analysis  # noqa: F401  (what `attnlens dashboard` preloads, imported before any timing)
import attnlens.compare  # noqa: F401
import attnlens.figures  # noqa: F401
import zarr  # noqa: F401
from dashboard.data import scan_root
from dashboard.fixtures import benchmark_root, record_root

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

METHODS = ("none", "syngen", "syngen-entropy", "attend-excite", "divide-bind", "initno", "structured")
PLAYER = 'iframe[src*="step_player"]'  # the Compare view's step player (custom component, same origin)
STATE_JS = """
const app = document.querySelector('[data-testid="stApp"]');
const finals = Array.from(document.querySelectorAll('[data-testid="stImage"]'))
    .filter(e => e.querySelector('[data-testid="stImageCaption"]')).map(e => e.querySelector('img')).filter(i => i);
const frame = document.querySelector('%s');
const doc = frame ? frame.contentDocument : null;
// map cells: in the step player's document (the dashboard), or HTML cells in the page (the baseline page)
const heats = doc ? Array.from(doc.querySelectorAll('.attnlens-cell img.map')).filter(i => i.style.display !== 'none')
                  : Array.from(document.querySelectorAll('.attnlens-cell img[alt]:not([alt=""])'));
const imgs = finals.concat(heats);
return {state: app ? app.getAttribute('data-test-script-state') : null,
        loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length, total: imgs.length, cells: heats.length,
        srcs: heats.map(i => i.src.slice(-64)), now: performance.now(),
        tables: doc ? Array.from(doc.querySelectorAll('table.leak')).map(t => t.textContent) : [],
        step: doc && doc.body ? doc.body.getAttribute('data-step') : null, url: location.search,
        plots: document.querySelectorAll('[data-testid="stPlotlyChart"] .main-svg').length,
        text: arguments[0] ? Array.from(document.querySelectorAll('[data-testid="stMarkdownContainer"] strong'))
                             .map(e => e.textContent).join(" | ") : ""};
""" % PLAYER
# Installed in the step player's document: times each arrow key on its range input, from the keydown to the new maps
# decoded (img.decode() of every map on view, after the player's own input handler swapped their src) and the next
# animation frame.
PROBE_JS = """
const slider = document.querySelector('input[type="range"]');
if (!window.__attnlensProbe) {
  window.__attnlensProbe = {t0: null, t1: null, step: null};
  slider.addEventListener('keydown', () => { window.__attnlensProbe = {t0: performance.now(), t1: null, step: null}; },
                          true);
  slider.addEventListener('input', () => {
    const p = window.__attnlensProbe;
    const imgs = Array.from(document.querySelectorAll('img.map')).filter(i => i.style.display !== 'none');
    Promise.all(imgs.map(i => i.decode().catch(() => null))).then(() => requestAnimationFrame(() => {
      p.step = document.body.getAttribute('data-step');
      p.t1 = performance.now();
    }));
  });
}
slider.focus();
return {value: parseInt(slider.value, 10), max: parseInt(slider.max, 10)};
"""


def _ms(xs):
    xs = [x * 1000 for x in xs]
    return {"median_ms": round(statistics.median(xs), 1), "min_ms": round(min(xs), 1), "max_ms": round(max(xs), 1),
            "n": len(xs)}


def build_root(args) -> Path:

    if args.root:
        return Path(args.root)
    work = Path(tempfile.mkdtemp(prefix="attnlens-dash-bench-"))
    source = Path(args.source) if args.source else None
    if source is None:
        t = time.perf_counter()
        source = record_root(work / "recorded", methods=METHODS, seed=1, steps=4, heads="mean")
        print(f"recorded {len(METHODS)} tiny runs (4 steps) in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return benchmark_root(work / "root", source, n_runs=args.runs)


def server_side(root: Path, moves: int) -> dict:
    """AppTest timings of full script runs (cold first run, then slider moves)."""
    import pandas  # noqa: F401
    import plotly.graph_objects  # noqa: F401
    from streamlit.testing.v1 import AppTest

    os.environ["ATTNLENS_DASHBOARD_ROOT"] = str(root)
    out = {}
    for view in ("compare", "metrics"):
        at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=600)
        at.query_params["view"] = view
        t = time.perf_counter()
        at.run()
        first = time.perf_counter() - t
        assert not at.exception, [e.value for e in at.exception]
        time.sleep(1.0)  # let the background reads of the other steps finish (as a user would)
        # the step player (maps in Compare, leakage tables in Metrics): its data of every step, then the script run
        # after each report
        comp = next(c for c in at.get("component_instance") if c.proto.component_name.endswith("step_player"))
        steps = [int(x) for x in json.loads(comp.proto.json_args)["steps"]]
        payload = len(comp.proto.json_args)
        seq = [steps[(len(steps) - 2 - i) % len(steps)] for i in range(moves)]
        times = []
        for i, s in enumerate(seq):
            t = time.perf_counter()
            _report_step(at, s, i + 1)
            times.append(time.perf_counter() - t)
            assert not at.exception, [e.value for e in at.exception]
        out[view] = {"first_run_s": round(first, 3), "slider_script_run": _ms(times),
                     "player_payload_bytes": payload, "steps": len(steps)}
    return out


def _report_step(at, step: int, seq: int):
    """What the step player sends after a move (AppTest has no setter for a custom component's value)."""
    from streamlit.proto.WidgetStates_pb2 import WidgetState

    comp = next(c for c in at.get("component_instance") if c.proto.component_name.endswith("step_player"))
    states = at._tree.get_widget_states()
    states.widgets.append(WidgetState(id=comp.proto.id, json_value=json.dumps({"step": step, "seq": seq})))
    return at._run(states)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BASELINE_APP = """
import numpy as np
import streamlit as st

st.set_page_config(layout="wide")
with st.sidebar:
    for name in ("Prompt", "Seed", "Method", "Model", "Status"):
        st.multiselect(name, ["a", "b"])
cols = st.columns(6)
for i, c in enumerate(cols):
    c.selectbox(f"control {i}", ["x", "y"])


@st.fragment
def stepped():
    v = st.select_slider("Step", options=[0, 1, 2, 3, 4], value=4)
    for i, c in enumerate(st.columns(5)):
        with c:
            st.markdown(f"**method {i}**")
            st.image(np.full((320, 320, 3), 90 + 20 * i, dtype="uint8"), caption="final image", width="stretch")
            img = '<img alt="t" src="data:image/gif;base64,R0lGODlhAQABAIAAAP///wAAACH5BAEAAAAALAAAAAABAAEAAAICRAEAOw==">'
            st.html(f'<div class="attnlens-cell">{img * (v + 1)}</div>')
    st.caption("scale")


stepped()
"""


def browser_side(root: Path | None, reloads: int, moves: int) -> dict | None:
    """Browser timings of ``attnlens dashboard root``; ``root=None`` measures the same things on a page of the
    same layout that computes nothing (Streamlit's own floor on this machine)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_bin = shutil.which("chromedriver")
    if not browser or not driver_bin:
        print("chromium/chromedriver not installed: browser timings skipped", file=sys.stderr)
        return None
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    port = _free_port()
    log = Path(tempfile.mkdtemp()) / "server.log"
    env = dict(os.environ, ATTNLENS_DASHBOARD_TIMING="1", PYTHONUNBUFFERED="1")
    if root is None:
        app = log.parent / "baseline_app.py"
        app.write_text(BASELINE_APP)
        cmd = [sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(port), "--server.headless",
               "true", "--browser.gatherUsageStats", "false", "--server.address", "127.0.0.1"]
    else:
        cmd = [sys.executable, "-m", "attnlens", "dashboard", str(root), "--port", str(port)]
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
    url = f"http://127.0.0.1:{port}/"
    t = time.perf_counter()
    try:
        while True:
            try:
                with urllib.request.urlopen(url + "_stcore/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.perf_counter() - t > 300:
                    raise RuntimeError(f"dashboard did not start:\n{log.read_text()}")
                time.sleep(0.2)
        startup = time.perf_counter() - t
        profile = tempfile.mkdtemp(prefix="attnlens-chromium-")
        opts = webdriver.ChromeOptions()
        opts.binary_location = browser
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--window-size=1500,1800", f"--user-data-dir={profile}"):
            opts.add_argument(flag)
        d = webdriver.Chrome(service=Service(driver_bin), options=opts)
        d.set_page_load_timeout(300)

        def wait(cond, timeout=300.0, text=False):
            end = time.perf_counter() + timeout
            while time.perf_counter() < end:
                s = d.execute_script(STATE_JS, text)
                if s["state"] == "notRunning" and cond(s):
                    return s
                time.sleep(0.01)
            raise TimeoutError(str(s)[:500])

        def painted(s):
            return s["cells"] >= 1 and s["loaded"] == s["total"]

        loads = []
        for _ in range(reloads + 1):  # the first one on a fresh profile and cold server caches
            d.get(url)
            s = wait(painted)
            loads.append(s["now"] / 1000.0)  # performance.now() is relative to the navigation start
        result = {"server_startup_s": round(startup, 2), "first_paint_cold_s": round(loads[0], 3),
                  "first_paint_reload": _ms(loads[1:])}
        # slider moves in the Compare view
        time.sleep(1.0)
        if root is None:  # the baseline page: a Streamlit slider in a fragment
            slider = d.find_element(By.CSS_SELECTOR, '[data-testid="stSlider"] input[type="range"]')
            times = []
            for i in range(moves):
                before = d.execute_script(STATE_JS, False)["cells"]
                d.execute_script("arguments[0].focus()", slider)
                t = time.perf_counter()
                ActionChains(d).send_keys(Keys.ARROW_LEFT if i % 8 < 4 else Keys.ARROW_RIGHT).perform()
                wait(lambda s: s["cells"] != before and painted(s))
                times.append(time.perf_counter() - t)
                time.sleep(0.3)
            result["slider_redraw_compare"] = _ms(times)
            d.quit()
            shutil.rmtree(profile, ignore_errors=True)
            return result
        result.update(_player_moves(d, wait, painted, moves, "compare"))
        # slider moves in the Metrics view: the same player, drawing the leakage tables of every step
        d.get(url + "?view=metrics")
        wait(lambda s: s["plots"] >= 3 and len(s["tables"]) >= 1, timeout=600)
        time.sleep(1.0)
        result.update(_player_moves(d, wait, lambda s: len(s["tables"]) >= 1, moves, "metrics"))
        d.quit()
        shutil.rmtree(profile, ignore_errors=True)
        runs = [float(line.split(":")[-1].split()[0]) for line in log.read_text().splitlines()
                if line.startswith("attnlens-dashboard ")]
        result["server_runs_s"] = {"first": runs[0] if runs else None,
                                   "median": statistics.median(runs) if runs else None}
        return result
    finally:
        stop_process(proc)
        shutil.rmtree(log.parent, ignore_errors=True)



def stop_process(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """Terminate a server process started here (only that process), killing it if it has not exited in time."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()

def _player_moves(d, wait, painted, moves: int, view: str) -> dict:
    """Arrow keys on the step player's range input (inside its iframe). Per move: ``in_page`` = keydown → the new
    maps decoded (or leakage tables drawn) and the next animation frame (``performance.now()`` in the player's document); ``wall`` = Selenium's
    key press → the new maps seen loaded by a poll (adds the WebDriver round trips); ``synced`` = key press → the
    debounced report processed (the step in the URL and the script idle), off the redraw's path."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    in_page, wall, synced = [], [], []
    frame = d.find_element(By.CSS_SELECTOR, PLAYER)
    for i in range(moves):
        s0 = d.execute_script(STATE_JS, False)
        before = (s0["srcs"], s0["tables"])
        d.switch_to.frame(frame)
        pos = d.execute_script(PROBE_JS)
        left = pos["value"] > 0 and (i % 8 < 4 or pos["value"] >= pos["max"])
        target = str(d.execute_script("return window.attnlensPlayer.step()") or "")
        t = time.perf_counter()
        ActionChains(d).send_keys(Keys.ARROW_LEFT if left else Keys.ARROW_RIGHT).perform()
        end = time.perf_counter() + 30
        probe = None
        while time.perf_counter() < end:
            probe = d.execute_script("return window.__attnlensProbe")
            if probe and probe.get("t1") is not None:
                break
            time.sleep(0.002)
        seen = time.perf_counter() - t
        if not probe or probe.get("t1") is None:
            raise TimeoutError(f"the step player did not redraw: {probe}")
        step = probe["step"]
        assert step != target, (step, target)
        d.switch_to.default_content()
        s = d.execute_script(STATE_JS, False)
        assert (s["srcs"], s["tables"]) != before and s["step"] == step, (s, before)
        in_page.append((probe["t1"] - probe["t0"]) / 1000.0)
        wall.append(seen)
        wait(lambda s: f"step={step}" in s["url"] and painted(s) and s["step"] == step, timeout=60)
        synced.append(time.perf_counter() - t)
        time.sleep(0.3)
    return {f"slider_redraw_{view}": _ms(in_page), f"slider_redraw_{view}_wall": _ms(wall),
            f"slider_report_synced_{view}": _ms(synced)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", help="an existing root of runs (default: build one)")
    ap.add_argument("--source", help="recorded runs to clone (default: record 5 tiny runs)")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--reloads", type=int, default=5)
    ap.add_argument("--moves", type=int, default=8)
    ap.add_argument("--no-browser", action="store_true")
    ap.add_argument("--baseline", action="store_true",
                    help="also time a page of the same layout that computes nothing (Streamlit's floor here)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the root this script built (default: delete it)")
    args = ap.parse_args(argv)
    root = build_root(args)
    try:
        return _measure(args, root)
    finally:
        if not args.root and not args.keep:
            shutil.rmtree(root.parent, ignore_errors=True)


def _measure(args, root: Path) -> int:

    t = time.perf_counter()
    n = len(scan_root(root))
    scan = time.perf_counter() - t
    load = os.getloadavg()
    res = {"root": str(root), "runs": n, "scan_cold_s": round(scan, 3), "cpus": os.cpu_count(),
           "machine": platform.platform(), "loadavg_before": [round(x, 2) for x in load]}
    res["server"] = server_side(root, args.moves)
    if not args.no_browser:
        res["browser"] = browser_side(root, args.reloads, args.moves)
        if args.baseline:
            res["browser_baseline"] = browser_side(None, args.reloads, args.moves)
    res["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
