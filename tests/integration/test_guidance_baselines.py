"""The baseline methods on the embedded model: repeated updates at a fixed step lower each loss, and
``attnlens record --method NAME`` runs end to end."""

from __future__ import annotations

import pytest
import torch

import attnlens
from attnlens.parse import parse_prompt
from attnlens.sampler import guidance_forward
from conftest import PROMPT

BASELINES = ["conform", "ebama", "a-star", "predicated"]


@pytest.mark.parametrize("name", BASELINES)
def test_repeated_updates_at_a_fixed_step_lower_the_loss(tiny_pipe, name):
    method = attnlens.get_method(name, add_previous_attention_maps=False) if name == "conform" else \
        attnlens.get_method(name)
    parse = parse_prompt(PROMPT)
    pipe = tiny_pipe
    pipe.scheduler.set_timesteps(50)
    t = pipe.scheduler.timesteps[0]
    z = pipe.prepare_latents(1, 4, 64, 64, torch.float32, torch.device("cpu"), torch.Generator().manual_seed(0))
    with torch.no_grad():
        cond, _ = pipe.encode_prompt(PROMPT, torch.device("cpu"), 1, False)
    losses, step_size = [], None
    with attnlens.record(pipe, None) as rec:
        rec.latent_hw = tuple(z.shape[-2:])
        rec.need_live = set(method.layers(rec.resolutions()))
        for it in range(6):
            leaf, out = guidance_forward(pipe, rec, method, parse, z, t, cond, step=0, iteration=it)
            losses.append(float(out.loss.detach()))
            grad = torch.autograd.grad(out.loss, [leaf])[0]
            assert torch.isfinite(grad).all() and grad.abs().sum() > 0
            if step_size is None:
                step_size = 0.01 * float(z.norm()) / float(grad.norm())
            z = leaf.detach() - step_size * grad
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
