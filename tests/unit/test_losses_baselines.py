"""The baseline methods' losses on small hand-built maps, with answers computed from the formulas."""

from __future__ import annotations

import math

import pytest
import torch

from attnlens.methods import get_method
from attnlens.methods.conform import Conform, conform_loss, nt_xent
from conftest import crown_parse


def test_nt_xent_by_hand():
    tau = 0.5
    e = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    # positives (0,1), (1,0): cos = 1; each anchor's only negative is e2 with cos 0
    want = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + math.exp(0.0)))
    assert float(nt_xent(e, [0, 0, 1], tau)) == pytest.approx(want, rel=1e-12)
    # an anchor with cos 0.6 to its positive and 0.8 to a negative
    e2 = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6]], dtype=torch.float64)
    # anchor 0: pos 0.6, neg 0.8; anchor 1: pos 0.6, neg cos(e1,e2)=0.96
    l0 = -math.log(math.exp(0.6 / tau) / (math.exp(0.6 / tau) + math.exp(0.8 / tau)))
    l1 = -math.log(math.exp(0.6 / tau) / (math.exp(0.6 / tau) + math.exp(0.96 / tau)))
    assert float(nt_xent(e2, [0, 0, 1], tau)) == pytest.approx((l0 + l1) / 2, rel=1e-12)
    # no negative pair, or no positive pair: 0 (pytorch_metric_learning's zero loss)
    assert float(nt_xent(e, [0, 0, 0], tau)) == 0.0
    assert float(nt_xent(e, [0, 1, 2], tau)) == 0.0


def test_conform_loss_groups_and_previous_views():
    # 2×2 maps; positions 1..4, smoothing off: the embeddings are the raw maps A[..., p]
    agg = torch.full((2, 2, 77), 0.01, dtype=torch.float64)
    agg[0, 0, 1] = agg[0, 0, 2] = 1.0  # tokens 1 and 2 peak at the same pixel (one group)
    agg[1, 1, 3] = 1.0  # token 3 elsewhere
    vec = lambda p: agg[..., p].reshape(-1)  # noqa: E731
    cos = lambda a, b: float(torch.dot(a, b) / (a.norm() * b.norm()))  # noqa: E731
    tau = 0.5
    s12, s13, s23 = cos(vec(1), vec(2)), cos(vec(1), vec(3)), cos(vec(2), vec(3))
    l1 = -math.log(math.exp(s12 / tau) / (math.exp(s12 / tau) + math.exp(s13 / tau)))
    l2 = -math.log(math.exp(s12 / tau) / (math.exp(s12 / tau) + math.exp(s23 / tau)))
    loss, terms = conform_loss(agg, [[1, 2], [3]], temperature=tau, smooth_attentions=False)
    assert float(loss) == pytest.approx((l1 + l2) / 2, rel=1e-9)
    assert float(terms["ntxent"]) == pytest.approx(float(loss))
    # with the previous step's maps as extra views, the singleton group gets a positive pair too
    with_prev, _ = conform_loss(agg, [[1, 2], [3]], previous=agg.clone(), temperature=tau, smooth_attentions=False)
    emb = torch.stack([vec(1), vec(1), vec(2), vec(2), vec(3), vec(3)])
    assert float(with_prev) == pytest.approx(float(nt_xent(emb, [0, 0, 0, 0, 1, 1], tau)), rel=1e-12)


def test_conform_defaults_groups_and_fixed_refinement():
    m = get_method("conform")
    c = m.config
    # the notebook's settings (README: "use the notebook")
    assert (c.max_iter_to_alter, c.temperature, c.softmax_normalize, c.refinement_steps) == (30, 0.5, False, 20)
    assert Conform.groups(crown_parse()) == [[2, 3], [6, 7]]
    assert m.plan(0, 51).max_refinement == 20 and m.plan(1, 51).max_refinement == 0
    assert m.plan(30, 51) is None
    assert m.refine(10, None) and not m.refine(11, None)  # a fixed number of passes, no threshold


def test_conform_keeps_previous_step_maps_and_resets_per_sample():
    m = get_method("conform", resolution=4)
    g = torch.Generator().manual_seed(0)
    maps = lambda: {"l": torch.randn(2, 4, 4, 77, generator=g, dtype=torch.float64).softmax(-1)}  # noqa: E731
    p = crown_parse()
    m.loss(maps(), p, 0)
    assert m._previous_step.previous is None
    m.loss(maps(), p, 0)  # refinement at step 0: still no previous step
    assert m._previous_step.previous is None
    last0 = m._previous_step.last[1]
    m.loss(maps(), p, 1)
    prev = m._previous_step.previous
    assert prev is not None and prev[0] == 0 and torch.equal(prev[1], last0)
    m.loss(maps(), p, 0)  # a new sample starts over
    assert m._previous_step.previous is None


def test_ebama_loss_by_hand():
    from attnlens.methods.ebama import Ebama, cos_distance, ebama_loss

    agg = torch.full((2, 2, 77), 0.01, dtype=torch.float64)
    agg[0, 0, 2] = 1.0  # modifier at pixel (0,0)
    agg[0, 0, 3] = 1.0
    agg[1, 1, 3] = 1.0  # noun at (0,0) and (1,1)
    vec = lambda p: agg[..., p].reshape(-1)  # noqa: E731
    d = lambda a, b: 1 - float(torch.dot(vec(a), vec(b)) / (vec(a).norm() * vec(b).norm()))  # noqa: E731
    assert float(cos_distance(agg[..., 2], agg[..., 3])) == pytest.approx(d(2, 3), rel=1e-12)
    # prompt positions 1..4; set ([2], 3): outside = {1, 4}
    pos = d(2, 3)
    neg = -(d(3, 1) + d(3, 4)) / 2
    a = torch.softmax(agg[..., 1:-1] * 100, dim=-1)[..., 2]  # the noun (position 3) after the re-softmax
    from attnlens.methods._shared import smooth
    excite = -float(smooth(a[None], 3, 0.5).max())
    loss, terms = ebama_loss(agg, [([(2,)], (3,))], 4, lambda_excite=0.5)
    assert float(terms["positive"]) == pytest.approx(pos, rel=1e-9)
    assert float(terms["negative"]) == pytest.approx(neg, rel=1e-9)
    assert float(loss) == pytest.approx(pos + neg + 0.5 * excite, rel=1e-9)
    # a set that covers the whole prompt: no outside tokens, the negative term is 0 (the released code crashes)
    _, t2 = ebama_loss(agg, [([(1,), (2,)], (3,))], 3)
    assert float(t2["negative"]) == 0.0
    # released schedule: guided at i ≤ 25 (26 steps), α = 20; nouns in no set become entity-only sets
    m = Ebama()
    assert m.plan(25, 51).step_size == 20.0 and m.plan(26, 51) is None
    assert Ebama.sets(crown_parse()) == [([(2,)], (3,)), ([(6,)], (7,))]
