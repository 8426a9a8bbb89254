"""InitNO and Structured Diffusion on the embedded model: InitNO's loss falls under repeated updates at a fixed step,
its noise search is stored as phase ``noise_search`` with its iterations, Structured Diffusion changes the samples
but not the recorded probabilities, and ``attnlens record`` runs both with --bind, several seeds and prompts."""

from __future__ import annotations

import numpy as np
import pytest

import attnlens
from attnlens.methods.structured import Structured, StructuredProcessor
from attnlens.parse import parse_prompt
from attnlens.sampler import guided_sample
from conftest import PROMPT, descend_at_fixed_step

QUICK_SEARCH = {"search_rounds": 2, "search_steps": 2, "search_final_steps": 1}


def test_initno_repeated_updates_at_a_fixed_step_lower_the_loss(tiny_pipe):
    # the step's own update descends the cross-attention term (the joint loss moves with the running average of
    # the alignment term from call to call); the self-attention maps reach the loss through the watched attn1 layers
    losses = descend_at_fixed_step(tiny_pipe, attnlens.get_method("initno"), parse_prompt(PROMPT),
                                   objective=lambda out: out.step_loss)
    assert losses[-1] < losses[0], losses
    assert not any(type(p).__name__ == "SelfAttentionProcessor" for p in tiny_pipe.unet.attn_processors.values())


def test_noise_search_is_recorded_as_its_own_phase(tiny_pipe, tmp_path):
    # cross_threshold 0: no round can succeed, so 2 rounds × 2 steps + 1 final step = 5 search iterations
    opts = {**QUICK_SEARCH, "cross_threshold": 0.0, "guided_sampling": False}
    run = attnlens.sample(tiny_pipe, PROMPT, method="initno", method_options=opts, seed=0, num_inference_steps=2,
                          out=tmp_path / "initno")
    base = attnlens.sample(tiny_pipe, PROMPT, seed=0, num_inference_steps=2, out=tmp_path / "none")
    assert run.manifest["records"]["noise_search"] == {"0": [0, 1, 2, 3, 4]}
    assert "guidance" not in run.manifest["records"]
    sc = run.scalars()
    loss = np.asarray(sc["noise_search_loss"])[0, :5, 0]
    assert np.isfinite(loss).all()
    assert np.asarray(sc["noise_search_round"])[0, :5, 0].tolist() == [0, 0, 1, 1, 2]
    # the final run restarts from the best round's noise: its first loss is that round's first loss
    assert loss[4] in (loss[0], loss[2])
    layer = run.layers[0]
    maps = run.maps(layer, 0, phase="noise_search", iteration=3)
    assert np.isfinite(maps).all() and maps.sum() > 0
    # the search replaced the initial noise
    assert not np.array_equal(run.latents()[0], base.latents()[0])


def test_structured_changes_samples_not_the_recorded_probabilities(tiny_pipe, tmp_path):
    before = dict(tiny_pipe.unet.attn_processors)
    run = attnlens.sample(tiny_pipe, PROMPT, method="structured", seed=0, num_inference_steps=2, out=tmp_path / "s")
    base = attnlens.sample(tiny_pipe, PROMPT, seed=0, num_inference_steps=2, out=tmp_path / "n")
    assert all(before[k] is v for k, v in tiny_pipe.unet.attn_processors.items())
    # the first cross-attention layer of step 0 sees the same latent and keys: the same probabilities
    first = run.layers[0]
    np.testing.assert_allclose(run.maps(first, 0), base.maps(first, 0), atol=2e-3)
    # the averaged values change what the next layers see, and the sample
    assert not np.array_equal(run.latents(), base.latents())


def test_structured_hook_restores_processors_on_error_and_refuses_nesting(tiny_pipe):
    method = Structured()
    parse = parse_prompt(PROMPT, tokenizer=tiny_pipe.tokenizer)
    before = dict(tiny_pipe.unet.attn_processors)
    with pytest.raises(RuntimeError, match="boom"):
        with method.attention_hook(tiny_pipe, PROMPT, parse):
            procs = tiny_pipe.unet.attn_processors
            assert all(isinstance(p, StructuredProcessor) for k, p in procs.items() if k.endswith("attn2.processor"))
            with pytest.raises(attnlens.errors.ConfigError):
                with method.attention_hook(tiny_pipe, PROMPT, parse):
                    pass
            raise RuntimeError("boom")
    assert all(before[k] is v for k, v in tiny_pipe.unet.attn_processors.items())
    # the sampler refuses the method without its hook (the run would silently be plain sampling)
    with attnlens.record(tiny_pipe, None) as rec, pytest.raises(attnlens.errors.ConfigError, match="not installed"):
        guided_sample(tiny_pipe, PROMPT, method=method, parse=parse, recorder=rec, num_inference_steps=1)


@pytest.mark.parametrize("name,options", [
    ("initno", ["-O", "search_rounds=1", "-O", "search_steps=1", "-O", "search_final_steps=0"]),
    ("structured", []),
])
def test_record_runs_with_bind_and_several_seeds_and_prompts(run_cli, tmp_path, name, options):
    out = tmp_path / name
    code, _, stderr = run_cli("record", PROMPT, "--method", name, *options, "--bind", "red>crown", "--seed", "0",
                              "--seed", "1", "--n-steps", "2", "-o", str(out / "bind"))
    assert code == 0, stderr
    code, _, stderr = run_cli("record", PROMPT, "a blue square and a green circle", "--method", name, *options,
                              "--n-steps", "2", "-o", str(out / "prompts"))
    assert code == 0, stderr
    runs = [attnlens.open_run(m.parent) for m in sorted(out.rglob("manifest.json"))]
    assert len(runs) == 4
    for run in runs:
        assert run.manifest["method"]["name"] == name
        if name == "initno":
            assert "noise_search" in run.manifest["records"] and "guidance" in run.manifest["records"]
            assert "loss" in run.scalars() and "noise_search_loss" in run.scalars()
    assert sum(r.manifest["bind"] is not None for r in runs) == 2
