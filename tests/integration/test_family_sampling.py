"""Guided sampling on every family (issue 15, guidance): one loop with per-family adapters.

Per family: ``method="none"`` gives the latents of ``pipe(...)`` bit for bit; each built-in method lowers its own
loss under repeated updates at a fixed step (with the family's default layers); a guided ``attnlens.sample`` writes a
readable run.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnlens
from attnlens.adapters import adapter_for, pipeline_family
from attnlens.parse import parse_prompt
from attnlens.sampler import family_method, guidance_forward, guided_sample
from conftest import PROMPT

GUIDED = ["syngen", "syngen-entropy", "attend-excite", "divide-bind"]


def _pipe_latents(pipe, **kwargs):
    return pipe(PROMPT, generator=torch.Generator().manual_seed(0), output_type="latent", **kwargs).images


@pytest.mark.parametrize("fixture", ["sd2_pipe", "sdxl_pipe"])
@pytest.mark.parametrize("guidance_scale", [7.5, 1.0])
def test_none_reproduces_the_pipeline_bit_for_bit(request, fixture, guidance_scale):
    pipe = request.getfixturevalue(fixture)
    ours = guided_sample(pipe, PROMPT, seed=0, num_inference_steps=2, guidance_scale=guidance_scale).latents
    theirs = _pipe_latents(pipe, num_inference_steps=2, guidance_scale=guidance_scale)
    assert torch.equal(ours, theirs)


def test_the_family_of_each_pipeline(tiny_pipe, sd2_pipe, sdxl_pipe):
    assert [pipeline_family(p) for p in (tiny_pipe, sd2_pipe, sdxl_pipe)] == ["sd", "sd", "sdxl"]
    with pytest.raises(attnlens.AttnlensError, match="does not support"):
        adapter_for(object())


def lowers_its_loss(pipe, name: str, steps: int = 5) -> list[float]:
    """Gradient descent on the latent at the first step through the family's guidance forward: the losses."""
    adapter = adapter_for(pipe)
    h, w = adapter.default_size()
    method = family_method(pipe, name, None, h, w)
    parse = parse_prompt(PROMPT, tokenizer=pipe.tokenizer)
    cond = adapter.encode(PROMPT, None, False, h, w)
    cond.extra["guidance_scale"] = 7.5
    z, timesteps = adapter.prepare(cond, 10, h, w, torch.Generator().manual_seed(0))
    t = timesteps[0]
    losses = []
    with attnlens.record(pipe, None) as rec:
        rec.latent_hw = adapter.latent_hw(z)
        rec.need_live = set(method.layers(rec.resolutions()))
        assert rec.need_live, "the method found its layers with the family's defaults"
        step_size = None
        for it in range(steps):
            leaf, out = guidance_forward(pipe, rec, method, parse, z, t, cond, step=0, iteration=it, adapter=adapter)
            losses.append(float(out.loss.detach()))
            grad = torch.autograd.grad(out.loss, [leaf])[0]
            assert torch.isfinite(grad).all() and grad.abs().sum() > 0
            if step_size is None:  # moves the latent by ~1 % of its norm, whatever the loss scale
                step_size = 0.01 * float(z.norm()) / float(grad.norm())
            z = leaf.detach() - step_size * grad
    return losses


@pytest.mark.parametrize("name", GUIDED)
def test_each_method_lowers_its_loss_on_sdxl(sdxl_pipe, name):
    losses = lowers_its_loss(sdxl_pipe, name)
    assert losses[-1] < losses[0], losses


def test_sdxl_gets_the_coarsest_maps_by_default_and_the_user_overrides(sdxl_pipe):
    h, w = adapter_for(sdxl_pipe).default_size()  # 16 px: latent 8, cross-attention only at latent/2 = 4
    assert family_method(sdxl_pipe, "syngen", None, h, w).config.resolution == 4
    assert family_method(sdxl_pipe, "syngen", None, 4 * h, 4 * w).config.resolution == 16
    assert family_method(sdxl_pipe, "syngen", {"resolution": 8}, h, w).config.resolution == 8


def test_a_guided_sdxl_sample_writes_a_readable_run(sdxl_pipe, tmp_path):
    run = attnlens.sample(sdxl_pipe, PROMPT, method="syngen", seed=0, num_inference_steps=3, out=tmp_path / "xl")
    assert run.manifest["method"]["hyperparameters"]["resolution"] == 4
    assert sorted(map(int, run.manifest["records"]["guidance"])) == [0, 1, 2]
    loss = run.scalars()["loss"][:, 0, 0]
    assert np.isfinite(loss).all() and (loss != 0).all()
    assert np.isfinite(run.maps(run.layers[0], step=0, phase="guidance")).all()
    base = guided_sample(sdxl_pipe, PROMPT, seed=0, num_inference_steps=3).latents
    assert not np.allclose(run.latents()[-1], base.numpy()[0])  # the updates changed the sampled latent
