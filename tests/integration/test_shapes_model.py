"""The shipped shapes model (attnlens-shapes, the embedded default): loads offline through from_pretrained, gives
the stored latent for a fixed seed, draws a single object the evaluator accepts, and refuses damaged weights."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import attnlens
from attnlens.errors import AttnlensError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from make_shapes_reference import PATH, REFERENCE, final_latent  # noqa: E402


@pytest.fixture(scope="module")
def shapes_pipe():
    return attnlens.load_pipeline("attnlens-shapes", device="cpu", dtype=torch.float32)


def test_default_model_is_the_shipped_shapes_model(shapes_pipe):
    assert attnlens.DEFAULT_MODEL == "attnlens-shapes"
    folder = Path(attnlens.models.model_info(shapes_pipe)["location"])
    assert attnlens.models.model_info(shapes_pipe)["id"] == "attnlens-shapes"
    assert not [a for a in vars(shapes_pipe) if a.startswith("_attnlens")]  # nothing stashed on the pipeline
    assert (folder / "model_index.json").is_file() and (folder / "tokenizer" / "tokenizer.json").is_file()
    assert type(shapes_pipe).__name__ == "StableDiffusionPipeline"
    # SD's layout at small scale: cross-attention at 16x16 and 8x8 of the 16x16 latent, 64x64 images
    assert shapes_pipe.unet.config.sample_size == 16 and shapes_pipe.vae_scale_factor == 4
    manifest = attnlens.models.shapes_manifest()
    assert sum(f["bytes"] for f in manifest["files"].values()) <= 25e6
    assert all(rel.endswith(".json") or rel.endswith(".safetensors") for rel in manifest["files"])


@pytest.mark.slow
def test_fixed_seed_reproduces_the_stored_latent(shapes_pipe):
    from safetensors import safe_open

    with safe_open(str(PATH), "pt") as f:
        ref = f.get_tensor("latent")
        meta = f.metadata()
    assert meta["version"] == attnlens.models.shapes_manifest()["version"], \
        "regenerate tests/data/shapes_reference.safetensors (python tests/data/make_shapes_reference.py)"
    got = final_latent(shapes_pipe)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, atol=2e-3, rtol=1e-3)


def test_it_draws_what_it_is_asked(shapes_pipe):
    from attnlens.testbed.evaluate import score

    gen = torch.Generator().manual_seed(REFERENCE["seed"])
    image = shapes_pipe(REFERENCE["prompt"], num_inference_steps=REFERENCE["steps"],
                        guidance_scale=REFERENCE["guidance_scale"], generator=gen, output_type="np").images[0]
    result = score((np.clip(image, 0, 1) * 255).round().astype(np.uint8), REFERENCE["prompt"])
    assert result.success, [o.status for o in result.objects]


def test_damaged_weights_are_refused_with_one_line(tmp_path, monkeypatch):
    from attnlens.models import shapes

    copy = tmp_path / "shapes"
    shutil.copytree(shapes.ASSET_DIR, copy)
    unet = copy / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(unet.read_bytes())
    data[-1] ^= 0xFF
    unet.write_bytes(bytes(data))
    monkeypatch.setattr(shapes, "ASSET_DIR", copy)
    monkeypatch.setenv("ATTNLENS_HOME", str(tmp_path / "home"))
    (copy / "attnlens_model.json").write_text((copy / "attnlens_model.json").read_text().replace(
        '"version": "', '"version": "x'))  # a new cache key, so the model is built (and checked) again
    with pytest.raises(AttnlensError, match="damaged"):
        attnlens.load_pipeline("attnlens-shapes")


def test_bag_of_words_model_ships_and_loads(tmp_path, monkeypatch):
    """attnlens-shapes-bow: checksummed shipped weights, loaded through from_pretrained, a text encoder that mixes
    no words (the conditioning of "circle" is the same whatever colour precedes it)."""
    import torch

    import attnlens

    monkeypatch.setenv("ATTNLENS_HOME", str(tmp_path))
    pipe = attnlens.load_pipeline("attnlens-shapes-bow")
    assert pipe.text_encoder.config.num_hidden_layers == 0
    ids = pipe.tokenizer(["a red circle", "a blue circle"], padding="max_length", max_length=77,
                         return_tensors="pt").input_ids
    with torch.no_grad():
        enc = pipe.text_encoder(ids)[0]
    assert not torch.equal(enc[0, 2], enc[1, 2]) and torch.equal(enc[0, 3], enc[1, 3])
    # and the UNet is not the shipped attnlens-shapes UNet (it was fine-tuned for this encoder)
    base = attnlens.load_pipeline("attnlens-shapes")
    w = "conv_in.weight"
    assert not torch.equal(pipe.unet.state_dict()[w], base.unet.state_dict()[w])
