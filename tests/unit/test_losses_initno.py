"""InitNO's loss terms and Structured Diffusion's value averaging on small hand-built tensors, with the answers
worked out by hand in the comments."""

from __future__ import annotations

import math

import pytest
import torch

from attnlens.methods.initno import (cross_attention_terms, initno_guidance_loss, initno_kl, initno_search_loss,
                                     otsu_threshold, peak_component, self_attention_conflict)
from attnlens.methods.structured import structured_attention, structured_values


def _levels(rows):
    """A map whose pixels quantise (⌊255·x⌋) to the given integer levels: x = (level + ½)/255."""
    return (torch.tensor(rows, dtype=torch.float32) + 0.5) / 255


def test_otsu_threshold_picks_the_level_maximising_between_class_variance():
    # 16 pixels: 4 at level 0, 8 at level 100, 4 at level 255.  μ = (800 + 1020)/16 = 113.75.
    # k = 0:   q1 = .25, μ1 = 0,      μ2 = 151.67 → σ² = .25·.75·151.67² = 4313
    # k = 100: q1 = .75, μ1 = 66.67,  μ2 = 255    → σ² = .75·.25·188.33² = 6650  (the maximum; k in 1..99 repeat k=0)
    x = torch.tensor([0.0] * 4 + [100.5 / 255] * 8 + [1.0] * 4).reshape(4, 4)
    assert otsu_threshold(x) == pytest.approx(100 / 255)
    # the released mask is x ≥ k/255: pixels *at* the threshold level are foreground (a quirk kept as released)
    assert ((x >= otsu_threshold(x)).sum()) == 12
    # one level only: every candidate leaves a class empty → 0
    assert otsu_threshold(torch.full((3, 3), 0.4)) == 0.0


def test_peak_component_is_the_four_connected_blob_of_the_peak():
    mask = torch.tensor([[1, 1, 0, 1],
                         [1, 0, 0, 1],
                         [0, 0, 1, 0]], dtype=torch.float32)
    got = peak_component(mask, 0, 0)
    assert got.tolist() == [[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]  # (2, 2) touches (1, 3) only diagonally
    assert peak_component(mask, 0, 2).sum() == 0  # the peak on background: nothing


def test_cross_term_is_the_worst_subjects_shortfall_and_only_it_gets_gradient():
    a = torch.zeros(2, 2)
    a[0, 1] = 0.6
    b = torch.zeros(2, 2)
    b[1, 0] = 0.3
    a.requires_grad_(True)
    b.requires_grad_(True)
    cross, clean, peaks = cross_attention_terms([a, b])
    assert float(cross.detach()) == pytest.approx(0.7)  # max(1 − 0.6, 1 − 0.3)
    assert peaks == [[(0, 1)], [(1, 0)]]
    ga, gb = torch.autograd.grad(cross, [a, b], allow_unused=True)
    assert (ga is None or ga.abs().sum() == 0) and gb[1, 0] == -1 and gb.abs().sum() == 1


def test_clean_term_is_the_highest_pixel_outside_the_peak_blob_when_it_beats_the_blob():
    # levels: (0,0)=201 (peak), (0,1)=(1,0)=60, (0,3)=200, four pixels at 10.  μ = 561/8 = 70.125
    # k = 10:  q1 = .5,   μ1 = 10,    μ2 = 130.25 → σ² = 3615
    # k = 60:  q1 = .75,  μ1 = 26.67, μ2 = 200.5  → σ² = 5666   (the maximum)
    # k = 200: q1 = .875, μ1 = 51.43, μ2 = 201    → σ² = 2447
    # mask x ≥ 60/255 = {(0,0), (0,1), (1,0), (0,3)}; the peak's blob drops (0,3) (cut off by (0,2) at level 10).
    # background max = x(0,3) = 200.5/255 > blob min = x(0,1) = 60.5/255 → the term is x(0,3).
    m = _levels([[201, 60, 10, 200], [60, 10, 10, 10]]).requires_grad_(True)
    assert otsu_threshold(m) == pytest.approx(60 / 255)
    cross, clean, _ = cross_attention_terms([m])
    assert float(clean.detach()) == pytest.approx(200.5 / 255)
    assert float(cross.detach()) == pytest.approx(1 - 201.5 / 255)
    (g,) = torch.autograd.grad(clean, [m])
    assert g[0, 3] == 1 and g.abs().sum() == 1
    # the outside blob lower than the peak blob's smallest pixel: no term
    low = _levels([[201, 150, 10, 120], [150, 10, 10, 10]])
    assert float(cross_attention_terms([low])[1]) == 0.0


def test_self_attention_conflict_is_the_mean_pairwise_overlap_of_the_peaks_rows():
    # 2×2 latent: the self-attention row of pixel (0,0) is [.5, .5, 0, 0], of (1,1) is [0, .5, .5, 0],
    # of (0,1) is [0, 0, 0, 1]
    self_agg = torch.zeros(2, 2, 4)
    self_agg[0, 0] = torch.tensor([0.5, 0.5, 0.0, 0.0])
    self_agg[1, 1] = torch.tensor([0.0, 0.5, 0.5, 0.0])
    self_agg[0, 1] = torch.tensor([0.0, 0.0, 0.0, 1.0])
    # one pair: Σ min = .5, Σ (a + b) = 2 → .25
    pair = self_attention_conflict(self_agg, [[(0, 0)], [(1, 1)]], smooth_attentions=False)
    assert float(pair) == pytest.approx(0.5 / (2 + 1e-6))
    # three subjects: pairs (.25, 0, 0) → mean 1/12
    three = self_attention_conflict(self_agg, [[(0, 0)], [(1, 1)], [(0, 1)]], smooth_attentions=False)
    assert float(three) == pytest.approx((0.5 / (2 + 1e-6)) / 3)
    assert float(self_attention_conflict(self_agg, [[(0, 0)]], smooth_attentions=False)) == 0.0


def test_search_loss_on_uniform_maps_zeroes_the_self_term_as_released():
    # uniform A: the token softmax gives 1/75 everywhere (smoothing keeps it) → L_cross = 1 − 1/75 > 0.5, so the
    # self term is zeroed; a constant map has one Otsu level → mask all ones → no clean term
    agg = torch.full((4, 4, 77), 1 / 77)
    self_agg = torch.full((4, 4, 16), 1 / 16)
    loss, terms = initno_search_loss(agg, self_agg, [2, 5])
    assert float(terms["cross"]) == pytest.approx(1 - 1 / 75, abs=1e-6)
    assert float(terms["self"]) == 0.0 and float(terms["clean"]) == 0.0
    assert float(loss) == pytest.approx(1 - 1 / 75, abs=1e-6)


def test_guidance_loss_alignment_uses_the_running_average_updated_before_use():
    g = torch.Generator().manual_seed(0)
    a1 = torch.rand(4, 4, 77, generator=g)
    a2 = torch.rand(4, 4, 77, generator=g)
    self_agg = torch.full((4, 4, 16), 1 / 16)
    # first call: the cache is the current maps → no alignment term
    _, t1, cache = initno_guidance_loss(a1, self_agg, [2, 5], None, smooth_attentions=False)
    assert float(t1["align"]) == 0.0
    # second: C = .9 Ã1 + .1 Ã2, so |Ã2 − C| = .9 |Ã2 − Ã1| (no smoothing); L_align sums the subjects' means
    _, t2, cache2 = initno_guidance_loss(a2, self_agg, [2, 5], cache, smooth_attentions=False)
    p1 = torch.softmax(100 * a1[..., 1:-1], -1)
    p2 = torch.softmax(100 * a2[..., 1:-1], -1)
    want = sum(0.9 * (p2[..., k - 1] - p1[..., k - 1]).abs().mean() for k in (2, 5))
    assert float(t2["align"]) == pytest.approx(float(want), rel=1e-5)
    assert torch.allclose(cache2, 0.9 * p1 + 0.1 * p2)
    loss, t3, _ = initno_guidance_loss(a2, self_agg, [2, 5], cache)
    assert float(loss) == pytest.approx(float(t3["cross"] + 0.1 * t3["clean"] + 0.1 * t3["align"] + t3["self"]))


def test_kl_term_by_hand():
    assert float(initno_kl(torch.zeros(3), torch.zeros(3))) == 0.0
    assert float(initno_kl(torch.zeros(1), torch.ones(1))) == pytest.approx(0.5)  # −½(1 + 0 − 1 − 1)
    lv = torch.tensor([math.log(2.0)])
    assert float(initno_kl(lv, torch.zeros(1))) == pytest.approx(0.5 * (1 - math.log(2.0)))  # −½(1 + ln 2 − 2)


def test_structured_values_put_each_phrase_encoding_at_its_positions():
    cond = torch.arange(10.0).reshape(5, 2)  # 5 positions, width 2
    phrase = -torch.arange(10.0).reshape(5, 2) - 1  # the phrase encoded alone: <sot> then its pieces
    v = structured_values(cond, [phrase], [(2, 3)])
    assert v.shape == (2, 5, 2)
    assert torch.equal(v[0], cond)
    assert torch.equal(v[1][[0, 1, 4]], cond[[0, 1, 4]])
    assert torch.equal(v[1][2:4], phrase[1:3])  # positions 2..3 ← the phrase's positions 1..2


def test_structured_attention_averages_the_outputs_over_values():
    probs = torch.tensor([[[0.25, 0.75]]])  # one query over two keys
    v1 = torch.tensor([[[1.0], [3.0]]])
    v2 = torch.tensor([[[5.0], [1.0]]])
    # P v1 = .25 + 2.25 = 2.5; P v2 = 1.25 + .75 = 2 → mean 2.25
    assert float(structured_attention(probs, [v1, v2])) == pytest.approx(2.25)
    assert float(structured_attention(probs, [v1])) == pytest.approx(2.5)
