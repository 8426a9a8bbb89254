"""Shapes-testbed training: a few tiny steps run, checkpoint, resume exactly, and export an SD pipeline folder."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from attnlens.testbed import train as T


def tiny(**kw) -> T.TrainConfig:
    return replace(T.TrainConfig(**T.PRESETS["tiny"]), vae_steps=2, steps=3, threads=1, **kw)


def _unet_weights(ckpt):
    return T._load_tensors(ckpt / "unet.safetensors")


def test_train_checkpoint_resume_export(tmp_path):
    # uninterrupted: 2 VAE steps + 5 UNet steps
    full = tmp_path / "full"
    T.train(full, replace(tiny(), steps=5), export=False)
    # interrupted after 3 UNet steps, then resumed to 5
    part = tmp_path / "part"
    T.train(part, tiny(), export=False)
    names = [c.name for c in T.list_checkpoints(part)]
    assert names == ["unet-0000002", "unet-0000003"]  # keep_checkpoints=2 pruned vae-0000002
    state = json.loads((part / "checkpoints" / "unet-0000003" / "state.json").read_text())
    assert state["phase"] == "unet" and state["step"] == 3 and state["scaling_factor"] > 0
    assert state["optimizer"]["param_groups"][0]["betas"] == [0.9, 0.999]

    with pytest.raises(ValueError, match="--resume"):
        T.train(part, tiny(), export=False)
    with pytest.raises(ValueError, match="architecture"):
        T.train(part, replace(tiny(), text_width=64), resume=True, export=False)

    pipe_dir = T.train(part, replace(tiny(), steps=5), resume=True)
    log = [json.loads(x) for x in (part / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["phase"] == "unet"] == [2, 3, 4, 5]  # the step counter continued
    assert [c.name for c in T.list_checkpoints(part)] == ["unet-0000004", "unet-0000005"]

    # resumed == uninterrupted: weights, AdamW state and EMA were restored and the batches are step-determined
    a = _unet_weights(T.list_checkpoints(full)[-1])
    b = _unet_weights(T.list_checkpoints(part)[-1])
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)

    # the exported folder is an SD pipeline in fp16 safetensors, loaded like SD
    from diffusers import StableDiffusionPipeline

    assert (pipe_dir / "model_index.json").exists()
    assert json.loads((pipe_dir / "scheduler" / "scheduler_config.json").read_text())["skip_prk_steps"] is True
    weights = sorted(pipe_dir.rglob("*.safetensors"))
    assert {w.parent.name for w in weights} == {"unet", "vae", "text_encoder"}
    from safetensors import safe_open

    with safe_open(str(pipe_dir / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16
    pipe = StableDiffusionPipeline.from_pretrained(pipe_dir, torch_dtype=torch.float32, safety_checker=None)
    assert pipe.vae.config.scaling_factor == pytest.approx(state["scaling_factor"], rel=0.2)
    pipe.set_progress_bar_config(disable=True)
    img = pipe("a red circle", num_inference_steps=2, guidance_scale=2.0, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert img.shape == (1, 64, 64, 3)


def test_optimizer_state_round_trip():
    p = torch.nn.Parameter(torch.randn(3, 2))
    opt = torch.optim.AdamW([p], lr=1e-2)
    p.sum().backward()
    opt.step()
    tensors, meta = T.optimizer_to_safe(opt)
    json.dumps(meta)  # JSON-serialisable
    opt2 = torch.optim.AdamW([torch.nn.Parameter(p.detach().clone())], lr=1e-2)
    T.optimizer_from_safe(opt2, tensors, meta)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    torch.testing.assert_close(s1["state"][0]["exp_avg_sq"], s2["state"][0]["exp_avg_sq"])
    assert s1["param_groups"] == s2["param_groups"]


def test_cli_runs_and_resumes(tmp_path, capsys):
    out = str(tmp_path / "cli")
    args = ["--out", out, "--preset", "tiny", "--vae-steps", "2", "--unet-steps", "2", "--threads", "1", "--quiet",
            "--no-export"]
    from attnlens.cli import run_module  # what ``python -m attnlens.testbed.train`` runs

    run_module("train", args)
    with pytest.raises(SystemExit):
        run_module("train", args)  # checkpoints exist and no --resume
    run_module("train", [*args, "--resume", "--unet-steps", "3"])
    assert T.list_checkpoints(tmp_path / "cli")[-1].name == "unet-0000003"


def _encode(text_encoder, caption: str) -> torch.Tensor:
    with torch.no_grad():
        return text_encoder(T._tokenize([caption]))[0][0]


def test_bag_of_words_text_encoder_mixes_no_words():
    """text_layers=0: a word's conditioning is its own embedding at its position, whatever the other words are."""
    torch.manual_seed(0)
    bow = T.build_text_encoder(replace(tiny(), text_layers=0))
    torch.manual_seed(0)
    mixing = T.build_text_encoder(replace(tiny(), text_layers=1))
    # "a red circle" / "a blue circle": <sot> a red circle <eot> -> "circle" is position 3 in both
    for te, same in ((bow, True), (mixing, False)):
        a, b = _encode(te, "a red circle"), _encode(te, "a blue circle")
        assert not torch.equal(a[2], b[2])  # the colour words differ
        assert torch.equal(a[3], b[3]) is same  # ... and "circle" is untouched by them only without mixing
    # up to position: the same word elsewhere differs only through the position embedding
    emb = bow.embeddings
    ids = T._tokenize(["a red circle"])[0]
    expected = bow.final_layer_norm(emb.token_embedding.weight[ids[3]] + emb.position_embedding.weight[3])
    torch.testing.assert_close(_encode(bow, "a red circle")[3], expected)


def test_init_from_a_trained_pipeline(tmp_path):
    """init_from: VAE and UNet start as the source's, no VAE phase, text embeddings copied into a bag of words."""
    src = T.train(tmp_path / "src", tiny())
    out = tmp_path / "bow"
    pipe_dir = T.train(out, replace(tiny(), steps=0, text_layers=0, init_from=str(src), name="bow-test"))
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()] if (out / "log.jsonl").exists() else []
    assert not [r for r in log if r["phase"] == "vae"]  # the source's VAE is used as it is
    assert json.loads((pipe_dir / "attnlens_testbed.json").read_text())["name"] == "bow-test"
    from diffusers import StableDiffusionPipeline

    a = StableDiffusionPipeline.from_pretrained(src)
    b = StableDiffusionPipeline.from_pretrained(pipe_dir)
    assert b.text_encoder.config.num_hidden_layers == 0
    for module in ("vae", "unet"):
        sa, sb = getattr(a, module).state_dict(), getattr(b, module).state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    ea, eb = a.text_encoder.state_dict(), b.text_encoder.state_dict()
    key = next(k for k in ea if k.endswith("token_embedding.weight"))
    assert torch.equal(ea[key], eb[key])
    assert b.vae.config.scaling_factor == a.vae.config.scaling_factor
