"""Tiny embedded DiT / MM-DiT models (issue 15): built offline, deterministic, loaded as a hub id is."""

import torch
from safetensors.torch import load_file

from attnlens.models import embedded_model_path
from attnlens.models.families import build_sd3


def test_tiny_sd3_is_deterministic_and_loads_like_a_hub_model(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNLENS_HOME", str(tmp_path / "home"))
    from diffusers import DiffusionPipeline

    folder = embedded_model_path("attnlens-tiny-sd3")
    again = build_sd3(tmp_path / "again")
    for part in ("transformer/diffusion_pytorch_model.safetensors", "text_encoder_3/model.safetensors"):
        a, b = load_file(folder / part), load_file(again / part)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (folder / "tokenizer_3" / "spiece.model").read_bytes() == (again / "tokenizer_3" / "spiece.model").read_bytes()

    pipe = DiffusionPipeline.from_pretrained(folder)
    assert type(pipe).__name__ == "StableDiffusion3Pipeline"
    pieces = pipe.tokenizer_3.convert_ids_to_tokens(pipe.tokenizer_3("a red crown").input_ids)
    assert pieces[-1] == "</s>" and "▁red" in pieces
    assert pipe.tokenizer.convert_ids_to_tokens(pipe.tokenizer("a red crown").input_ids)[2] == "red</w>"
    kw = dict(num_inference_steps=2, height=64, width=64, output_type="latent", max_sequence_length=32)
    a = pipe("a red crown", generator=torch.Generator().manual_seed(0), **kw).images
    b = pipe("a red crown", generator=torch.Generator().manual_seed(0), **kw).images
    assert a.shape == (1, 4, 16, 16) and torch.isfinite(a).all() and torch.equal(a, b)
