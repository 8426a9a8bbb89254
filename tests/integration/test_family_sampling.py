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
from attnlens.errors import BadOption
from attnlens.live_text_maps import SITES as TEXT_FAMILIES
from attnlens.live_text_maps import LiveTextMaps
from attnlens.methods.base import StepPlan
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


# -- the DiT / MM-DiT families: tiny pipelines from diffusers classes (seeded, eval mode, attnlens's tokenizers) --


def _t5(width: int = 32):
    from transformers import T5Config, T5EncoderModel

    from attnlens.models.families import T5_VOCAB

    torch.manual_seed(0)
    return T5EncoderModel(T5Config(vocab_size=T5_VOCAB, d_model=width, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                   feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
                                   decoder_start_token_id=0)).eval()


def _vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                         sample_size=32, shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False,
                         use_post_quant_conv=False).eval()


@pytest.fixture(scope="module")
def sd3_pipe(tmp_path_factory):
    from diffusers import StableDiffusion3Pipeline

    from attnlens.models.families import build_sd3

    return StableDiffusion3Pipeline.from_pretrained(build_sd3(tmp_path_factory.mktemp("sd3")))


@pytest.fixture(scope="module")
def flux_pipe():
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from attnlens.models.families import t5_tokenizer
    from attnlens.tokenizer import clip_tokenizer

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=True)
    torch.manual_seed(0)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406,
                                        eos_token_id=49407, pad_token_id=49407, projection_dim=32,
                                        hidden_act="gelu")).eval()
    return FluxPipeline(transformer=transformer.eval(), scheduler=FlowMatchEulerDiscreteScheduler(), vae=_vae(),
                        text_encoder=clip, tokenizer=clip_tokenizer(), text_encoder_2=_t5(),
                        tokenizer_2=t5_tokenizer())


@pytest.fixture(scope="module")
def pixart_pipe():
    from diffusers import DDIMScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    from attnlens.models.families import t5_tokenizer

    torch.manual_seed(0)
    transformer = PixArtTransformer2DModel(
        sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3, caption_channels=32,
        in_channels=4, cross_attention_dim=24, out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6)
    return PixArtSigmaPipeline(transformer=transformer.eval(), vae=_vae(), scheduler=DDIMScheduler(),
                               text_encoder=_t5(), tokenizer=t5_tokenizer())


@pytest.fixture(scope="module")
def sana_pipe(tmp_path_factory):
    from diffusers import SanaPipeline

    from attnlens.models.families import build_sana

    return SanaPipeline.from_pretrained(build_sana(tmp_path_factory.mktemp("sana")))


@pytest.mark.parametrize("guidance_scale", [4.5, 1.0])
def test_none_reproduces_sana_bit_for_bit(sana_pipe, guidance_scale):
    """Gemma behind the default instruction, timestep_scale, float32 latents, AutoencoderDC (no resolution bins)."""
    ours = guided_sample(sana_pipe, PROMPT, seed=0, num_inference_steps=2, guidance_scale=guidance_scale)
    theirs = _pipe_latents(sana_pipe, num_inference_steps=2, guidance_scale=guidance_scale, height=64, width=64,
                           use_resolution_binning=False)
    assert torch.equal(ours.latents, theirs)
    assert ours.latents.dtype == torch.float32 and ours.image.size == (64, 64)


@pytest.mark.parametrize("guidance_scale", [7.0, 1.0])
def test_none_reproduces_sd3_bit_for_bit(sd3_pipe, guidance_scale):
    """Flow matching (FlowMatchEulerDiscreteScheduler), CFG, joint attention over CLIP + T5."""
    ours = guided_sample(sd3_pipe, PROMPT, seed=0, num_inference_steps=2, guidance_scale=guidance_scale)
    assert torch.equal(ours.latents, _pipe_latents(sd3_pipe, num_inference_steps=2, guidance_scale=guidance_scale))
    assert ours.image.size == (64, 64)


def test_none_reproduces_flux_bit_for_bit(flux_pipe):
    """No CFG (one forward per step), the guidance embedding, packed latents, dynamic shift."""
    kw = dict(num_inference_steps=2, guidance_scale=3.5, height=32, width=32)
    ours = guided_sample(flux_pipe, PROMPT, seed=0, **kw)
    assert ours.latents.shape == (1, 64, 16)  # packed: (32/2/2)² tokens of 4·4 channels
    assert torch.equal(ours.latents, _pipe_latents(flux_pipe, **kw))
    other = guided_sample(flux_pipe, PROMPT, seed=0, **{**kw, "guidance_scale": 1.0}).latents
    assert not torch.equal(ours.latents, other)  # the scale reaches the guidance embedding
    assert ours.image.size == (32, 32)


@pytest.mark.parametrize("guidance_scale", [4.5, 1.0])
def test_none_reproduces_pixart_bit_for_bit(pixart_pipe, guidance_scale):
    """T5 with its attention mask, learned-sigma output halved (resolution binning off: the size as asked)."""
    ours = guided_sample(pixart_pipe, PROMPT, seed=0, num_inference_steps=2, guidance_scale=guidance_scale)
    theirs = _pipe_latents(pixart_pipe, num_inference_steps=2, guidance_scale=guidance_scale,
                           use_resolution_binning=False, clean_caption=False)
    assert torch.equal(ours.latents, theirs)


def test_the_family_of_each_pipeline(tiny_pipe, sd2_pipe, sdxl_pipe, sd3_pipe, flux_pipe, pixart_pipe):
    pipes = (tiny_pipe, sd2_pipe, sdxl_pipe, sd3_pipe, flux_pipe, pixart_pipe)
    assert [pipeline_family(p) for p in pipes] == ["sd", "sd", "sdxl", "sd3", "flux", "pixart"]
    with pytest.raises(attnlens.AttnlensError, match="does not support"):
        adapter_for(object())


def lowers_its_loss(pipe, name: str, steps: int = 5, text: str | None = None) -> list[float]:
    """Gradient descent on the latent at the first step through the family's guidance forward: the losses."""
    adapter = adapter_for(pipe)
    h, w = adapter.default_size()
    method = family_method(pipe, name, None, h, w)
    parse = parse_prompt(PROMPT, tokenizer=adapter.text_tokenizer)
    cond = adapter.encode(PROMPT, None, False, h, w)
    cond.extra["guidance_scale"] = 7.5
    z, timesteps = adapter.prepare(cond, 10, h, w, torch.Generator().manual_seed(0))
    t = timesteps[0]
    losses = []
    live = LiveTextMaps(pipe, text=text) if adapter.family in TEXT_FAMILIES else attnlens.record(pipe, None)
    with live as rec:
        rec.latent_hw = adapter.latent_hw(z)
        if adapter.family in TEXT_FAMILIES:
            rec.set_prompt(PROMPT)
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
@pytest.mark.parametrize("fixture", ["sdxl_pipe", "sd3_pipe", "flux_pipe", "pixart_pipe", "sana_pipe"])
def test_each_method_lowers_its_loss_on_every_family(request, fixture, name):
    losses = lowers_its_loss(request.getfixturevalue(fixture), name)
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


class _Capture(attnlens.GuidanceMethod):
    """Keeps the maps it is given; its loss is the attention of the first pixel to position 2."""

    name = "capture"

    def __init__(self):
        super().__init__()
        self.seen = {}

    def layers(self, resolutions):
        return list(resolutions)

    def loss(self, maps, parse, i):
        self.seen = {k: v.detach() for k, v in maps.items()}
        return attnlens.LossOutput(loss=sum(m[..., 0, 0, 2].sum() for m in maps.values()))


class _CaptureEveryStep(_Capture):
    """Runs a guidance forward at every step (step size 0: the latent stays)."""

    def plan(self, i, num_timesteps):
        return StepPlan(step_size=0.0)


@pytest.mark.parametrize("fixture, width", [("sd3_pipe", 77), ("flux_pipe", 513), ("pixart_pipe", 301),
                                            ("sana_pipe", 300)])
def test_live_text_maps_are_text_distributions_and_processors_come_back(request, fixture, width):
    pipe = request.getfixturevalue(fixture)
    adapter = adapter_for(pipe)
    net = adapter.denoiser
    before = dict(net.attn_processors)
    h, w = adapter.default_size()
    cond = adapter.encode(PROMPT, None, False, h, w)
    cond.extra["guidance_scale"] = 3.5
    z, timesteps = adapter.prepare(cond, 4, h, w, torch.Generator().manual_seed(0))
    method = _Capture()
    with pytest.raises(RuntimeError, match="inside"), LiveTextMaps(pipe) as live:
        live.latent_hw = adapter.latent_hw(z)
        live.set_prompt(PROMPT)
        live.need_live = set(method.layers(live.resolutions()))
        leaf, out = guidance_forward(pipe, live, method, None, z, timesteps[0], cond, step=0, adapter=adapter)
        assert torch.autograd.grad(out.loss, [leaf])[0].abs().sum() > 0  # the maps carry the latent's graph
        raise RuntimeError("an error inside the block")
    assert all(net.attn_processors[k] is v for k, v in before.items())
    assert set(method.seen) == set(live.sites) and method.seen
    for m in method.seen.values():
        assert m.shape[-1] == width  # CLIP: 77; T5: an empty column, then max_sequence_length pieces
        torch.testing.assert_close(m.sum(-1), torch.ones_like(m.sum(-1)))  # Sana: no instruction column kept here


@pytest.mark.parametrize("fixture", ["sd3_pipe", "flux_pipe", "pixart_pipe", "sana_pipe"])
def test_a_guided_dit_sample_writes_a_readable_run(request, fixture, tmp_path):
    """The loss reads LiveTextMaps, the recorder (entered first, wrapped by them) stores the run."""
    pipe = request.getfixturevalue(fixture)
    processors = dict(adapter_for(pipe).denoiser.attn_processors)
    kw = dict(seed=0, num_inference_steps=2, method_options={"step_size": 50.0})
    run = attnlens.sample(pipe, PROMPT, method="syngen", out=tmp_path / "run", **kw)
    assert all(adapter_for(pipe).denoiser.attn_processors[k] is v for k, v in processors.items())
    assert sorted(map(int, run.manifest["records"]["guidance"])) == [0, 1]
    loss = run.scalars()["loss"][:, 0, 0]
    assert np.isfinite(loss).all() and (loss != 0).all()
    assert np.isfinite(run.maps(run.layers[0], step=0, phase="guidance")).all()
    plain = attnlens.sample(pipe, PROMPT, method="none", seed=0, num_inference_steps=2, out=tmp_path / "none")
    assert run.latents().shape == plain.latents().shape and run.latents().shape[-3] == 4  # Flux: unpacked
    assert not np.allclose(run.latents()[-1], plain.latents()[-1])  # the updates changed the sampled latent


def test_sana_words_sit_where_the_parse_and_the_recording_put_them(sana_pipe, tmp_path):
    """Sana's pipeline reads instruction + prompt and keeps the first and the last n − 1 positions; with this
    prompt the instruction's trailing space stays a lone ``▁`` at column 1, so prompt piece k is at column k + 2.
    The live maps put each word at its parse position (Gemma tokenizer: piece k at k + 1), and that column is the
    one the recorder stored for the word (as the analysis locates it)."""
    from attnlens.textctx import remap_positions

    prompt = "2 red crowns and a golden strawberry"  # "2" (a byte piece) does not merge with the space before it
    adapter = adapter_for(sana_pipe)
    columns = adapter.text_columns(prompt)
    assert columns[:4] == [0, 2, 3, 4]
    method = _CaptureEveryStep()
    run = attnlens.sample(sana_pipe, prompt, method=method, seed=0, num_inference_steps=1, out=tmp_path / "run")
    parse = parse_prompt(prompt, tokenizer=adapter.text_tokenizer)
    assert run.tokens[0][1] == "▁" and run.tokens[0][2] == "<0x32>"
    layer = run.layers[0]
    live = method.seen[layer].mean(0)  # (h, w, T), the mean over heads, as stored
    stored = np.asarray(run.maps(layer, step=0, phase="guidance")).reshape(-1, *live.shape[:2])  # (token, h, w)
    encoders = run.manifest["text"]["encoders"]
    words = [u for s in parse.sets for u in (*s.modifiers, s.noun)]
    assert len(words) == 4
    for position in (p for unit in words for p in unit.positions):  # each word piece
        found = remap_positions(prompt, list(parse.pieces), [position], run.tokens[0], encoders)
        assert found == {"gemma": [position + 1]}  # the recorder keeps the lone ▁: one column later
        np.testing.assert_allclose(stored[position + 1], live[..., position].numpy(), rtol=2e-3, atol=1e-6)


def _sd3_maps(pipe, text: str) -> dict[str, torch.Tensor]:
    """The live maps of one guidance forward on SD3 (the same latent and step each call) with ``text``."""
    adapter = adapter_for(pipe)
    h, w = adapter.default_size()
    cond = adapter.encode(PROMPT, None, False, h, w)
    z, timesteps = adapter.prepare(cond, 4, h, w, torch.Generator().manual_seed(0))
    method = _Capture()
    with LiveTextMaps(pipe, text=text) as live:
        live.latent_hw = adapter.latent_hw(z)
        live.set_prompt(PROMPT)
        live.need_live = set(method.layers(live.resolutions()))
        guidance_forward(pipe, live, method, None, z, timesteps[0], cond, step=0, adapter=adapter)
    return method.seen


def test_sd3_both_is_the_mean_of_a_words_clip_and_t5_maps(sd3_pipe):
    """``both``, on the CLIP positions: ½ (CLIP map + the mean of the word's T5 piece maps); positions without T5
    pieces (``<sot>``, ``<eot>``, padding) keep the CLIP map."""
    clip, t5, both = (_sd3_maps(sd3_pipe, text) for text in ("clip", "t5", "both"))
    assert sd3_pipe.tokenizer.tokenize(PROMPT)[:3] == ["a</w>", "red</w>", "crown</w>"]
    assert sd3_pipe.tokenizer_3.tokenize(PROMPT)[:5] == ["▁a", "▁red", "▁c", "row", "n"]
    for layer in clip:
        c, t, b = clip[layer], t5[layer], both[layer]  # t5: T5 piece k at k + 1
        assert b.shape == c.shape
        torch.testing.assert_close(b[..., 2], (c[..., 2] + t[..., 2]) / 2)  # red: CLIP 2, T5 piece 1
        torch.testing.assert_close(b[..., 3], (c[..., 3] + t[..., 3:6].mean(-1)) / 2)  # crown: ▁c row n
        torch.testing.assert_close(b[..., 0], c[..., 0])  # <sot>
        torch.testing.assert_close(b[..., 20:], c[..., 20:])  # padding
        assert not torch.allclose(b[..., 3], c[..., 3])


@pytest.mark.parametrize("name", ["syngen", "attend-excite"])
def test_sd3_guidance_on_both_encoders_lowers_its_loss(sd3_pipe, name):
    losses = lowers_its_loss(sd3_pipe, name, text="both")
    assert losses[-1] < losses[0], losses


def test_sd3_guided_on_t5_is_parsed_with_the_t5_tokenizer(sd3_pipe):
    """With guide_text="t5" the maps index T5 pieces (piece k at k + 1), so the parse is made of T5 pieces."""

    class CaptureParse(_CaptureEveryStep):
        def loss(self, maps, parse, i):
            self.parse = parse
            return super().loss(maps, parse, i)

    method = CaptureParse()
    attnlens.sample(sd3_pipe, PROMPT, method=method, guide_text="t5", num_inference_steps=1)
    assert method.parse.pieces[1:3] == ("▁a", "▁red")
    assert next(iter(method.seen.values())).shape[-1] == 1 + adapter_for(sd3_pipe).max_sequence_length  # empty, T5
    clip = attnlens.sample(sd3_pipe, PROMPT, method="syngen", seed=0, num_inference_steps=1)
    t5 = attnlens.sample(sd3_pipe, PROMPT, method="syngen", seed=0, num_inference_steps=1, guide_text="t5")
    assert not torch.equal(clip.latents, t5.latents)  # the loss read other maps


def test_guide_text_is_refused_where_it_has_no_choice(pixart_pipe, sd3_pipe):
    with pytest.raises(BadOption, match="not available on pixart"):
        attnlens.sample(pixart_pipe, PROMPT, method="syngen", guide_text="clip", num_inference_steps=1)
    with pytest.raises(BadOption, match="not available on sd3"):
        LiveTextMaps(sd3_pipe, text="gemma")


@pytest.mark.parametrize("name", ["conform", "ebama", "a-star", "predicated"])
@pytest.mark.parametrize("fixture", ["sd3_pipe", "sana_pipe"])
def test_the_other_cross_attention_methods_guide_the_transformers(request, fixture, name):
    """The baselines that read cross-attention maps only run on the DiT layouts: finite losses, non-zero gradients,
    and the latent moves (InitNO and Structured Diffusion need UNet layers and are refused: test_family_cli.py)."""
    pipe = request.getfixturevalue(fixture)
    result = attnlens.sample(pipe, PROMPT, method=name, seed=0, num_inference_steps=1)
    assert result.log and all(np.isfinite(e["loss"]) and e["grad_norm"] > 0 for e in result.log), result.log
    plain = guided_sample(pipe, PROMPT, seed=0, num_inference_steps=1)
    assert not torch.equal(result.latents, plain.latents)


USER_LOSS = '''
import torch

def loss(maps, parse, i):
    """Draw attention to text position 2 (a word of the prompt on every family): minus its mean map."""
    return -torch.stack([m.mean(0)[..., 2].mean() for m in maps.values()]).mean()
'''


@pytest.mark.parametrize("fixture", ["sdxl_pipe", "sd3_pipe", "flux_pipe", "pixart_pipe", "sana_pipe"])
def test_a_user_loss_file_guides_every_family(request, fixture, tmp_path):
    """A loss written by the user (``--method path.py:function``) gets the family's live maps and lowers under
    repeated updates, as the built-in methods do."""
    (tmp_path / "user_loss.py").write_text(USER_LOSS)
    losses = lowers_its_loss(request.getfixturevalue(fixture), f"{tmp_path / 'user_loss.py'}:loss")
    assert losses[-1] < losses[0], losses
