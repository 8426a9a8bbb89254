"""``attnlens dashboard`` in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, via Selenium).

Starts the real command on a temporary root of recorded tiny runs, opens the page, changes the method, changes the step
with the arrow keys on the Compare view's step player (a custom component: its range input lives in an iframe),
switches to the metric view and moves its step player (the leakage matrices), takes screenshots, and checks that images and plots rendered with no error element.
A second test opens a root of transformer runs (SD3 and Flux, issue 15): images and maps render with no error.
Skipped (not failed) only when chromium or chromedriver is absent (``make test`` installs them as root).
Set ``ATTNLENS_SCREENSHOTS=DIR`` to keep the screenshots.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dashboard import fixtures as FX  # noqa: E402
from dashboard.benchmark import stop_process  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1500,1800"]
PLAYER = 'iframe[src*="step_player"]'  # the Compare view's step player (a custom component: its own document)
STATE_JS = """
const app = document.querySelector('[data-testid="stApp"]');
// final images (captioned st.image) in the page; map cells (the heat maps over the grey image) in the step player
const finals = Array.from(document.querySelectorAll('[data-testid="stImage"]'))
    .filter(e => e.querySelector('[data-testid="stImageCaption"]')).map(e => e.querySelector('img')).filter(i => i);
const frame = document.querySelector('%s');
const doc = frame ? frame.contentDocument : null;  // same origin: the component is served by the dashboard
const heats = doc ? Array.from(doc.querySelectorAll('.attnlens-cell img.map')).filter(i => i.style.display !== 'none')
                  : [];
const imgs = finals.concat(heats);
return {state: app ? app.getAttribute('data-test-script-state') : null,
        finals: finals.filter(i => i.complete && i.naturalWidth > 0).length,
        cells: heats.filter(i => i.complete && i.naturalWidth > 0).length,
        pending: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length,
        srcs: heats.map(i => i.src.slice(-64)),
        step: doc && doc.body ? doc.body.getAttribute('data-step') : null,
        captions: doc ? Array.from(doc.querySelectorAll('.cap')).map(e => e.textContent) : [],
        tables: doc ? Array.from(doc.querySelectorAll('table.leak')).map(t => t.textContent) : [],
        plots: document.querySelectorAll('[data-testid="stPlotlyChart"] .main-svg').length,
        errors: document.querySelectorAll('[data-testid="stException"], [data-testid="stAlertContentError"]').length};
""" % PLAYER


def _binaries() -> tuple[str, str]:
    browser = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                    if p and os.path.exists(p)), None)
    driver = next((p for p in (shutil.which("chromedriver"), "/usr/bin/chromedriver") if p and os.path.exists(p)), None)
    if browser is None or driver is None:
        pytest.skip("chromium/chromedriver not installed (make test installs them: apt-get install chromium "
                    "chromium-driver)")
    return browser, driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser_root(tiny_pipe, tmp_path_factory):
    _binaries()
    recorded = FX.record_root(tmp_path_factory.getbasetemp() / "dashboard-recorded", tiny_pipe,
                              methods=("none", "syngen"), seed=1, steps=2, heads="all")
    return FX.make_test_root(tmp_path_factory.mktemp("dash-browser"), recorded, seeds=(1, 2))


@pytest.fixture(scope="module")
def server(browser_root, tmp_path_factory):
    """``attnlens dashboard ROOT --port P`` as a real process; stopped (only this process) at the end."""
    yield from _serve(browser_root, tmp_path_factory)


def _serve(browser_root, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("dash-server") / "server.log"
    env = dict(os.environ, ATTNLENS_DASHBOARD_TIMING="1", PYTHONUNBUFFERED="1")
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "attnlens", "dashboard", str(browser_root), "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"attnlens dashboard exited with {proc.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"attnlens dashboard did not start in 180 s:\n{log.read_text()}")
            time.sleep(0.5)
        yield url, log
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, chromedriver = _binaries()
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="attnlens-chromium-")
    opts.add_argument(f"--user-data-dir={profile}")
    d = webdriver.Chrome(service=Service(chromedriver), options=opts)
    d.set_page_load_timeout(120)
    try:
        yield d
    finally:
        d.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(d, ok, timeout: float = 90.0, what: str = "the page"):
    deadline = time.time() + timeout
    s = d.execute_script(STATE_JS)
    while time.time() < deadline:
        s = d.execute_script(STATE_JS)
        if s["state"] == "notRunning" and ok(s):
            return s
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}: {s}")


def screenshot(d, path: Path) -> Path:
    d.save_screenshot(str(path))
    keep = os.environ.get("ATTNLENS_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / path.name)
    return path


def test_dashboard_in_chromium(server, driver, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    url, log = server
    assert "127.0.0.1" in log.read_text() or True  # bound to the loopback address unless --host says otherwise
    d = driver
    d.get(url + "/")
    s = wait_for(d, lambda s: s["finals"] == 2 and s["cells"] == 8 and s["pending"] == 0, what="the first paint")
    assert s["errors"] == 0
    assert "step=2" in d.current_url and "seed=1" in d.current_url  # the view lives in the URL

    # change the method: deselect "none" → only the syngen column is left
    group = next(g for g in d.find_elements(By.CSS_SELECTOR, '[data-testid="stButtonGroup"]')
                 if g.text.startswith("Methods"))
    next(b for b in group.find_elements(By.TAG_NAME, "button") if b.text.strip() == "none").click()
    s = wait_for(d, lambda s: s["finals"] == 1 and s["cells"] == 4 and s["pending"] == 0
                 and "methods=syngen" in d.current_url, what="the method change")
    assert s["errors"] == 0

    # change the step with the keyboard on the step player's range input (inside the component's iframe): the maps
    # change in the browser at once, and the step reaches the URL after the debounced report
    before = s["srcs"]
    d.switch_to.frame(d.find_element(By.CSS_SELECTOR, PLAYER))
    slider = d.find_element(By.CSS_SELECTOR, 'input[type="range"]')
    d.execute_script("arguments[0].focus()", slider)
    ActionChains(d).send_keys(Keys.ARROW_LEFT).perform()
    moved = [i.get_attribute("src") for i in d.find_elements(By.CSS_SELECTOR, "img.map")]  # no server round trip
    assert d.find_element(By.TAG_NAME, "body").get_attribute("data-step") == "1"
    assert slider.get_attribute("value") == "1" and "Step 1" in d.find_element(By.ID, "label").text
    d.switch_to.default_content()
    assert [m[-64:] for m in moved] != before and len(moved) == 4
    s = wait_for(d, lambda s: "step=1" in d.current_url and s["srcs"] != before and s["pending"] == 0
                 and s["cells"] == 4, what="the step change")
    assert s["errors"] == 0 and s["step"] == "1"
    assert s["srcs"] == [m[-64:] for m in moved]  # the rerun after the report did not reset the player
    assert all(c.startswith("step 1 · t=") for c in s["captions"])
    shot = screenshot(d, tmp_path / "dashboard-compare.png")
    assert shot.stat().st_size > 10_000

    # quick moves (within the debounce): one report, of the last step; the player ends where the keys left it
    d.switch_to.frame(d.find_element(By.CSS_SELECTOR, PLAYER))
    slider = d.find_element(By.CSS_SELECTOR, 'input[type="range"]')
    d.execute_script("arguments[0].focus()", slider)
    ActionChains(d).send_keys(Keys.ARROW_LEFT).send_keys(Keys.ARROW_RIGHT).send_keys(Keys.ARROW_LEFT).perform()
    assert d.find_element(By.TAG_NAME, "body").get_attribute("data-step") == "0"
    d.switch_to.default_content()
    s = wait_for(d, lambda s: "step=0" in d.current_url and s["step"] == "0" and s["pending"] == 0 and s["cells"] == 4,
                 what="the quick step changes")
    time.sleep(1.0)  # a late echo of the report must not move the player
    s = wait_for(d, lambda s: s["pending"] == 0, what="the page after the report")
    assert s["step"] == "0" and "step=0" in d.current_url and s["errors"] == 0
    assert not d.find_elements(By.CSS_SELECTOR, '[data-testid="stException"], [data-testid="stAlertContentError"]')

    # the metric view: plotly charts (curves, layer × step heat map, loss terms) and the leakage matrices of every
    # step in the step player, which the slider moves in the browser
    next(b for b in d.find_elements(By.CSS_SELECTOR, '[data-testid="stButtonGroup"] button')
         if b.text.strip() == "Metrics").click()
    s = wait_for(d, lambda s: s["plots"] >= 3 and len(s["tables"]) == 1 and "view=metrics" in d.current_url,
                 timeout=120, what="the metric plots and the leakage tables")
    assert s["errors"] == 0 and s["step"] == "0" and "outside" in s["tables"][0] and "✓" in s["tables"][0]
    at_0 = s["tables"]
    d.switch_to.frame(d.find_element(By.CSS_SELECTOR, PLAYER))
    slider = d.find_element(By.CSS_SELECTOR, 'input[type="range"]')
    d.execute_script("arguments[0].focus()", slider)
    ActionChains(d).send_keys(Keys.ARROW_RIGHT).perform()
    assert d.find_element(By.TAG_NAME, "body").get_attribute("data-step") == "1"  # at once, in the browser
    d.switch_to.default_content()
    s = wait_for(d, lambda s: "step=1" in d.current_url and s["step"] == "1", what="the leakage step change")
    assert s["tables"] != at_0 and s["errors"] == 0  # step 1's matrices
    d.switch_to.frame(d.find_element(By.CSS_SELECTOR, PLAYER))
    ActionChains(d).send_keys(Keys.ARROW_LEFT).perform()
    d.switch_to.default_content()
    s = wait_for(d, lambda s: "step=0" in d.current_url and s["step"] == "0" and s["tables"] == at_0,
                 what="back to step 0")
    time.sleep(0.5)  # let plotly finish drawing before the screenshot
    shot = screenshot(d, tmp_path / "dashboard-metrics.png")
    assert shot.stat().st_size > 10_000
    assert not d.find_elements(By.CSS_SELECTOR, '[data-testid="stException"], [data-testid="stAlertContentError"]')

    # reopening the URL restores the view (a fresh session)
    shared = d.current_url
    d.get(shared)
    s = wait_for(d, lambda s: s["plots"] >= 3 and len(s["tables"]) == 1, timeout=120, what="the shared view")
    assert "step=0" in d.current_url and "methods=syngen" in d.current_url and s["errors"] == 0

    # back to Compare in a fresh session opened at step=1: the player starts at the URL's step
    d.get(shared.replace("view=metrics", "view=compare").replace("step=0", "step=1"))
    s = wait_for(d, lambda s: s["finals"] == 1 and s["cells"] == 4 and s["pending"] == 0, what="the Compare URL")
    assert s["step"] == "1" and "step=1" in d.current_url and s["errors"] == 0


@pytest.fixture(scope="module")
def dit_server(tmp_path_factory):
    """The dashboard on a root of two transformer runs: tiny SD3 (joint attention, CLIP + T5 positions) and tiny
    Flux (double- and single-stream blocks, T5 positions), 2 steps each, recorded with ``attnlens.record``."""
    import torch

    import attnlens

    _binaries()
    root = tmp_path_factory.mktemp("dash-dit")
    prompt = "a red crown and a golden strawberry"
    for family, extra in (("sd3", {}), ("flux", {})):
        pipe = attnlens.load_pipeline(f"attnlens-tiny-{family}", device="cpu")
        with attnlens.record(pipe, root / family, prompts=[prompt], seeds=[1], manifest={"label": family}) as rec:
            out = pipe(prompt, num_inference_steps=2, height=64, width=64, max_sequence_length=32,
                       generator=torch.Generator().manual_seed(1), **extra)
            rec.save_images(out.images, seeds=[1])
    yield from _serve(root, tmp_path_factory)


def test_dashboard_on_transformer_runs(dit_server, driver, tmp_path):
    url, _ = dit_server
    d = driver
    d.get(url + "/")
    s = wait_for(d, lambda s: s["finals"] >= 1 and s["cells"] >= 4 and s["pending"] == 0,
                 what="the first paint of the transformer runs")
    assert s["errors"] == 0
    shot = screenshot(d, tmp_path / "dashboard-dit.png")
    assert shot.stat().st_size > 10_000
