"""Recording the transformer families (issue 15): SD3 joint attention, Flux double- and single-stream blocks,
PixArt-Σ and Sana cross-attention — every site at every step, shapes from the (packed) patch grid, token strings
and encoders, bit-identical latents, processors restored on exit and on error, pipelines the user built."""

import numpy as np
import pytest
import torch

import attnlens
from attnlens.errors import ConfigError
from attnlens.recording.dit import DiTRecordingProcessor
from attnlens.recording.recorder import recording_sites
from attnlens.textctx import piece_text

PROMPT = "a red crown and a golden strawberry"
#: family → (embedded name, call options, site names, map grid, encoders of the recorded positions)
FAMILIES = {
    "sd3": ("attnlens-tiny-sd3", dict(max_sequence_length=32),
            ["transformer_blocks.0.attn", "transformer_blocks.1.attn"], (8, 8), {"clip", "t5"}),
    "flux": ("attnlens-tiny-flux", dict(max_sequence_length=32),
             ["transformer_blocks.0.attn", "transformer_blocks.1.attn", "single_transformer_blocks.0.attn",
              "single_transformer_blocks.1.attn"], (8, 8), {"t5"}),
    "pixart": ("attnlens-tiny-pixart", dict(max_sequence_length=32, use_resolution_binning=False),
               ["transformer_blocks.0.attn2", "transformer_blocks.1.attn2"], (8, 8), {"t5"}),
    "sana": ("attnlens-tiny-sana", dict(max_sequence_length=32, use_resolution_binning=False,
                                        complex_human_instruction=None),
             ["transformer_blocks.0.attn2", "transformer_blocks.1.attn2"], (16, 16), {"gemma"}),
}
STEPS = 3


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    mp = pytest.MonkeyPatch()
    mp.setenv("ATTNLENS_HOME", str(home))
    torch.set_num_threads(1)
    out = {f: attnlens.load_pipeline(spec[0], device="cpu") for f, spec in FAMILIES.items()}
    yield out
    mp.undo()


def _call(pipe, family, **extra):
    kw = dict(num_inference_steps=STEPS, height=64, width=64, output_type="latent", **FAMILIES[family][1])
    kw.update(extra)
    return pipe(PROMPT, generator=torch.Generator().manual_seed(0), **kw).images


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_site_every_step_bit_identical(family, pipes, tmp_path):
    pipe = pipes[family]
    _, _, sites, grid, encoders = FAMILIES[family]
    before = {n: m.processor for n, m in recording_sites(pipe).items()}
    ref = _call(pipe, family)
    with attnlens.record(pipe, tmp_path / "run") as rec:
        got = _call(pipe, family)
        assert all(isinstance(m.processor, DiTRecordingProcessor) for m in recording_sites(pipe).values())
    assert torch.equal(ref, got)  # recording changes nothing
    assert all(m.processor is before[n] for n, m in recording_sites(pipe).items())  # the very same objects back

    run = attnlens.open_run(tmp_path / "run")
    assert run.layers == sites
    text = run.manifest["text"]
    pieces = run.tokens[0]
    assert set(text["encoders"]) == encoders and len(text["encoders"]) == len(pieces) == len(text["positions"])
    for layer in sites:
        assert run.recorded_steps(layer) == list(range(STEPS))
        maps = run.maps(layer)
        assert maps.shape == (STEPS, 1, 1, len(pieces), *grid)
        assert np.isfinite(maps).all() and (maps >= 0).all()
    # every encoder's stored pieces spell the whole prompt
    for enc in encoders:
        spelled = "".join(piece_text(p) for p, e in zip(pieces, text["encoders"]) if e == enc)
        assert spelled == PROMPT.replace(" ", "")
    if family == "sd3":  # CLIP's <sot> … <eot>, then T5's pieces through </s>
        assert pieces[0] == "<|startoftext|>" and "<|endoftext|>" in pieces and pieces[-1] == "</s>"
        assert text["segments"] == [{"encoder": "clip", "start": 0, "length": 77},
                                    {"encoder": "t5", "start": 77, "length": 32}]
        assert text["positions"][pieces.index("<|endoftext|>") + 1] == 77
    lat = run.latents()
    assert lat.shape[0] == STEPS and lat.shape[-2:] == (16, 16)  # Flux's packed latents are stored unpacked


@pytest.mark.parametrize("family", ["sd3", "pixart"])
def test_softmax_over_all_keys_then_sliced(family, pipes, tmp_path):
    """Cross-attention rows sum to 1 over all text keys; joint-attention rows to the text's share (< 1), since the
    softmax runs over image and text keys before the text columns are kept."""
    with attnlens.record(pipes[family], tmp_path / "run", tokens="all") as rec:
        _call(pipes[family], family)
    run = attnlens.open_run(tmp_path / "run")
    total = run.maps(run.layers[0], step=0).astype(np.float64).sum(axis=2)  # over the token axis
    if family == "pixart":  # padding is masked out
        np.testing.assert_allclose(total, 1.0, atol=2e-3)
    else:
        assert (total < 0.999).all() and (total > 0).all()
        assert len(run.tokens[0]) == 77 + 32


def test_restored_on_error_and_refuses_double_entry(pipes, tmp_path):
    pipe = pipes["flux"]
    before = {n: m.processor for n, m in recording_sites(pipe).items()}
    rec = attnlens.record(pipe, tmp_path / "run")
    with pytest.raises(RuntimeError, match="boom"):
        with rec:
            raise RuntimeError("boom")
    assert all(m.processor is before[n] for n, m in recording_sites(pipe).items())
    with pytest.raises(ConfigError):
        with rec:
            pass


def test_live_maps_carry_the_graph_on_a_transformer(pipes):
    """The API guidance uses: rec.need_live + rec.context(phase="guidance") gives (heads, h, w, tokens) maps of the
    recorded text positions, differentiable with respect to the latent."""
    pipe = pipes["pixart"]
    net = pipe.transformer
    site = "transformer_blocks.1.attn2"
    with attnlens.record(pipe, None, prompts=[PROMPT]) as rec:
        embeds, mask, _, _ = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False, max_sequence_length=32)
        rec.need_live = {site}
        latent = torch.randn(1, 4, 16, 16, requires_grad=True)
        with rec.context(0, 999.0, phase="guidance"):
            net(latent, encoder_hidden_states=embeds, encoder_attention_mask=mask,
                timestep=torch.tensor([999.0]), added_cond_kwargs={"resolution": None, "aspect_ratio": None})
        live = rec.live_maps[site]
        assert live.shape == (2, 8, 8, len(rec.text_layout()["positions"]))
        live[..., 1].sum().backward()
    assert latent.grad is not None and latent.grad.abs().sum() > 0


def test_a_pipeline_built_in_the_test(pipes, tmp_path):
    """attnlens.record on a pipeline assembled from diffusers classes (not an embedded name): a Flux transformer of
    another shape (3 heads, 1 + 1 blocks) and 48×32 images (a non-square packed grid, 6×4)."""
    from diffusers import FluxPipeline, FluxTransformer2DModel

    base = pipes["flux"]
    torch.manual_seed(1)
    net = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                 num_attention_heads=3, joint_attention_dim=64, pooled_projection_dim=32,
                                 guidance_embeds=True, axes_dims_rope=(4, 6, 6))
    pipe = FluxPipeline(scheduler=base.scheduler, vae=base.vae, text_encoder=base.text_encoder,
                        tokenizer=base.tokenizer, text_encoder_2=base.text_encoder_2, tokenizer_2=base.tokenizer_2,
                        transformer=net)
    kw = dict(num_inference_steps=2, height=48, width=32, output_type="latent", max_sequence_length=16)
    ref = pipe(PROMPT, generator=torch.Generator().manual_seed(0), **kw).images
    with attnlens.record(pipe, tmp_path / "run", heads="all") as rec:
        got = pipe(PROMPT, generator=torch.Generator().manual_seed(0), **kw).images
    assert torch.equal(ref, got)
    run = attnlens.open_run(tmp_path / "run")
    assert run.layers == ["transformer_blocks.0.attn", "single_transformer_blocks.0.attn"]
    assert run.maps(run.layers[1]).shape == (2, 1, 3, len(run.tokens[0]), 6, 4)  # (step, sample, head, token, y, x)


@pytest.fixture(scope="module")
def dit_root(pipes, tmp_path_factory):
    """SD3 and Flux runs of the same prompt and seed (2 steps, images saved), labelled by family."""
    root = tmp_path_factory.mktemp("dit-root")
    for family in ("sd3", "flux"):
        with attnlens.record(pipes[family], root / family, prompts=[PROMPT], seeds=[1],
                             manifest={"label": family}) as rec:
            out = pipes[family](PROMPT, num_inference_steps=2, height=64, width=64, max_sequence_length=32,
                                generator=torch.Generator().manual_seed(1))
            rec.save_images(out.images, seeds=[1])
    return root


def test_analyze_compare_and_figures_on_transformer_runs(dit_root, tmp_path):
    from attnlens.analysis import read_table, write_parquet
    from attnlens.compare import compare
    from attnlens.figures import FigureSpec, draw

    both = write_parquet([dit_root], tmp_path / "both.parquet").path
    t5 = write_parquet([dit_root], tmp_path / "t5.parquet", text="t5").path
    renorm = write_parquet([dit_root], tmp_path / "renorm.parquet", text="t5", renormalize_text=True).path
    sel = lambda df: df[(df.metric == "neglect_mass") & (df.layer == "all") & (df.token == "red")]  # noqa: E731
    b, t, r = (read_table(p) for p in (both, t5, renorm))
    assert set(b.variant) == {"sd3", "flux"} and np.isfinite(sel(b).value).all()
    flux_b = sel(b)[sel(b).variant == "flux"].value.to_numpy()
    flux_t = sel(t)[sel(t).variant == "flux"].value.to_numpy()
    np.testing.assert_allclose(flux_b, flux_t)  # Flux has only T5: both = t5
    sd3_b = sel(b)[sel(b).variant == "sd3"].value.to_numpy()
    sd3_t = sel(t)[sel(t).variant == "sd3"].value.to_numpy()
    assert not np.allclose(sd3_b, sd3_t)  # SD3: the mean with CLIP's map differs from T5's alone
    # joint attention: renormalised over the text, a word's mass grows (its softmax also covered the image keys)
    assert (sel(r)[sel(r).variant == "sd3"].value.to_numpy() > sd3_t).all()
    cmp = compare(b, by="variant", baseline="sd3")
    assert set(cmp.groups) == {"sd3", "flux"} and len(cmp.table)
    fig = draw(FigureSpec(kind="maps", sources=(str(dit_root / "flux"),), tokens=("red", "crown")))
    assert len(fig.axes) > 4


def test_dashboard_data_on_transformer_runs(dit_root):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from dashboard import data as D

    run = attnlens.open_run(dit_root / "sd3")
    parse = D.parse_of(run)
    assert list(parse.pieces) == run.tokens[0]
    red = next(u for s in parse.sets for u in s.modifiers if u.word == "red")
    assert [run.tokens[0][p] for p in red.positions] == ["red</w>", "▁red"]  # CLIP's piece and T5's
    maps = run.maps(run.layers[0], step=1)[0, 0].astype(np.float64)
    got = D.token_maps(maps, parse, ["red"])[0]
    np.testing.assert_allclose(got, maps[list(red.positions)].mean(axis=0))
