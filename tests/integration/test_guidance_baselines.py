"""The baseline methods on the embedded model: repeated updates at a fixed step lower each loss, and
``attnlens record --method NAME`` runs end to end."""

from __future__ import annotations

import pytest

import attnlens
from attnlens.parse import parse_prompt
from conftest import PROMPT, descend_at_fixed_step

BASELINES = ["conform", "ebama", "a-star", "predicated"]


@pytest.mark.parametrize("name", BASELINES)
def test_repeated_updates_at_a_fixed_step_lower_the_loss(tiny_pipe, name):
    method = attnlens.get_method(name, add_previous_attention_maps=False) if name == "conform" else \
        attnlens.get_method(name)
    losses = descend_at_fixed_step(tiny_pipe, method, parse_prompt(PROMPT))
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("name", BASELINES)
def test_record_runs_end_to_end(run_cli, tmp_path, name):
    out = tmp_path / name
    code, stdout, stderr = run_cli("record", PROMPT, "--method", name, "--n-steps", "3", "-o", str(out))
    assert code == 0, stderr
    manifests = list(out.rglob("manifest.json"))
    assert len(manifests) == 1, manifests
    run = attnlens.open_run(manifests[0].parent)
    assert run.manifest["method"]["name"] == name
    assert "guidance" in run.manifest["records"]
    assert "loss" in run.scalars()
