"""Tiny embedded DiT / MM-DiT models (issue 15): built offline, deterministic, loaded as a hub id is."""

import pytest
import torch
from safetensors.torch import load_file

import attnlens
from attnlens.models import embedded_model_path, model_family
from attnlens.models.families import build_flux, build_pixart, build_sana, build_sd3


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


#: name, builder, pipeline class, family, weights file to compare, tokenizer folder/file, call options, latent shape
DIT = {
    "attnlens-tiny-flux": (build_flux, "FluxPipeline", "flux", "transformer/diffusion_pytorch_model.safetensors",
                           "tokenizer_2/spiece.model", dict(max_sequence_length=32), (1, 64, 16)),
    "attnlens-tiny-pixart": (build_pixart, "PixArtSigmaPipeline", "pixart", "text_encoder/model.safetensors",
                             "tokenizer/spiece.model", dict(max_sequence_length=32, use_resolution_binning=False),
                             (1, 4, 16, 16)),
    "attnlens-tiny-sana": (build_sana, "SanaPipeline", "sana", "transformer/diffusion_pytorch_model.safetensors",
                           "tokenizer/tokenizer.model",
                           dict(max_sequence_length=32, use_resolution_binning=False, complex_human_instruction=None),
                           (1, 4, 16, 16)),
}


@pytest.mark.parametrize("name", sorted(DIT))
def test_tiny_dit_is_deterministic_and_loads_through_load_pipeline(name, tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNLENS_HOME", str(tmp_path / "home"))
    build, cls, family, weights, spiece, kw, shape = DIT[name]
    folder = embedded_model_path(name)
    again = build(tmp_path / "again")
    a, b = load_file(folder / weights), load_file(again / weights)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (folder / spiece).read_bytes() == (again / spiece).read_bytes()

    pipe = attnlens.load_pipeline(name, device="cpu")
    assert type(pipe).__name__ == cls and model_family(pipe) == family
    kw = dict(num_inference_steps=2, height=64, width=64, output_type="latent", **kw)
    x = pipe("a red crown", generator=torch.Generator().manual_seed(0), **kw).images
    y = pipe("a red crown", generator=torch.Generator().manual_seed(0), **kw).images
    assert x.shape == shape and torch.isfinite(x).all() and torch.equal(x, y)


def test_gemma_format_tokenizer_has_gemmas_layout(tmp_path):
    from transformers import AutoTokenizer

    from attnlens.models.families import write_gemma_tokenizer

    tok = AutoTokenizer.from_pretrained(write_gemma_tokenizer(tmp_path / "gemma"))
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    pieces = tok.convert_ids_to_tokens(tok("a red crown é").input_ids)
    assert pieces[0] == "<bos>" and "▁red" in pieces
    assert "<0xC3>" in pieces  # an unseen character falls back to its UTF-8 bytes, as Gemma's does
    assert tok.decode(tok("a red crown é").input_ids, skip_special_tokens=True) == "a red crown é"


def test_tiny_sdxl_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNLENS_HOME", str(tmp_path / "home"))
    pipe = attnlens.load_pipeline("attnlens-tiny-sdxl", device="cpu")
    assert type(pipe).__name__ == "StableDiffusionXLPipeline" and model_family(pipe) == "sdxl"
