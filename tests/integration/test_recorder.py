"""Recorder on the embedded tiny pipeline and tiny SD 2.x / SDXL configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnlens
from attnlens.recording import RecordingProcessor, cross_attention_layers
from conftest import PROMPT

STEPS = 4  # PNDM with skip_prk_steps: 5 timesteps for 4 steps


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_every_layer_every_step_recorded_with_shapes(tiny_pipe, tmp_path):
    with attnlens.record(tiny_pipe, tmp_path / "r", seeds=[0]) as rec:
        out = tiny_pipe(PROMPT, num_inference_steps=STEPS, generator=_gen())
        rec.save_images(out.images)
    run = attnlens.open_run(tmp_path / "r")
    n_t = len(tiny_pipe.scheduler.timesteps)
    assert n_t == STEPS + 1
    layers = list(cross_attention_layers(tiny_pipe.unet))
    assert run.layers == layers and len(layers) == 10
    expected_res = {16: 3, 8: 3, 4: 4}
    seen = {}
    n_tokens = len(tiny_pipe.tokenizer(PROMPT).input_ids)  # <sot> .. <eot>
    for layer in layers:
        arr = run.array(layer)
        assert tuple(arr.metadata.dimension_names) == attnlens.store.MAP_DIMS
        step, phase, it, sample, head, token, y, x = arr.shape
        assert (step, it, sample, head, token) == (n_t, 1, 1, 1, n_tokens)
        seen[y] = seen.get(y, 0) + 1
        data = run.maps(layer, step=slice(None))  # (step, sample, head, token, y, x)
        assert np.isfinite(data).all(), "every step of the sample phase is recorded"
        assert (data >= 0).all() and (data.sum(axis=3) <= 1.0 + 1e-2).all()
    assert seen == expected_res
    assert run.manifest["records"]["sample"] == {str(i): [0] for i in range(n_t)}
    # PNDM repeats a timestep: steps are loop indices, timesteps are stored beside them
    ts = run.timesteps()
    assert len(ts) == n_t and len(set(ts.tolist())) == n_t - 1
    assert run.manifest["samples"][0]["pieces"][-1] == "<|endoftext|>"
    assert run.latents().shape == (n_t, 1, 4, 16, 16)


def _flash_wrong(query, key, value):
    """The CPU flash kernel with its output changed: what a torch whose SDPA runs another kernel looks like."""
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(query, key, value)
    return out + 1e-3, lse


@pytest.mark.parametrize("kernel", ["lse", "softmax", "mismatch"])
@pytest.mark.parametrize("tokens", ["all", "prompt"])
def test_recorded_maps_equal_explicit_attention(tiny_pipe, tmp_path, monkeypatch, kernel, tokens):
    """What is stored is the softmax of the layer's own q·k (head mean), checked against a direct computation: from
    the CPU flash kernel's log-sum-exp (the default), from a second softmax (no such kernel), and after the first
    call found the kernel's output unequal to SDPA's (then it falls back, and the output is SDPA's)."""
    from attnlens.recording import processor as R

    if kernel == "softmax":
        monkeypatch.setattr(R, "_FLASH_CPU", None)
    elif kernel == "mismatch":
        monkeypatch.setattr(R, "_FLASH_CPU", _flash_wrong)
    layer = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    module = dict(tiny_pipe.unet.named_modules())[layer]
    captured = {}

    def hook(mod, args, kwargs):
        captured.setdefault("h", (kwargs.get("hidden_states", args[0] if args else None).clone(),
                                  kwargs["encoder_hidden_states"].clone()))

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    plain = tiny_pipe(PROMPT, num_inference_steps=1, generator=_gen(), output_type="latent").images
    try:
        with attnlens.record(tiny_pipe, tmp_path / "r", dtype="fp32", tokens=tokens, heads="all"):
            recorded = tiny_pipe(PROMPT, num_inference_steps=1, generator=_gen(), output_type="latent").images
            procs = [tiny_pipe.unet.attn_processors[k] for k in tiny_pipe.unet.attn_processors if "attn2" in k]
            assert {p._lse for p in procs} == {kernel == "lse"}
    finally:
        handle.remove()
    assert torch.equal(plain, recorded)
    hidden, enc = captured["h"]
    with torch.no_grad():
        q = module.head_to_batch_dim(module.to_q(hidden))
        k = module.head_to_batch_dim(module.to_k(enc))
        probs = torch.softmax(q @ k.transpose(1, 2) * module.scale, dim=-1)
    heads = module.heads
    cond = probs.view(2, heads, 16, 16, 77)[1].permute(0, 3, 1, 2).numpy()
    stored = attnlens.open_run(tmp_path / "r").maps(layer, step=0)[0]
    n_tokens = 77 if tokens == "all" else len(tiny_pipe.tokenizer(PROMPT).input_ids)
    assert stored.shape == (heads, n_tokens, 16, 16)
    np.testing.assert_allclose(stored, cond[:, :n_tokens], atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_bit_identical_latents_with_and_without_recording(tiny_pipe, tmp_path):
    plain = tiny_pipe(PROMPT, num_inference_steps=STEPS, generator=_gen(7), output_type="latent").images
    with attnlens.record(tiny_pipe, tmp_path / "r", heads="all", tokens="all", uncond=True):
        recorded = tiny_pipe(PROMPT, num_inference_steps=STEPS, generator=_gen(7), output_type="latent").images
    assert torch.equal(plain, recorded)
    # and attnlens's own loop with method "none" is the same computation as pipe(...)
    ours = attnlens.sample(tiny_pipe, PROMPT, seed=7, num_inference_steps=STEPS, out=None).latents
    assert torch.equal(plain, ours)


def test_processors_restored_after_success_and_error(tiny_pipe, tmp_path):
    before = dict(tiny_pipe.unet.attn_processors)
    with attnlens.record(tiny_pipe, tmp_path / "ok"):
        assert all(isinstance(p, RecordingProcessor) for k, p in tiny_pipe.unet.attn_processors.items() if "attn2" in k)
        assert not any(isinstance(p, RecordingProcessor) for k, p in tiny_pipe.unet.attn_processors.items() if "attn1" in k)
        tiny_pipe(PROMPT, num_inference_steps=1, generator=_gen())
    assert all(tiny_pipe.unet.attn_processors[k] is v for k, v in before.items())

    with pytest.raises(RuntimeError, match="boom"):
        with attnlens.record(tiny_pipe, tmp_path / "err"):
            raise RuntimeError("boom")
    assert all(tiny_pipe.unet.attn_processors[k] is v for k, v in before.items())
    assert attnlens.open_run(tmp_path / "err").status == "failed"
    assert not tiny_pipe.unet._forward_pre_hooks


def test_double_entry_and_nesting_refused(tiny_pipe, tmp_path):
    rec = attnlens.record(tiny_pipe, None)
    with rec:
        with pytest.raises(attnlens.AttnlensError, match="already"):
            rec.__enter__()
        with pytest.raises(attnlens.AttnlensError, match="already being recorded"):
            with attnlens.record(tiny_pipe, None):
                pass
    before = dict(tiny_pipe.unet.attn_processors)
    assert not any(isinstance(p, RecordingProcessor) for p in before.values())


def test_layer_step_head_token_filters(tiny_pipe, tmp_path):
    with attnlens.record(tiny_pipe, tmp_path / "r", layers=["up_blocks.2.*", 8], steps=slice(1, 3), heads="all",
                         tokens="all", dtype="fp32", prompts=[PROMPT]):
        tiny_pipe(PROMPT, num_inference_steps=STEPS, generator=_gen())
    run = attnlens.open_run(tmp_path / "r")
    assert all(l.startswith("up_blocks.2") or run.resolution(l) == (8, 8) for l in run.layers)
    assert len(run.layers) == 5
    arr = run.array(run.layers[0])
    assert arr.dtype == np.float32 and arr.shape[4] == 8 and arr.shape[5] == 77
    assert sorted(run.manifest["records"]["sample"]) == ["1", "2"]
    with pytest.raises(attnlens.AttnlensError, match="closest"):
        with attnlens.record(tiny_pipe, None, layers="up_blocks.2.attentions.0.transformer_block.0.attn2"):
            tiny_pipe(PROMPT, num_inference_steps=1, generator=_gen())


def test_batch_of_prompts_and_images_per_prompt_all_recorded(tiny_pipe, tmp_path):
    prompts = ["a red cat", "a blue checkered bowl on a table"]
    gens = [_gen(s) for s in (1, 2, 3, 4)]
    with attnlens.record(tiny_pipe, tmp_path / "b", prompts=prompts, seeds=[1, 2, 3, 4]) as rec:
        out = tiny_pipe(prompts, num_images_per_prompt=2, num_inference_steps=2, generator=gens)
        rec.save_images(out.images)
    run = attnlens.open_run(tmp_path / "b")
    samples = run.manifest["samples"]
    assert [s["prompt"] for s in samples] == [prompts[0]] * 2 + [prompts[1]] * 2
    assert [s["seed"] for s in samples] == [1, 2, 3, 4]
    assert samples[2]["pieces"][2:4] == ["blue</w>", "chec"]
    m = run.maps(run.layers[0], step=0)
    assert m.shape[0] == 4
    # token axis spans the longest prompt; both images of one prompt share its embedding but not their noise
    assert not np.allclose(m[0], m[1])
    assert (tmp_path / "b" / "image-3.png").exists() and run.image(3).size == (64, 64)


@pytest.mark.parametrize("fixture", ["sd2_pipe", "sdxl_pipe"])
def test_sd2_and_sdxl_record(fixture, request, tmp_path):
    pipe = request.getfixturevalue(fixture)
    with attnlens.record(pipe, tmp_path / fixture, prompts=["a red cat"], seeds=[0]) as rec:
        out = pipe("a red cat", num_inference_steps=3, generator=_gen(), height=32, width=32)
        rec.save_images(out.images)
    run = attnlens.open_run(tmp_path / fixture)
    assert run.complete
    assert len(run.layers) == len(cross_attention_layers(pipe.unet))
    for layer in run.layers:
        data = run.maps(layer, step=slice(None))
        assert np.isfinite(data).all() and data.shape[0] == 3
    assert run.manifest["model"]["pipeline"] == type(pipe).__name__


def test_load_pipeline_families_and_errors(tiny_pipe, sd2_pipe, sdxl_pipe, tmp_path):
    from attnlens.models import model_family

    assert model_family(tiny_pipe) == "sd" and model_family(sd2_pipe) == "sd" and model_family(sdxl_pipe) == "sdxl"
    assert attnlens.load_pipeline(tiny_pipe) is tiny_pipe
    assert tiny_pipe.unet.dtype == torch.float32 and tiny_pipe.device.type == "cpu"
    with pytest.raises(attnlens.AttnlensError, match="not available"):
        attnlens.load_pipeline("CompVis/stable-diffusion-v1-4")
    with pytest.raises(attnlens.AttnlensError, match="not found"):
        attnlens.load_pipeline(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(attnlens.AttnlensError, match="model_index.json"):
        attnlens.load_pipeline(str(tmp_path / "empty"))


def test_embedded_model_is_deterministic(tmp_path, monkeypatch):
    """Built twice from scratch, the embedded model has byte-identical weights."""
    from attnlens import models

    hashes = []
    for k in range(2):
        monkeypatch.setenv("ATTNLENS_HOME", str(tmp_path / f"home{k}"))
        folder = models.embedded_model_path("attnlens-tiny")
        import hashlib

        hashes.append({p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                       for p in sorted(folder.rglob("*.safetensors"))})
    assert hashes[0] == hashes[1] and len(hashes[0]) == 3


def _map_chunks(run_dir) -> int:
    att = attnlens.store.data_path(run_dir) / "attention"
    return sum(1 for f in att.rglob("c.*") if f.is_file()) if att.exists() else 0


@pytest.mark.slow
@pytest.mark.parametrize("steps", [STEPS, 60])
def test_cpu_writer_holds_maps_until_sampling_ends(tiny_pipe, tmp_path, steps):
    """On a CPU the writer stays off the cores while the pipeline samples (lazy mode): no map is on disk before the
    block ends, every map is after it — also past 48 UNet forwards, where a 64-batch queue used to wake it."""
    import time

    with attnlens.record(tiny_pipe, tmp_path / "r", seeds=[0]) as rec:
        assert rec._writer.eager is False
        tiny_pipe(PROMPT, num_inference_steps=steps, generator=_gen(), output_type="latent")
        time.sleep(0.2)  # a woken writer would have written by now
        assert _map_chunks(tmp_path / "r") == 0
    run = attnlens.open_run(tmp_path / "r")
    assert run.complete and _map_chunks(tmp_path / "r") == len(run.layers) * (steps + 1)


@pytest.mark.slow
@pytest.mark.parametrize("limit", ["bytes", "queue"])
def test_cpu_writer_writes_when_its_limit_is_reached(tiny_pipe, tmp_path, monkeypatch, limit):
    """The lazy writer starts once it holds HOLD_BYTES or its queue is three-quarters full (never a deadlock on a
    full queue), and the run is the same."""
    import time

    from attnlens.recording import writer as R

    kwargs = {}
    if limit == "bytes":
        monkeypatch.setattr(R._Writer, "HOLD_BYTES", 1)
    else:
        kwargs["queue_size"] = 2
    with attnlens.record(tiny_pipe, tmp_path / "r", seeds=[0], **kwargs):
        tiny_pipe(PROMPT, num_inference_steps=STEPS, generator=_gen(), output_type="latent")
        deadline = time.time() + 30
        while _map_chunks(tmp_path / "r") == 0 and time.time() < deadline:
            time.sleep(0.05)
        assert _map_chunks(tmp_path / "r") > 0  # written before the block ends
    run = attnlens.open_run(tmp_path / "r")
    assert run.complete and _map_chunks(tmp_path / "r") == len(run.layers) * (STEPS + 1)
    assert np.isfinite(run.maps(run.layers[0], step=slice(None))).all()


def test_latents_stored_in_the_pipeline_dtype(tmp_path):
    """A float16 pipeline's latents are stored as float16, exactly as the UNet saw them (no widening: SD on a GPU
    stores half the bytes); ``run.latents()`` reads them as float32."""
    import zarr

    pipe = attnlens.load_pipeline("attnlens-tiny", dtype=torch.float16)  # CPU float16: slow kernels, tiny model
    seen = []
    handle = pipe.unet.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs.get("sample", args[0] if args else None)[1:].clone()),
        with_kwargs=True)
    try:
        with attnlens.record(pipe, tmp_path / "r", prompts=[PROMPT], seeds=[0]):
            pipe(PROMPT, num_inference_steps=2, generator=_gen(), output_type="latent")
    finally:
        handle.remove()
    stored = zarr.open_group(str(tmp_path / "r" / "data.zarr"), mode="r")["latents/latents"]
    assert stored.dtype == np.float16
    for step, latent in enumerate(seen):
        np.testing.assert_array_equal(stored[step], latent.numpy())
    run = attnlens.open_run(tmp_path / "r")
    assert run.latents().dtype == np.float32 and run.latents().shape == (len(seen), 1, 4, 16, 16)
