"""Guidance-method losses on tiny hand-built maps with hand-computed answers (no model)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from attnlens import metrics as M
from attnlens.errors import AttnlensError
from attnlens.methods import LossOutput, get_method
from attnlens.methods._shared import (
    clamped_entropy,
    released_gaussian_kernel,
    released_jensen_shannon,
    released_symmetric_kl,
    resolve_subjects,
    smooth,
    step_size,
    token_distributions,
    token_softmax,
    unit_distance,
)
from attnlens.methods.attend_excite import AttendExcite, attend_excite_loss
from attnlens.methods.divide_bind import DivideBind, attribute_sizes, bind_jsd, divide_bind_loss, total_variation
from attnlens.methods.syngen import SynGen, syngen_loss
from attnlens.methods.syngen_entropy import SynGenEntropy, syngen_entropy_loss
from attnlens.parse import BindingSet, Parse, Unit

LN3 = math.log(3)
K = 0.125 * LN3  # symmetric KL between [.5, .5] and [.25, .75] (or [.75, .25]); [.25,.75] vs [.75,.25] is 4K
U, A, B = [0.5, 0.5], [0.25, 0.75], [0.75, 0.25]


def two_pixel_agg(columns: list[list[float]], total: int = 77) -> torch.Tensor:
    """A ``(1, 2, total)`` aggregate whose position p (1-based, p ≤ len(columns)) has the 2-pixel map columns[p-1]."""
    agg = torch.full((1, 2, total), 0.5, dtype=torch.float64)
    for p, col in enumerate(columns, start=1):
        agg[0, :, p] = torch.tensor(col, dtype=torch.float64)
    return agg


def bset(mods: list[tuple[str, tuple[int, ...]]], noun: tuple[str, tuple[int, ...]]) -> BindingSet:
    return BindingSet(tuple(Unit(w, p) for w, p in mods), Unit(*noun))


def surfboard_parse() -> Parse:
    """"a red cat and a checkered surfboard": multi-piece modifier (chec+kered) and noun (surf+board)."""
    pieces = ("<|startoftext|>", "a</w>", "red</w>", "cat</w>", "and</w>", "a</w>", "chec", "kered</w>", "surf",
              "board</w>", "<|endoftext|>")
    cat, board = Unit("cat", (3,)), Unit("surfboard", (8, 9))
    sets = (BindingSet((Unit("red", (2,)),), cat, "A"), BindingSet((Unit("checkered", (6, 7)),), board, "A"))
    return Parse("a red cat and a checkered surfboard", pieces, sets, (cat, board), "manual")


def live_maps(sizes: dict[str, int], heads: int = 2, seed: int = 0) -> tuple[dict[str, torch.Tensor], list]:
    """``{layer: (heads, s, s, 77)}`` softmax maps and the logits they depend on (leaf tensors with grad)."""
    g = torch.Generator().manual_seed(seed)
    maps, leaves = {}, []
    for name, s in sizes.items():
        logits = (torch.randn(heads, s, s, 77, generator=g) * 3).requires_grad_(True)
        leaves.append(logits)
        maps[name] = logits.softmax(-1)
    return maps, leaves


# --------------------------------------------------------------------------------------------------- distances


def test_released_symmetric_kl_two_pixels():
    p, q = torch.tensor([U], dtype=torch.float64), torch.tensor([A], dtype=torch.float64)
    # ½[KL(p‖q) + KL(q‖p)] = ½ Σ (p − q) ln(p/q) = ½ [.25 ln 2 − .25 ln(2/3)] = ln 3 / 8
    assert released_symmetric_kl(p, q).item() == pytest.approx(K, abs=1e-12)
    assert released_symmetric_kl(torch.tensor([A]), torch.tensor([B])).item() == pytest.approx(4 * K, abs=1e-6)
    assert released_symmetric_kl(p, p).item() == 0.0


def test_released_symmetric_kl_matches_torch_categorical():
    g = torch.Generator().manual_seed(1)
    p = torch.rand(5, 4, 4, generator=g)
    q = torch.rand(5, 4, 4, generator=g)
    p, q = p / p.sum((-2, -1), keepdim=True), q / q.sum((-2, -1), keepdim=True)
    cp = torch.distributions.Categorical(probs=p.reshape(5, -1))
    cq = torch.distributions.Categorical(probs=q.reshape(5, -1))
    ref = (torch.distributions.kl_divergence(cp, cq) + torch.distributions.kl_divergence(cq, cp)) / 2
    assert torch.allclose(released_symmetric_kl(p, q), ref, rtol=1e-6, atol=0)
    # a zero where the other map has mass: +inf, as Categorical
    assert released_symmetric_kl(torch.tensor([[1.0, 0.0]]), torch.tensor([U])).item() == math.inf


def test_released_jensen_shannon_four_pixels():
    p = torch.tensor([[0.5, 0.5], [0.0, 0.0]])
    assert released_jensen_shannon(p, torch.tensor([[0.0, 0.0], [0.5, 0.5]])).item() == pytest.approx(math.log(2))
    # m = [.5, .25, .25, 0]: KL(p‖m) = KL(q‖m) = ½ ln 2
    q = torch.tensor([[0.5, 0.0], [0.5, 0.0]])
    assert released_jensen_shannon(p, q).item() == pytest.approx(0.5 * math.log(2))
    assert released_jensen_shannon(p, p).item() == pytest.approx(0.0, abs=1e-7)


def test_released_twins_differ_from_the_metrics_only_where_documented():
    """The loss divergences and their ``attnlens.metrics`` counterparts: equal on strictly positive distributions,
    different where the released numerics differ (no renormalisation, no eps smoothing)."""
    g = torch.Generator().manual_seed(3)
    p = torch.rand(4, 5, 5, generator=g, dtype=torch.float64) + 0.1
    q = torch.rand(4, 5, 5, generator=g, dtype=torch.float64) + 0.1
    p, q = p / p.sum((-2, -1), keepdim=True), q / q.sum((-2, -1), keepdim=True)
    assert torch.allclose(released_symmetric_kl(p, q), M.symmetric_kl(p, q, eps=0.0), rtol=1e-12, atol=0)
    assert torch.allclose(released_jensen_shannon(p, q), M.jensen_shannon(p, q), rtol=1e-12, atol=0)
    assert torch.allclose(clamped_entropy(p), M.spatial_entropy(p), rtol=1e-12, atol=0)
    # Divide & Bind's JSD takes thresholded maps as they are; the metric renormalises them first
    # JSD(2p, p) as given: m = 1.5 p, ½ Σ 2p ln(2/1.5) + ½ Σ p ln(1/1.5) = ln(4/3) − ½ ln(3/2); renormalised: 0
    expected = math.log(4 / 3) - 0.5 * math.log(1.5)
    assert released_jensen_shannon(2 * p, p).tolist() == pytest.approx([expected] * 4, abs=1e-12)
    assert M.jensen_shannon(2 * p, p).tolist() == pytest.approx([0.0] * 4, abs=1e-12)
    # the metric's eps keeps disjoint supports finite; SynGen's released distance is infinite there
    one, other = torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[0.0, 1.0]]])
    assert released_symmetric_kl(one, other).item() == math.inf
    assert math.isfinite(M.symmetric_kl(one, other).item())


def test_unit_distance_is_max_over_pieces():
    maps = token_distributions(two_pixel_agg([U, U, A, U]))
    assert unit_distance(maps, (1, 3), (2,)).item() == pytest.approx(K)  # max(d(U,U)=0, d(A,U)=K)
    assert unit_distance(maps, (2,), (1, 4)).item() == pytest.approx(0.0)
    assert unit_distance(maps, (1, 3), (2, 4), "jensen_shannon").item() == pytest.approx(
        released_jensen_shannon(torch.tensor([A]), torch.tensor([U])).item())


# ------------------------------------------------------------------------------------------------------ SynGen


def test_syngen_identical_maps_zero_positive():
    agg = two_pixel_agg([U, A, A, B])
    _, terms = syngen_loss(agg, [bset([("red", (2,))], ("cat", (3,)))], 4)
    assert terms["positive"].item() == 0.0


def test_syngen_two_sets_by_hand():
    # "a(1) red(2) cat(3) and(4) blue(5) dog(6)", maps U A A U B U
    agg = two_pixel_agg([U, A, A, U, B, U])
    sets = [bset([("red", (2,))], ("cat", (3,))), bset([("blue", (5,))], ("dog", (6,)))]
    loss, terms = syngen_loss(agg, sets, 6)
    # S1: D(red,cat)=0; O={1,4,5,6}: mean D(red,o) = mean D(cat,o) = (K+K+4K+K)/4 → ½(−7K/4 − 7K/4) = −7K/4
    # S2: D(blue,dog)=K; O={1,2,3,4}: blue (K+4K+4K+K)/4 = 5K/2, dog (0+K+K+0)/4 = K/2 → ½(−5K/2 − K/2) = −3K/2
    assert terms["positive"].item() == pytest.approx(K)
    assert terms["negative"].item() == pytest.approx(-13 * K / 4)
    assert loss.item() == pytest.approx(-9 * K / 4)
    assert syngen_loss(agg, sets, 6, negative=False)[0].item() == pytest.approx(K)
    assert syngen_loss(agg, sets, 6, positive=False)[0].item() == pytest.approx(-13 * K / 4)


def test_syngen_star_and_entity_only_set():
    agg = two_pixel_agg([U, A, A, U, B, U])
    star = bset([("red", (2,)), ("blue", (5,))], ("cat", (3,)))  # two modifiers, noun "cat"
    entity = bset([], ("dog", (6,)))
    _, terms = syngen_loss(agg, [star, entity], 6)
    # star: D(red,cat)=0, D(blue,cat)=4K; O={1,4,6} all U: every mean is K → two modifiers: 2 · ½(−K − K) = −2K
    # entity-only: −mean_{o∈1..5} D(dog,o) = −(0+K+K+0+K)/5
    assert terms["positive"].item() == pytest.approx(4 * K)
    assert terms["negative"].item() == pytest.approx(-2 * K - 3 * K / 5)


def test_syngen_multi_piece_units_and_empty_outside():
    agg = two_pixel_agg([U, A, B])
    s = bset([("chec-kered", (1, 2))], ("cat", (3,)))
    loss, terms = syngen_loss(agg, [s], 3)  # O is empty → negative 0
    assert terms["negative"].item() == 0.0
    assert loss.item() == pytest.approx(4 * K)  # max(d(U,B)=K, d(A,B)=4K)
    assert syngen_loss(agg, [], 3)[0].item() == 0.0


# ------------------------------------------------------------------------------------------- SynGen + entropy


def test_clamped_entropy_values():
    assert clamped_entropy(torch.tensor([U])).item() == pytest.approx(math.log(2))
    assert clamped_entropy(torch.tensor([[1.0, 0.0]])).item() == 0.0


def test_syngen_entropy_reduces_to_syngen_and_term_signs():
    agg = two_pixel_agg([U, A, A, U, B, U])
    sets = [bset([("red", (2,))], ("cat", (3,))), bset([("blue", (5,))], ("dog", (6,))), bset([], ("a", (1,)))]
    base = syngen_loss(agg, sets, 6)[0]
    assert syngen_entropy_loss(agg, sets, 6, lambda_entropy=0, gamma_entropy=0)[0].item() == pytest.approx(
        base.item())
    h_u, h_a = math.log(2), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    _, terms = syngen_entropy_loss(agg, sets[:2], 6, lambda_entropy=1.0, gamma_entropy=0.0)
    assert terms["entropy_bound"].item() == pytest.approx((h_a + h_a) + (h_a + h_u))  # H(B) = H(A)
    # outside entropies, ½ per pair: S1 O={1,4,5,6}: U U B U; S2 O={1,2,3,4}: U A A U
    expected_out = 0.5 * (3 * h_u + h_a) / 4 + 0.5 * (2 * h_u + 2 * h_a) / 4
    assert terms["entropy_outside"].item() == pytest.approx(expected_out)
    # λ > 0 adds +λ·H(bound maps) (minimising sharpens them); γ > 0 adds +γ·H(outside maps): minimising *lowers*
    # the unrelated tokens' entropy, the report's ambiguity; γ < 0 rewards diffuse unrelated maps
    l0 = syngen_entropy_loss(agg, sets[:2], 6, lambda_entropy=0.0, gamma_entropy=0.0)[0].item()
    l_lam = syngen_entropy_loss(agg, sets[:2], 6, lambda_entropy=0.5, gamma_entropy=0.0)[0].item()
    l_gam = syngen_entropy_loss(agg, sets[:2], 6, lambda_entropy=0.0, gamma_entropy=0.5)[0].item()
    l_neg = syngen_entropy_loss(agg, sets[:2], 6, lambda_entropy=0.0, gamma_entropy=-0.5)[0].item()
    assert l_lam - l0 == pytest.approx(0.5 * terms["entropy_bound"].item())
    assert l_gam - l0 == pytest.approx(0.5 * expected_out) and l_gam > l0
    assert l_neg - l0 == pytest.approx(-0.5 * expected_out)


# --------------------------------------------------------------------------------------------- Attend-and-Excite


def test_released_gaussian_kernel_weights():
    k = released_gaussian_kernel()
    g = torch.tensor([math.exp(-1), 1.0, math.exp(-1)]) / (1 + 2 * math.exp(-1))
    assert g.tolist() == pytest.approx([0.2119, 0.5761, 0.2119], abs=1e-4)
    assert torch.allclose(k, torch.outer(g, g), atol=1e-7)
    assert k.sum().item() == pytest.approx(1.0)


def test_smooth_reflect_padding():
    assert torch.allclose(smooth(torch.full((2, 5, 5), 0.3)), torch.full((2, 5, 5), 0.3))
    delta = torch.zeros(5, 5)
    delta[2, 2] = 1.0
    assert torch.allclose(smooth(delta)[1:4, 1:4], released_gaussian_kernel())
    corner = torch.zeros(4, 4)
    corner[0, 0] = 1.0  # reflect padding mirrors without repeating the edge: weight at (0,0) is the centre's
    assert smooth(corner)[0, 0].item() == pytest.approx(0.5761 ** 2, abs=1e-3)


def test_attend_excite_loss_by_hand():
    agg = torch.zeros(4, 4, 77)
    agg[0, 0, 2] = 0.05  # subject 2 peaks at one pixel
    agg[..., 5] = 0.02  # subject 5 is flat
    # token re-softmax over positions 1..75 (×100): at (0,0) Ã_2 = e⁵/(e⁵ + e² + 73); elsewhere Ã_5 = e²/(e² + 74)
    a2 = math.exp(5) / (math.exp(5) + math.exp(2) + 73)
    a5 = math.exp(2) / (math.exp(2) + 74)
    loss, terms = attend_excite_loss(agg, [2, 5], smooth_attentions=False, names=["cat", "dog"])
    assert terms["max_attention/cat"].item() == pytest.approx(a2, rel=1e-5)
    assert terms["max_attention/dog"].item() == pytest.approx(a5, rel=1e-5)
    assert loss.item() == pytest.approx(max(0, 1 - a2, 1 - a5), rel=1e-5)
    full = torch.zeros(4, 4, 77)
    full[..., 3] = 1.0  # Ã_3 = e¹⁰⁰/(e¹⁰⁰ + 74) = 1 → max(0, 1 − 1) = 0
    assert attend_excite_loss(full, [3])[0].item() == pytest.approx(0.0, abs=1e-6)
    assert attend_excite_loss(full, [])[0].item() == 0.0


def test_token_softmax_slices():
    agg = torch.rand(2, 2, 77)
    assert token_softmax(agg).shape == (2, 2, 75)  # [1:76): <sot> and the last slot dropped
    sd21 = token_softmax(agg, prompt_length=6, sd21=True)
    assert sd21.shape == (2, 2, 6) and torch.allclose(sd21, torch.softmax(100 * agg[..., 1:7], -1))


def test_attend_excite_step_sizes_and_plan():
    assert step_size(0, 51) == 20.0
    assert step_size(24, 51) == pytest.approx(20 * math.sqrt(1 - 0.5 * 24 / 50))
    assert step_size(24, 51) == pytest.approx(17.4356, abs=1e-4)
    m = AttendExcite()
    assert m.plan(0, 51).step_size == 20.0 and m.plan(0, 51).max_refinement == 20
    assert m.plan(5, 51).max_refinement == 0 and m.plan(24, 51).step_size == pytest.approx(17.4356, abs=1e-4)
    assert m.plan(25, 51) is None


def test_attend_excite_refine_rule():
    m = AttendExcite()

    def out(loss: float) -> LossOutput:
        return LossOutput(loss=torch.tensor(loss), indicator=loss)

    assert m.refine(0, out(0.96)) and not m.refine(0, out(0.95))  # L > 1 − 0.05
    assert m.refine(10, out(0.6)) and not m.refine(10, out(0.4))  # L > 1 − 0.5
    assert m.refine(20, out(0.25)) and not m.refine(20, out(0.19))  # L > 1 − 0.8 (in floats 0.19999…)
    assert not m.refine(5, out(0.99))  # not a threshold step


def test_resolve_subjects():
    parse = surfboard_parse()
    assert resolve_subjects(parse) == [("cat", 3), ("surfboard", 8)]  # multi-piece noun → first piece
    assert resolve_subjects(parse, ["surfboard", 2]) == [("surfboard", 8), ("red", 2)]
    assert resolve_subjects(parse, ["a"]) == [("a@1", 1), ("a@5", 5)]
    with pytest.raises(AttnlensError):
        resolve_subjects(parse, ["dog"])
    with pytest.raises(AttnlensError):
        resolve_subjects(parse, [10])


# ------------------------------------------------------------------------------------------------ Divide & Bind


def test_total_variation_checkerboard():
    board = (torch.arange(4)[:, None] + torch.arange(4)[None, :]).remainder(2).float()
    # paper: 12 horizontal + 12 vertical unit differences
    assert total_variation(board, "paper").item() == 24.0
    # released: horizontal mean 1; vertical compares row 3 with rows 1..3: rows 1, 3 equal, row 2 differs → 4/12
    assert total_variation(board, "released").item() == pytest.approx(1 + 1 / 3)
    assert total_variation(torch.full((3, 4, 4), 0.7), "released").tolist() == [0.0] * 3
    with pytest.raises(ValueError):
        total_variation(board, "other")


def test_bind_jsd_by_hand():
    obj = torch.tensor([[math.log(4), 0.0], [0.0, 0.0]])
    attr = torch.tensor([[0.0, 0.0], [0.0, 2.0]])  # rescaled to the object's peak ln 4
    eps = 1e-5

    def jsd(p, q):
        m = [(a + b) / 2 for a, b in zip(p, q)]
        kl = lambda x: sum(a * math.log(a / c) for a, c in zip(x, m))  # noqa: E731
        return 0.5 * (kl(p) + kl(q))

    # softmax: p = [4,1,1,1]/7, q = [1,1,1,4]/7; TV ≥ 0.1 → τ = 0.2·4/7
    p = [x + eps for x in (3.2 / 7, 0.2 / 7, 0.2 / 7, 0.2 / 7)]
    assert bind_jsd(obj, attr, tv=0.5).item() == pytest.approx(jsd(p, p[::-1]), rel=1e-5)
    assert jsd(p, p[::-1]) == pytest.approx((3.2 * math.log(3.2 / 1.7) + 0.2 * math.log(0.2 / 1.7)) / 7, abs=1e-4)
    # TV < 0.1 → τ = 0.3·4/7 > 1/7: p' = [.4, 0, 0, 0] + ε, q' = [0, 0, 0, .4] + ε
    p = [0.4 + eps, eps, eps, eps]
    assert bind_jsd(obj, attr, tv=torch.tensor(0.05)).item() == pytest.approx(jsd(p, p[::-1]), rel=1e-5)


def test_divide_bind_loss_composition():
    g = torch.Generator().manual_seed(3)
    agg = torch.rand(8, 8, 77, generator=g).softmax(-1)
    attr_agg = torch.rand(8, 8, 77, generator=g).softmax(-1)
    loss, terms = divide_bind_loss(agg, [3, 7], [[2], []], attribute_agg=attr_agg, bind_weight=5.0,
                                   names=["cat", "dog"])
    tv_cat, tv_dog, jsd_cat = terms["tv/cat"], terms["tv/dog"], terms["jsd/cat"]
    assert loss.item() == pytest.approx(-min(tv_cat - 5.0 * jsd_cat, tv_dog).item(), rel=1e-6)
    assert terms["min_tv"].item() == pytest.approx(min(tv_cat, tv_dog).item())
    assert "jsd/dog" not in terms
    assert divide_bind_loss(agg, [])[0].item() == 0.0


def test_divide_bind_schedule_refine_and_weights():
    m = DivideBind()
    assert m.plan(0, 51).max_refinement == 50 and m.plan(10, 51).max_refinement == 20
    assert m.plan(20, 51).max_refinement == 20 and m.plan(1, 51).max_refinement == 0
    assert m.plan(24, 51).step_size == pytest.approx(17.4356, abs=1e-4) and m.plan(25, 51) is None
    assert [m.bind_weight(i) for i in (0, 9, 10, 19, 20, 40)] == [1.0, 1.0, 5.0, 5.0, 10.0, 10.0]

    def out(min_tv: float) -> LossOutput:
        return LossOutput(loss=torch.tensor(-min_tv), indicator=min_tv)

    assert m.refine(0, out(0.04)) and not m.refine(0, out(0.05))  # min TV < 0.05
    assert m.refine(10, out(0.19)) and not m.refine(10, out(0.21))
    assert m.refine(20, out(0.29)) and not m.refine(20, out(0.31))
    assert not m.refine(3, out(0.0))


def test_divide_bind_layers_and_attribute_maps():
    sd = {"down.64": (64, 64), "down.32": (32, 32), "down.16": (16, 16), "mid": (8, 8), "up.16": (16, 16),
          "up.32": (32, 32), "up.64": (64, 64)}
    assert attribute_sizes(sd.values(), 16) == [32, 64]
    assert attribute_sizes([(16, 16), (8, 8), (4, 4)], 16) == [16]  # attnlens-tiny: fallback
    m = DivideBind()
    assert m.layers(sd) == ["down.16", "up.16", "down.32", "up.32", "down.64", "up.64"]
    assert DivideBind(bind=False).layers(sd) == ["down.16", "up.16"]
    assert m.layers({"a": (16, 16), "b": (8, 8)}) == ["a"]
    with pytest.raises(ValueError):
        DivideBind(attribute_resolutions=[64]).layers({"a": (16, 16), "b": (32, 32)})
    # attribute aggregate: nearest subsampling (every s-th pixel), then a plain mean over layers and heads
    maps = {"o": torch.rand(2, 4, 4, 77), "x": torch.rand(2, 8, 8, 77), "y": torch.rand(2, 16, 16, 77)}
    got = DivideBind(resolution=4)._attribute_agg(maps, maps["o"].mean(0))
    ref = torch.cat([maps["x"][:, ::2, ::2], maps["y"][:, ::4, ::4]]).mean(0)
    assert torch.allclose(got, ref)


def test_divide_bind_bindings_from_parse():
    parse = surfboard_parse()
    assert DivideBind().bindings(parse) == [("cat", 3, (2,)), ("surfboard", 8, (6,))]
    assert DivideBind(bind=False).bindings(parse) == [("cat", 3, ()), ("surfboard", 8, ())]
    assert DivideBind(subjects=["cat"]).bindings(parse) == [("cat", 3, (2,))]


# ------------------------------------------------------------------------------------------ methods end to end


@pytest.mark.parametrize("name", ["syngen", "syngen-entropy", "attend-excite", "divide-bind"])
def test_gradients_flow(name):
    sizes = {"down.16": 16, "up.16": 16, "mid.8": 8}
    if name == "divide-bind":
        sizes.update({"down.32": 32, "up.64": 64})
    maps, leaves = live_maps(sizes)
    method = get_method(name)
    wanted = method.layers({n: (s, s) for n, s in sizes.items()})
    out = method.loss({n: maps[n] for n in wanted}, surfboard_parse(), 12)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    grads = [leaf.grad for leaf, n in zip(leaves, sizes) if n in wanted]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert all(not (isinstance(v, torch.Tensor) and v.requires_grad) for v in out.terms.values())
    if name in ("attend-excite", "divide-bind"):
        assert isinstance(out.indicator, float)
    if name == "divide-bind":  # the binding term reaches the attribute (32×32, 64×64) layers
        assert leaves[list(sizes).index("up.64")].grad.abs().sum() > 0


def test_method_loss_matches_pure_function():
    maps, _ = live_maps({"a": 16, "b": 16})
    agg = torch.cat(list(maps.values())).mean(0)
    parse = surfboard_parse()
    assert SynGen().loss(maps, parse, 0).loss.item() == pytest.approx(
        syngen_loss(agg, parse.sets, parse.prompt_length)[0].item(), rel=1e-6)
    assert AttendExcite().loss(maps, parse, 0).loss.item() == pytest.approx(
        attend_excite_loss(agg, [3, 8])[0].item(), rel=1e-6)


BAD = {
    "syngen": [{"distance": "kullback"}, {"pos_only": True, "neg_only": True}, {"step_size": -1.0}, {"step_size": True}, {"intervention_steps": 2.5},
               {"positive": False, "negative": False}, {"resolution": 0}, {"positive": "yes"}],
    "syngen-entropy": [{"lambda_entropy": math.inf}, {"gamma_entropy": "big"}, {"distance": "cosine"}],
    "attend-excite": [{"thresholds": {0: 1.5}}, {"thresholds": {"x": 0.5}}, {"kernel_size": 4},
                      {"scale_range": [1.0]}, {"subjects": [True]}, {"subjects": "cat"}, {"sigma": 0.0},
                      {"max_refinement_steps": -1}],
    "divide-bind": [{"tv": "anisotropic"}, {"attribute_resolutions": [24]}, {"quantile": 1.5}, {"eps": 0.0},
                    {"bind_weights": {0: -1.0}}, {"thresholds": [0.05]}],
}
GOOD = {
    "syngen": {"distance": "jensen_shannon", "negative": False, "step_size": 10},
    "syngen-entropy": {"lambda_entropy": 0.0, "gamma_entropy": -0.2, "distance": "dot_overlap"},
    "attend-excite": {"thresholds": {0: 0.1, 5: 0.3}, "subjects": ["cat", 3], "scale_range": [1.0, 0.4],
                      "sd21": True},
    "divide-bind": {"attribute_resolutions": [32], "tv": "paper", "bind_weights": {0: 2.0}, "subjects": [3]},
}
CLASSES = {"syngen": SynGen, "syngen-entropy": SynGenEntropy, "attend-excite": AttendExcite,
           "divide-bind": DivideBind}


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_config_validation_and_round_trip(name):
    cls = CLASSES[name]
    for bad in BAD[name]:
        with pytest.raises(ValueError):
            cls(**bad)
        with pytest.raises(AttnlensError):
            get_method(name, **bad)
    with pytest.raises(ValueError, match="valid options"):
        cls(no_such_option=1)
    for overrides in ({}, GOOD[name]):
        m = get_method(name, **overrides)
        assert type(m) is cls and m.name == name
        hp = json.loads(json.dumps(m.hyperparameters()))
        assert cls.Config(**hp) == m.config
        assert cls(**hp).hyperparameters() == hp
        assert dataclasses.asdict(m.config).keys() == hp.keys()


def test_registered_defaults():
    assert dataclasses.asdict(get_method("syngen").config) == {
        "step_size": 20.0, "intervention_steps": 25, "resolution": 16, "distance": "symmetric_kl",
        "positive": True, "negative": True, "pos_only": False, "neg_only": False}
    assert get_method("syngen", pos_only=True).config.negative is False
    assert get_method("syngen", neg_only=True).config.positive is False
    assert get_method("syngen", distance="jsd").config.distance == "jensen_shannon"
    ae = get_method("attend-excite").config
    assert (ae.scale_factor, ae.max_iter_to_alter, ae.thresholds, ae.max_refinement_steps) == (
        20.0, 25, {0: 0.05, 10: 0.5, 20: 0.8}, 20)
    db = get_method("divide-bind", tv="paper").config
    assert db.tv == "paper" and db.thresholds == {0: 0.05, 10: 0.2, 20: 0.3}
    assert get_method("syngen", positive=False).config.positive is False


# ---------------------------------------------------------------------------------------------- package layout

METHOD_MODULES = {"none", "syngen", "syngen_entropy", "attend_excite", "divide_bind"}


def _methods_imports() -> tuple[dict[str, set[str]], list[str]]:
    """``{module: modules of attnlens.methods it imports}`` and the imports found inside functions."""
    import ast
    from pathlib import Path

    import attnlens.methods

    graph, local = {}, []
    for path in sorted(Path(attnlens.methods.__file__).parent.glob("*.py")):
        name = "__init__" if path.stem == "__init__" else path.stem
        tree = ast.parse(path.read_text())
        deps: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= {node.module} if node.module else {a.name for a in node.names}
        graph[name] = deps
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                local += [f"{path.name}:{n.lineno}" for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))]
    return graph, local


def test_methods_package_layout_has_no_cross_method_import_and_no_cycle():
    graph, local = _methods_imports()
    assert METHOD_MODULES | {"_shared", "_config", "base", "registry"} <= set(graph)
    for mod in METHOD_MODULES:
        assert not graph[mod] & METHOD_MODULES, f"{mod} imports another method module: {graph[mod] & METHOD_MODULES}"
    assert local == [], f"function-local imports: {local}"

    def visit(mod: str, stack: tuple[str, ...]) -> None:
        assert mod not in stack, f"import cycle: {' -> '.join(stack + (mod,))}"
        for dep in graph.get(mod, ()):
            visit(dep, stack + (mod,))

    for mod in graph:
        if mod != "__init__":  # the package imports its modules; they never import the package itself
            visit(mod, ())
    assert all("__init__" not in deps for deps in graph.values())
