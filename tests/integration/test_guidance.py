"""Guided sampling on the embedded model: the methods really act on the maps, and every step is recorded."""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pytest
import torch

import attnlens
from attnlens.methods import GuidanceMethod, LossOutput, StepPlan
from attnlens.parse import parse_prompt
from attnlens.sampler import guidance_forward
from conftest import PROMPT

GUIDED = ["syngen", "syngen-entropy", "attend-excite", "divide-bind"]


@pytest.fixture(scope="module")
def parse():
    return parse_prompt(PROMPT)


@pytest.mark.parametrize("name", GUIDED)
def test_repeated_updates_at_a_fixed_step_lower_the_loss(tiny_pipe, parse, name):
    """Gradient descent on the latent through the live maps lowers the method's own loss."""
    method = attnlens.get_method(name)
    pipe = tiny_pipe
    pipe.scheduler.set_timesteps(50)
    t = pipe.scheduler.timesteps[0]
    g = torch.Generator().manual_seed(0)
    z = pipe.prepare_latents(1, 4, 64, 64, torch.float32, torch.device("cpu"), g)
    with torch.no_grad():
        cond, _ = pipe.encode_prompt(PROMPT, torch.device("cpu"), 1, False)
    losses = []
    with attnlens.record(pipe, None) as rec:
        rec.latent_hw = tuple(z.shape[-2:])
        rec.need_live = set(method.layers(rec.resolutions()))
        assert rec.need_live, "the method found its layers"
        step_size = None
        for it in range(6):
            leaf, out = guidance_forward(pipe, rec, method, parse, z, t, cond, step=0, iteration=it)
            losses.append(float(out.loss.detach()))
            grad = torch.autograd.grad(out.loss, [leaf])[0]
            assert torch.isfinite(grad).all() and grad.abs().sum() > 0
            if step_size is None:  # a step that moves the latent by ~1 % of its norm, whatever the loss scale
                step_size = 0.01 * float(z.norm()) / float(grad.norm())
            z = leaf.detach() - step_size * grad
    assert losses[-1] < losses[0], losses


@pytest.mark.slow
def test_guided_run_records_every_step_phase_and_scalar(tiny_pipe, tmp_path):
    run = attnlens.sample(tiny_pipe, PROMPT, method="attend-excite", seed=3, num_inference_steps=12,
                          out=tmp_path / "ae", method_options={"max_iter_to_alter": 11, "thresholds": {"0": 0.99, "10": 0.99}})
    m = run.manifest
    n = len(run.timesteps())
    assert n == 13
    records = m["records"]
    assert sorted(map(int, records["sample"])) == list(range(n))
    assert sorted(map(int, records["guidance"])) == list(range(11))
    sc = run.scalars()
    for key in ("loss", "grad_norm", "step_size", "update_applied", "refinement_iterations"):
        assert key in sc, key
    refinements = sc["refinement_iterations"][:, 0, 0]
    assert refinements[0] >= 1 and refinements[10] >= 1  # thresholds 0.99 force refinement at steps 0 and 10
    # guidance maps exist for every iteration at the refinement steps, and match the scalar log
    layer = run.layers[0]
    arr = run.array(layer)
    assert arr.shape[2] >= int(refinements[0]) + 1
    assert records["guidance"]["0"] == list(range(int(refinements[0]) + 1))
    g0 = run.maps(layer, step=0, phase="guidance", iteration=1)
    assert np.isfinite(g0).all()
    # Attend-and-Excite's step size schedule, recorded per step
    ss = sc["step_size"][:, 0, 0]
    assert math.isclose(ss[0], 20.0, rel_tol=1e-6)
    assert math.isclose(ss[5], 20 * math.sqrt(np.linspace(1.0, 0.5, n)[5]), rel_tol=1e-6)
    assert np.isnan(ss[11:]).all()
    # the update changed the latent the sampling forward saw, compared with the unguided run of the same seed
    base = attnlens.sample(tiny_pipe, PROMPT, method="none", seed=3, num_inference_steps=12, out=tmp_path / "none")
    assert not np.allclose(run.latents()[0], base.latents()[0])


def test_manifest_round_trips_every_hyperparameter(tiny_pipe, tmp_path):
    options = {"step_size": 7.5, "intervention_steps": 3, "distance": "jsd", "positive": False}  # short alias, stored as jensen_shannon
    run = attnlens.sample(tiny_pipe, PROMPT, method="syngen", method_options=options, seed=0, num_inference_steps=4,
                          out=tmp_path / "s", bind=["red>crown", "golden>strawberry"])
    hp = run.manifest["method"]["hyperparameters"]
    rebuilt = attnlens.get_method(run.manifest["method"]["name"], **hp)
    assert rebuilt.hyperparameters() == hp
    assert rebuilt.config == attnlens.get_method("syngen", **options).config
    p = attnlens.parse.Parse.from_dict(run.manifest["parse"])
    assert p.source == "manual" and [s.noun.word for s in p.sets] == ["crown", "strawberry"]
    assert run.manifest["bind"] == ["red>crown", "golden>strawberry"]
    assert sorted(map(int, run.manifest["records"]["guidance"])) == [0, 1, 2]
    for name in GUIDED:
        method = attnlens.get_method(name)
        hp = method.hyperparameters()
        assert attnlens.get_method(name, **hp).hyperparameters() == hp


@pytest.mark.slow
def test_multi_seed_multi_prompt_cli(tiny_pipe, tmp_path, monkeypatch, capsys):
    from attnlens.cli import main

    monkeypatch.setattr(attnlens.models, "load_pipeline", lambda *a, **k: tiny_pipe)
    code = main(["record", "a red cat and a blue dog", "a green apple", "--method", "syngen", "--seed", "1", "--seed", "2",
                 "--n-steps", "3", "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    runs = [attnlens.open_run(p) for p in attnlens.find_runs(tmp_path)]
    assert sorted((r.manifest["prompt"], r.manifest["seed"]) for r in runs) == [
        ("a green apple", 1), ("a green apple", 2), ("a red cat and a blue dog", 1), ("a red cat and a blue dog", 2)]
    by_key = {(r.manifest["prompt"], r.manifest["seed"]): r for r in runs}
    # each run is parsed for its own prompt (the released pipeline reused the first prompt's sets)
    assert [s["noun"]["word"] for s in by_key[("a green apple", 1)].manifest["parse"]["sets"]] == ["apple"]
    assert [s["noun"]["word"] for s in by_key[("a red cat and a blue dog", 2)].manifest["parse"]["sets"]] == ["cat", "dog"]
    # different seeds give different images
    a = np.asarray(by_key[("a green apple", 1)].image())
    b = np.asarray(by_key[("a green apple", 2)].image())
    assert not np.array_equal(a, b)


class _NaNOnce(GuidanceMethod):
    name = "nan-once"

    def layers(self, resolutions):
        return [n for n, r in resolutions.items() if r == (16, 16)]

    def plan(self, i, n):
        return StepPlan(step_size=1.0) if i < 3 else None

    def loss(self, maps, parse, i):
        m = attnlens.maps.aggregate(maps)
        value = m[..., 2].sum() * (float("nan") if i == 1 else 1.0)
        return LossOutput(loss=value, terms={"mass": m[..., 2].sum()})


def test_nonfinite_loss_is_skipped_recorded_and_warned_once(tiny_pipe, tmp_path):
    with pytest.warns(UserWarning, match="non-finite") as record:
        run = attnlens.sample(tiny_pipe, PROMPT, method=_NaNOnce(), seed=0, num_inference_steps=4, out=tmp_path / "n")
    assert sum("non-finite" in str(w.message) for w in record) == 1
    sc = run.scalars()
    assert sc["update_applied"][0, 0, 0] == 1 and sc["update_applied"][1, 0, 0] == 0
    assert sc["nonfinite"][1, 0, 0] == 1
    assert np.asarray(run.image()).std() > 0 and np.isfinite(run.latents()).all()


def test_user_methods_by_decorator_and_by_file(tiny_pipe, tmp_path):
    @attnlens.register_method("test-mass", overwrite=True)
    def mass(maps, parse, i):
        """Pull attention mass onto the first noun."""
        agg = attnlens.maps.aggregate(maps)
        pos = parse.nouns[0].positions[0]
        loss = -agg[..., pos].mean()
        return loss, {"mass": -loss}

    run = attnlens.sample(tiny_pipe, PROMPT, method="test-mass", method_options={"intervention_steps": 2}, seed=0,
                          num_inference_steps=3, out=tmp_path / "deco")
    assert run.manifest["method"]["name"] == "test-mass"
    assert "mass" in run.scalars() and run.manifest["method"]["hyperparameters"]["intervention_steps"] == 2

    f = tmp_path / "my_loss.py"
    f.write_text(textwrap.dedent("""
        import attnlens

        def loss(maps, parse, i):
            agg = attnlens.maps.aggregate(maps)
            return agg[..., 1].var()
    """))
    run = attnlens.sample(tiny_pipe, PROMPT, method=f"{f}:loss", seed=0, num_inference_steps=3, out=tmp_path / "file")
    assert run.manifest["method"]["name"].endswith("my_loss.py:loss")
    assert run.manifest["method"]["hyperparameters"]["function"].endswith(":loss")
    assert sorted(map(int, run.manifest["records"]["guidance"])) == [0, 1, 2, 3]
    with pytest.raises(attnlens.AttnlensError, match="has no attribute"):
        attnlens.get_method(f"{f}:missing")
