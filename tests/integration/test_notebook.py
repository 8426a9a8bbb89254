"""docs/notebooks/quickstart.ipynb runs (issue 18): executed with nbclient on the embedded shapes model with few
steps, in a kernel of this interpreter; no cell errors, and every cell that shows maps has an image output."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "docs" / "notebooks" / "quickstart.ipynb"
MAP_CELLS = (".show(", ".word_heatmap(", "figures.draw(")


def _has_image(outputs) -> bool:
    for o in outputs:
        data = o.get("data", {})
        if "image/png" in data or "<img" in data.get("text/html", ""):
            return True
    return False


def test_quickstart_notebook_runs_and_shows_maps(tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    env = {"ATTNLENS_NOTEBOOK_MODEL": "attnlens-shapes", "ATTNLENS_NOTEBOOK_STEPS": "3",
           "ATTNLENS_NOTEBOOK_ROOT": str(tmp_path / "runs"), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_cmd=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"])
    client = nbclient.NotebookClient(nb, km=km, timeout=120, allow_errors=True,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    cells = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in cells for o in c.outputs if o.output_type == "error"]
    assert not errors, [f"{e['ename']}: {e['evalue']}" for e in errors]
    shown = [c for c in cells if any(k in c.source for k in MAP_CELLS)]
    assert len(shown) >= 4
    for c in shown:
        assert _has_image(c.outputs), c.source
    player = next(c for c in cells if "notebook.player(" in c.source)
    bundle = player.outputs[0]["data"]
    assert "application/vnd.jupyter.widget-view+json" in bundle and "<img" in bundle["text/html"]
    run_cell = next(c for c in cells if "attnlens.sample(" in c.source)
    # the run's display (a warning on stderr, e.g. a 50-step schedule run at 3 steps, may come before it)
    html = next(o for o in run_cell.outputs if "data" in o)["data"]["text/html"]
    assert "a red circle and a blue square" in html and "syngen" in html and "<img" in html
