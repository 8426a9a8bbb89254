"""A-STAR's and Predicated Diffusion's losses on small hand-built maps, with answers computed from the formulas."""

from __future__ import annotations

import math

import pytest
import torch

from attnlens.errors import AttnlensError
from attnlens.methods import get_method
from attnlens.methods.a_star import a_star_loss, binarize, sum_overlap
from attnlens.methods.predicated import Predicated, min_max, predicated_loss
from attnlens.parse import Parse
from conftest import crown_parse


# ------------------------------------------------------------------------------------------------------- A-STAR
def test_sum_overlap_by_hand():
    p = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    q = torch.tensor([[0.5, 0.5], [0.0, 0.0]], dtype=torch.float64)
    assert float(sum_overlap(p, q)) == pytest.approx(0.5 / 2.0)
    # the paper's denominator is the sum, not the union: identical maps give 1/2, disjoint ones 0
    assert float(sum_overlap(q, q)) == pytest.approx(0.5)
    assert float(sum_overlap(p, torch.flip(p, dims=(0, 1)))) == 0.0


def test_binarize_otsu_and_fraction_of_max():
    a = torch.tensor([[[0.9, 0.1], [0.8, 0.2]], [[0.3, 0.3], [0.3, 0.3]]], dtype=torch.float64)
    m = binarize(a)
    assert torch.equal(m[0], torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64))
    assert m[1].sum() == 0  # a constant map has no Otsu split: empty mask
    assert torch.equal(binarize(a[:1], threshold=0.95), torch.tensor([[[1.0, 0.0], [0.0, 0.0]]], dtype=torch.float64))
    assert not binarize(a.requires_grad_(True)).requires_grad


def _two_subject_agg() -> torch.Tensor:
    """2×2 aggregate whose re-softmax (×100 over [1:76)) is, up to e⁻⁹⁹: token 2 = [[1, 0], [½, 1/75]],
    token 3 = [[0, 1], [½, 1/75]] (pixel (1,0) shared by both, pixel (1,1) uniform over 75 tokens)."""
    agg = torch.zeros(2, 2, 77, dtype=torch.float64)
    agg[0, 0, 2] = agg[0, 1, 3] = 1.0
    agg[1, 0, 2] = agg[1, 0, 3] = 1.0
    return agg


def test_a_star_loss_by_hand():
    agg = _two_subject_agg()
    u = 1 / 75
    seg = (0.5 + u) / (3 + 2 * u)  # Σ min = ½ + 1/75; Σ (A² + A³) = 1 + 1 + 1 + 2/75
    loss, terms = a_star_loss(agg, [2, 3], smooth_attentions=False)
    assert float(terms["segregation"]) == pytest.approx(seg, rel=1e-9)
    assert float(terms["retention"]) == 0.0  # no previous step
    assert float(loss) == pytest.approx(seg, rel=1e-9)
    # retention against the same maps binarised at ½ of the max: B² = [[1, 0], [1, 0]], B³ = [[0, 1], [1, 0]]
    ret1 = 1 - 1.5 / (3.5 + u)  # Σ min(A, B) = 1 + ½; Σ (A + B) = (1 + ½ + 1/75) + 2
    loss, terms = a_star_loss(agg, [2, 3], previous=agg, threshold=0.5, smooth_attentions=False,
                              lambda_segregation=2.0, lambda_retention=3.0)
    assert float(terms["retention"]) == pytest.approx(2 * ret1, rel=1e-9)
    assert float(loss) == pytest.approx(2 * seg + 3 * 2 * ret1, rel=1e-9)
    # one subject: nothing to segregate; no subject: 0
    _, t1 = a_star_loss(agg, [2], smooth_attentions=False)
    assert float(t1["segregation"]) == 0.0
    assert float(a_star_loss(agg, [])[0]) == 0.0


def test_a_star_gradient_flows_through_current_maps_only():
    agg = _two_subject_agg().requires_grad_(True)
    prev = (_two_subject_agg() * 0.5).requires_grad_(True)
    loss, _ = a_star_loss(agg, [2, 3], previous=prev)
    g_cur, g_prev = torch.autograd.grad(loss, [agg, prev], allow_unused=True)
    assert g_cur.abs().sum() > 0
    assert g_prev is None or g_prev.abs().sum() == 0


def test_a_star_defaults_and_previous_step_per_sample():
    m = get_method("a-star", resolution=4)
    c = m.config
    assert (c.scale_factor, c.scale_range, c.max_iter_to_alter, c.threshold) == (20.0, (1.0, 0.5), 25, None)
    assert m.plan(0, 51).step_size == 20.0 and m.plan(0, 51).max_refinement == 0
    assert m.plan(24, 51).step_size == pytest.approx(20 * math.sqrt(0.76)) and m.plan(25, 51) is None
    g = torch.Generator().manual_seed(0)
    maps = lambda: {"l": torch.randn(2, 4, 4, 77, generator=g, dtype=torch.float64).softmax(-1)}  # noqa: E731
    p = crown_parse()
    assert float(m.loss(maps(), p, 0).terms["retention"]) == 0.0
    assert float(m.loss(maps(), p, 0).terms["retention"]) == 0.0  # a second pass at step 0: still no previous
    assert float(m.loss(maps(), p, 1).terms["retention"]) > 0.0
    assert float(m.loss(maps(), p, 0).terms["retention"]) == 0.0  # the next sample starts over
    with pytest.raises(AttnlensError, match="both 0"):
        get_method("a-star", lambda_segregation=0, lambda_retention=0)
    with pytest.raises(AttnlensError, match="threshold"):
        get_method("a-star", threshold=1.5)


# ------------------------------------------------------------------------------------------ Predicated Diffusion
def test_min_max_and_constant_map_fix():
    x = torch.tensor([[0.0, 2.0], [1.0, 4.0]])
    assert torch.allclose(min_max(x), torch.tensor([[0.0, 0.5], [0.25, 1.0]]))
    c = torch.full((2, 2), 0.3, requires_grad=True)
    out = min_max(c)
    assert torch.equal(out, torch.zeros(2, 2))  # the released code gives 0/0 = NaN here
    out.sum().backward()
    assert torch.isfinite(c.grad).all()


def _predicated_agg() -> torch.Tensor:
    """1×3 aggregate: raw maps token 2 = [.1, .2, .3] (min-max [0, ½, 1]), token 3 = [.1, .3, .5] ([0, ½, 1]),
    token 4 = [.3, .2, .1] ([1, ½, 0])."""
    agg = torch.zeros(1, 3, 77, dtype=torch.float64)
    agg[0, :, 2] = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    agg[0, :, 3] = torch.tensor([0.1, 0.3, 0.5], dtype=torch.float64)
    agg[0, :, 4] = torch.tensor([0.3, 0.2, 0.1], dtype=torch.float64)
    return agg


def test_predicated_loss_by_hand():
    agg = _predicated_agg()
    q = math.log(4 / 3)  # −log(1 − ½·½)
    corr = 2 * q / 3  # M̂ = N̂ = [0, ½, 1]: only the middle pixel, both directions
    leak = q / 3  # M̂·N̂' = [0, ¼, 0]
    poss = q / 3  # P̂(1 − Ĥ) = [0, ¼, 0]
    a = torch.softmax(agg[..., 1:-1] * 100, dim=-1)[0, :, 2].tolist()  # token 3 after the re-softmax
    logs = sum(math.log(1 - v + 1e-4) for v in a)
    exist = -math.log(1 - math.exp(logs / 3))  # the released geometric mean over the N = 3 pixels
    loss, terms = predicated_loss(agg, exist=[3], corr=[(2, 3)], leak=[(2, 4)], possession=[(3, 2)])
    assert float(terms["correspondence"]) == pytest.approx(corr, rel=1e-9)
    assert float(terms["leak"]) == pytest.approx(0.3 * leak, rel=1e-9)
    assert float(terms["possession"]) == pytest.approx(poss, rel=1e-9)
    assert float(terms["exist"]) == pytest.approx(0.1 * exist, rel=1e-9)
    assert float(loss) == pytest.approx(0.1 * exist + corr + 0.3 * leak + poss, rel=1e-9)
    # the paper's product over pixels instead of the released mean of logs
    _, tp = predicated_loss(agg, exist=[3], exist_product=True)
    assert float(tp["exist"]) == pytest.approx(0.1 * -math.log(1 - math.exp(logs)), rel=1e-9)
    # each kind is the mean over its pairs: a second, identical leak pair leaves it unchanged
    _, t2 = predicated_loss(agg, leak=[(2, 4), (3, 4)])
    assert float(t2["leak"]) == pytest.approx(0.3 * leak, rel=1e-9)
    assert float(predicated_loss(agg)[0]) == 0.0


def test_predicated_released_eps_quirk_and_constant_map():
    # the released ε = 1e-20 is below float32 resolution next to 1, so a pixel where the modifier is fully on and the
    # noun fully off costs −log(1e-20) ≈ 46 (finite, as released), not +inf
    agg = torch.zeros(1, 2, 77)
    agg[0, :, 2] = torch.tensor([0.0, 1.0])
    agg[0, :, 3] = torch.tensor([1.0, 0.0])
    _, t = predicated_loss(agg, corr=[(2, 3)])
    assert float(t["correspondence"]) == pytest.approx(-math.log(1e-20), rel=1e-5)
    # a constant (e.g. all-zero) modifier map: the released normalisation gives NaN; here a finite loss and gradient
    agg = torch.zeros(1, 2, 77, requires_grad=True)
    loss, _ = predicated_loss(agg, corr=[(2, 3)], leak=[(2, 4)])
    (g,) = torch.autograd.grad(loss, [agg])
    assert math.isfinite(float(loss.detach())) and torch.isfinite(g).all()


def test_predicated_propositions_defaults_and_schedule():
    m = get_method("predicated")
    props = m.propositions(crown_parse())
    # the README's "a brown dog and a yellow bowl": corr [[2,3],[6,7]], exist [3,7], leak [[2,7],[6,3]]
    assert props == {"exist": [3, 7], "corr": [(2, 3), (6, 7)], "leak": [(2, 7), (6, 3)], "possession": []}
    pm = get_method("predicated", possession=[["crown", 7]])
    assert pm.propositions(crown_parse())["possession"] == [(3, 7)]
    with pytest.raises(AttnlensError):
        get_method("predicated", possession=[["crown"]])
    with pytest.raises(AttnlensError, match="not in the prompt"):
        get_method("predicated", possession=[["hat", "crown"]]).propositions(crown_parse())
    c = m.config
    assert (c.weight_exist, c.weight_corr, c.weight_leak, c.weight_possession) == (0.1, 1.0, 0.3, 1.0)
    # thresholds {0: 0} released: at i = 0 one update, then 5 fixed refinement passes (6 updates in all)
    assert m.plan(0, 51).max_refinement == 5 and m.refine(0, None)
    assert m.plan(1, 51).max_refinement == 0 and not m.refine(1, None)
    assert m.plan(24, 51) is not None and m.plan(25, 51) is None
    assert Predicated.idle_reason(m, Parse("a", ("<|startoftext|>", "a</w>", "<|endoftext|>"), (), (), "manual"))


def test_binding_bench_lists_and_sweeps_the_new_methods():
    from attnlens.testbed.bench import bench_variants

    labels = [v.label for v in bench_variants(["none", "a-star", "predicated"], sweep=(0.25,))]
    assert labels == ["none", "a-star", "predicated", "a-star scale_factor=5", "predicated scale_factor=5"]
