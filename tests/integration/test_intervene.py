"""Interventions on cross-attention (issue 14 §1) on the tiny pipeline: the edited probabilities are what the layer
uses and what is recorded; no-op edits change nothing bit for bit; patching a run into itself reproduces it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnlens
from attnlens.analysis import variant_label
from attnlens.errors import AttnlensError, ConfigError, NotFoundError
from attnlens.recording import RecordingConfig

PROMPT = "a red cube and a blue ball"
KW = dict(seed=0, num_inference_steps=2, height=64, width=64)
FULL = RecordingConfig(heads="all", dtype="fp32", tokens="all")  # exact maps: every head, all 77 keys, fp32


@pytest.fixture(scope="module")
def plain(tiny_pipe, tmp_path_factory):
    return attnlens.sample(tiny_pipe, PROMPT, out=tmp_path_factory.mktemp("iv") / "plain", recording=FULL, **KW)


def _sample(pipe, tmp_path, name, interventions, recording=FULL):
    return attnlens.sample(pipe, PROMPT, out=tmp_path / name, recording=recording, interventions=interventions, **KW)


def _maps(run):
    return {(layer, s): run.maps(layer, s) for layer in run.layers for s in run.recorded_steps(layer)}


def _assert_same_run(a, b):
    assert np.array_equal(a.latents(), b.latents())
    ma, mb = _maps(a), _maps(b)
    assert ma.keys() == mb.keys()
    for key in ma:
        assert np.array_equal(ma[key], mb[key]), key


def _processors(pipe):
    return dict(pipe.unet.attn_processors)


def test_no_op_interventions_are_bit_identical_to_none(tiny_pipe, tmp_path, plain):
    """Scale by 1, an edit at steps outside the schedule, and a swap applied twice leave latents and maps as they are."""
    run = _sample(tiny_pipe, tmp_path, "noop", ["scale red 1", "ablate red steps=50:60",
                                                "swap red blue", "swap red blue"])
    _assert_same_run(plain, run)


def test_ablate_zeroes_the_token_and_rows_stay_distributions(tiny_pipe, tmp_path, plain):
    run = _sample(tiny_pipe, tmp_path, "ablate", ["ablate red"])
    red = run.token_positions("red")
    for (layer, step), m in _maps(run).items():  # (sample, head, token, y, x) over all 77 keys
        assert (m[:, :, red] == 0).all(), (layer, step)
        np.testing.assert_allclose(m.sum(axis=2), 1.0, atol=1e-5)
    assert not np.array_equal(run.latents(), plain.latents())  # the layers used the edited probabilities


def test_swap_exchanges_the_recorded_columns_and_changes_the_output(tiny_pipe, tmp_path, plain):
    run = _sample(tiny_pipe, tmp_path, "swap", ["swap red blue steps=0:1"])
    red, blue = run.token_positions("red"), run.token_positions("blue")
    layer = run.layers[0]
    mine, ref = run.maps(layer, 0), plain.maps(layer, 0)  # step 0: same input latent, columns exchanged
    np.testing.assert_allclose(mine[:, :, red], ref[:, :, blue], atol=1e-6)
    np.testing.assert_allclose(mine[:, :, blue], ref[:, :, red], atol=1e-6)
    assert np.abs(run.latents()[1] - plain.latents()[1]).max() > 0  # step 1's input changed
    assert run.latents()[0].tolist() == plain.latents()[0].tolist()


def test_layer_and_phase_selections(tiny_pipe, tmp_path, plain):
    run = _sample(tiny_pipe, tmp_path, "res8", ["ablate red layers=res8 steps=0"])
    red = run.token_positions("red")
    res = run.resolutions()
    for layer in run.layers:
        m = run.maps(layer, 0)
        assert ((m[:, :, red] == 0).all()) == (res[layer][0] == 8), layer
    guidance_only = _sample(tiny_pipe, tmp_path, "guid", ["ablate red phases=guidance"])
    _assert_same_run(plain, guidance_only)  # method none has no guidance forward: nothing edited


def test_mask_keeps_the_token_inside_the_box(tiny_pipe, tmp_path):
    run = _sample(tiny_pipe, tmp_path, "mask", ["mask red box=0,0,0.5,0.5"])
    red = run.token_positions("red")
    for layer in run.layers:
        m = run.maps(layer, 0)[0, :, red[0]]  # (head, y, x)
        h, w = m.shape[-2:]
        assert (m[:, h // 2:, :] == 0).all() and (m[:, :, w // 2:] == 0).all()
        assert (m[:, : h // 2, : w // 2] > 0).all()
        np.testing.assert_allclose(run.maps(layer, 0).sum(axis=2), 1.0, atol=1e-5)


def test_mask_region_array_is_resized_per_layer(tiny_pipe, tmp_path):
    region = np.zeros((64, 64), dtype=bool)
    region[32:, 32:] = True
    run = _sample(tiny_pipe, tmp_path, "region", [attnlens.Intervention("mask", ("blue",), region=region)])
    blue = run.token_positions("blue")
    for layer in run.layers:
        m = run.maps(layer, 0)[0, :, blue[0]]
        h, w = m.shape[-2:]
        assert (m[:, : h // 2] == 0).all() and (m[:, h // 2:, w // 2:] > 0).all()
    assert run.manifest["interventions"][0]["region"]["shape"] == [64, 64]


def test_patch_from_a_run_into_the_same_seed_and_prompt_reproduces_it(tiny_pipe, tmp_path, plain):
    run = _sample(tiny_pipe, tmp_path, "patched", [f"patch {plain.path}"])
    _assert_same_run(plain, run)


def test_patch_from_another_prompt_changes_the_run(tiny_pipe, tmp_path, plain):
    other = attnlens.sample(tiny_pipe, "a blue cube and a red ball", out=tmp_path / "other", recording=FULL, **KW)
    run = _sample(tiny_pipe, tmp_path, "patched", [f"patch {other.path}"])
    layer = run.layers[0]
    np.testing.assert_allclose(run.maps(layer, 1), other.maps(layer, 1), atol=1e-6)  # the source's maps, used
    assert not np.array_equal(run.latents(), plain.latents())


def test_patch_refuses_another_schedule(tiny_pipe, tmp_path, plain):
    with pytest.raises(ConfigError, match="another schedule"):
        attnlens.sample(tiny_pipe, PROMPT, out=tmp_path / "x", interventions=[f"patch {plain.path}"],
                        **{**KW, "num_inference_steps": 3})
    assert not (tmp_path / "x").exists()  # refused before anything was written


def test_manifest_and_variant_label(tiny_pipe, tmp_path):
    run = _sample(tiny_pipe, tmp_path, "label", ["swap red blue steps=0:1 layers=res16"], recording=None)
    assert run.manifest["interventions"] == [{"op": "swap", "tokens": ["red", "blue"], "layers": ["res16"],
                                              "steps": "0:1", "phases": ["sample", "guidance"]}]
    assert variant_label(run.manifest) == "none + swap(red,blue; steps 0:1; res16)"
    from dashboard.data import _entry  # the dashboard names the run the same way

    assert _entry(tmp_path, run.path).variant == "none + swap(red,blue; steps 0:1; res16)"


def test_intervene_around_a_plain_pipeline_call_and_restores_processors(tiny_pipe):
    before = _processors(tiny_pipe)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    call = dict(num_inference_steps=2, height=64, width=64, output_type="np")
    ref = tiny_pipe(PROMPT, generator=gen(), **call).images
    with attnlens.intervene(tiny_pipe, ["scale red 1"]):
        same = tiny_pipe(PROMPT, generator=gen(), **call).images
        again = tiny_pipe(PROMPT, generator=gen(), **call).images  # a second call in the same block
    with attnlens.intervene(tiny_pipe, ["ablate red", "ablate blue"]):
        edited = tiny_pipe(PROMPT, generator=gen(), **call).images
    assert np.array_equal(ref, same) and np.array_equal(ref, again)
    assert not np.array_equal(ref, edited)
    after = _processors(tiny_pipe)
    assert all(after[k] is before[k] for k in before)
    with pytest.raises(RuntimeError, match="boom"):
        with attnlens.intervene(tiny_pipe, ["ablate red"]):
            raise RuntimeError("boom")
    after = _processors(tiny_pipe)
    assert all(after[k] is before[k] for k in before)


def test_intervene_composes_with_record_either_way(tiny_pipe, tmp_path):
    before = _processors(tiny_pipe)
    with attnlens.intervene(tiny_pipe, ["ablate red"]):
        outer = attnlens.sample(tiny_pipe, PROMPT, out=tmp_path / "outer", **KW)
    gen = torch.Generator().manual_seed(0)
    with attnlens.record(tiny_pipe, tmp_path / "inner", prompts=[PROMPT], seeds=[0]) as rec:
        with attnlens.intervene(tiny_pipe, ["ablate red"]):
            out = tiny_pipe(PROMPT, num_inference_steps=2, height=64, width=64, generator=gen)
        rec.save_images(out.images)
    assert all(_processors(tiny_pipe)[k] is before[k] for k in before)
    for run in (outer, attnlens.open_run(tmp_path / "inner")):
        red = run.token_positions("red")
        assert all((run.maps(layer, 0)[:, :, red] == 0).all() for layer in run.layers)
        assert run.manifest["interventions"][0]["op"] == "ablate"
        assert variant_label(run.manifest) == "none + ablate(red)"


def test_intervene_during_guidance_edits_the_maps_the_loss_sees(tiny_pipe, tmp_path):
    kw = {**KW, "num_inference_steps": 1}
    ref = attnlens.sample(tiny_pipe, PROMPT, method="syngen", out=tmp_path / "g0", **kw)
    run = attnlens.sample(tiny_pipe, PROMPT, method="syngen", out=tmp_path / "g1",
                          interventions=["scale red 0 phases=guidance"], **kw)
    red = run.token_positions("red")
    layer = run.layers[0]
    assert (run.maps(layer, 0, phase="guidance")[:, :, red] == 0).all()
    assert (run.maps(layer, 0, phase="sample")[:, :, red] > 0).any()  # the sampling forward is not edited
    assert run.scalars()["loss"].tolist() != ref.scalars()["loss"].tolist()  # the loss saw the edited maps
    assert not np.array_equal(run.latents(), ref.latents())


def test_word_not_in_the_prompt_is_refused_before_sampling(tiny_pipe, tmp_path):
    with pytest.raises(NotFoundError, match="'green'"):
        attnlens.sample(tiny_pipe, PROMPT, out=tmp_path / "x", interventions=["ablate green"], **KW)
    assert not (tmp_path / "x").exists()
    with pytest.raises(AttnlensError, match="pieces"):
        attnlens.sample(tiny_pipe, "a red cube and a zzqxj ball", out=tmp_path / "y",
                        interventions=["swap red zzqxj"], **KW)


def test_cli_intervene(run_cli, tmp_path):
    code, out, err = run_cli("record", PROMPT, "--n-steps", "2", "--height", "64", "--width", "64", "--out", tmp_path,
                             "--intervene", "swap red blue steps=0:1 layers=res16", "--intervene", "ablate ball")
    assert code == 0, err
    (path,) = [p for p in (tmp_path / "a-red-cube-and-a-blue-ball").iterdir()]
    assert path.name.startswith("none+swap-red-blue-steps-0-1-res16-ablate-ball")
    run = attnlens.open_run(path)
    assert variant_label(run.manifest) == "none + swap(red,blue; steps 0:1; res16) + ablate(ball)"
    code, out, _ = run_cli("info", path)
    assert code == 0 and 'intervene  {"layers": ["res16"], "op": "swap"' in out
    spec = tmp_path / "spec.toml"
    spec.write_text('[[intervention]]\nop = "scale"\ntokens = ["red"]\nfactor = 3\nsteps = "0"\n')
    code, _, err = run_cli("record", PROMPT, "--n-steps", "2", "--height", "64", "--width", "64", "--out", tmp_path,
                           "--intervene-file", spec)
    assert code == 0, err
    assert (tmp_path / "a-red-cube-and-a-blue-ball" / "none+scale-red-3-steps-0-seed0").is_dir()


def test_cli_named_testbed_edit_uses_each_prompts_own_scene(run_cli, tmp_path):
    """`--intervene mask-gt` on testbed captions: each prompt's masks carry its own scene's boxes, every run has the
    same variant label, and a prompt that is no testbed caption is refused before anything is written."""
    from attnlens.testbed.scene_edits import edit_texts, scene_of

    prompts = ["a red circle and a blue square", "a green cross and a blue cross"]
    code, _, err = run_cli("record", *prompts, "--n-steps", "2", "--height", "64", "--width", "64", "--out",
                           tmp_path, "--intervene", "mask-gt steps=0:1", "--intervene", "ablate and")
    assert code == 0, err
    for p in prompts:
        (path,) = list((tmp_path / p.replace(" ", "-")).iterdir())
        assert path.name == "none+mask-gt-steps-0-1-ablate-and-seed0"
        run = attnlens.open_run(path)
        assert variant_label(run.manifest) == "none + mask-gt steps=0:1 + ablate(and)"
        masks = [e for e in run.manifest["interventions"] if e["op"] == "mask"]
        want = [t.split() for t in edit_texts("mask-gt", scene_of(p))]
        assert [m["tokens"] for m in masks] == [w[1:3] for w in want]
        assert [",".join(f"{v:.4g}" for v in m["box"]) for m in masks] == [w[3].removeprefix("box=") for w in want]
        assert all(m["steps"] == "0:1" for m in masks)
    code, _, err = run_cli("record", PROMPT, "--n-steps", "2", "--out", tmp_path / "no", "--intervene", "mask-gt")
    assert code == 2 and "not a held-out caption" in err and "Traceback" not in err
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("args, message", [
    (["--intervene", "swap red"], "takes 2 token"),
    (["--intervene", "explode red"], "unknown intervention"),
    (["--intervene", "scale red"], "needs a factor"),
    (["--intervene", "ablate red steps=x:y"], "step selection"),
    (["--intervene", "mask red box=0,0,1"], "4 numbers"),
    (["--intervene", "ablate green"], "'green'"),
    (["--intervene", "ablate red layers=res99"], "resolution 99"),
    (["--intervene", "patch /no/such/run"], "patch source"),
    (["--intervene-file", "/no/such/spec.json"], "not found"),
])
def test_cli_bad_interventions_exit_2_with_one_line(run_cli, tmp_path, args, message):
    code, out, err = run_cli("record", PROMPT, "--n-steps", "2", "--height", "64", "--width", "64", "--out", tmp_path,
                             *args)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert not list(tmp_path.rglob("manifest.json"))  # nothing written
