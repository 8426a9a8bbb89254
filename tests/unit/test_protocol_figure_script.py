"""analyses/10_protocol_differences.py: the protocol's test tables of two models drawn as one forest plot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

SCRIPT = Path(__file__).resolve().parents[2] / "analyses" / "10_protocol_differences.py"
COLUMNS = ["metric", "role", "variant", "n", "dropped", "mean", "low", "high", "diff", "diff_low", "diff_high",
           "higher_is"]


def _write(folder: Path, part: str, rows) -> None:
    (folder / part).mkdir(parents=True, exist_ok=True)
    pd.DataFrame([(m, "image", v, 10, 0, 0.5, 0.4, 0.6, d, lo, hi, "worse") for m, v, d, lo, hi in rows],
                 columns=COLUMNS).to_csv(folder / part / "binding.csv", index=False)


def test_both_models_methods_then_interventions(tmp_path):
    for name, shift in (("bow", -0.5), ("shapes", 0.0)):
        d = tmp_path / name
        _write(d, "test", [("misbinding", "none", None, None, None), ("misbinding", "syngen", 0.0, -0.1, 0.1),
                           ("misbinding", "attend-excite", -0.1, -0.2, 0.0)])
        _write(d, "test-mask", [("misbinding", "none", None, None, None),
                                ("misbinding", "none + mask-gt", shift, shift - 0.1, shift + 0.1)])
    out = tmp_path / "fig"
    r = subprocess.run([sys.executable, str(SCRIPT), "--model", f"bow={tmp_path / 'bow'}", "--model",
                        f"shapes={tmp_path / 'shapes'}", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (out / "differences.pdf").read_bytes()[:4] == b"%PDF"
    rows = pd.read_csv(out / "differences.csv")
    assert list(rows[rows.model == "bow"]["variant"]) == ["syngen", "attend-excite", "none + mask-gt"]
    assert rows.set_index(["model", "variant"]).loc[("bow", "none + mask-gt"), "diff"] == -0.5
    assert set(rows["metric"]) == {"misbinding"}  # only the metrics the tables have


def test_a_folder_without_a_test_table_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT), "--model", f"x={tmp_path}", "--out", str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "has no test/binding.csv" in r.stderr
