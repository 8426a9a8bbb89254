"""attnlens.metrics on small synthetic maps whose answers are computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from attnlens import metrics as M

LN2 = math.log(2.0)


def blob(
    h: int = 8, w: int = 8, rows: slice = slice(None), cols: slice = slice(None), value: float = 1.0
) -> np.ndarray:
    a = np.zeros((h, w))
    a[rows, cols] = value
    return a


def checkerboard(n: int = 4) -> np.ndarray:
    i, j = np.indices((n, n))
    return ((i + j) % 2).astype(float)


# ----------------------------------------------------------------------------------------------- overlap
@pytest.mark.parametrize("metric,expected", [
    ("sym_kl", 0.0), ("jsd", 0.0), ("cosine", 1.0), ("intersection", 1.0), ("soft_iou", 1.0), ("otsu_iou", 1.0),
])
def test_identical_maps(metric: str, expected: float) -> None:
    rng = np.random.default_rng(0)
    p = rng.random((8, 8)) ** 4
    assert M.overlap(p, p, metric) == pytest.approx(expected, abs=1e-12)
    assert M.overlap(p, 3.0 * p, metric) == pytest.approx(expected, abs=1e-12)  # scale does not matter


def test_disjoint_maps() -> None:
    p, q = blob(rows=slice(0, 4)), blob(rows=slice(4, 8))
    assert M.otsu_iou(p, q) == 0.0
    assert M.histogram_intersection(p, q) == 0.0
    assert M.soft_iou(p, q) == 0.0
    assert M.cosine_similarity(p, q) == 0.0
    assert M.jensen_shannon(p, q) == pytest.approx(LN2, abs=1e-12)
    assert M.symmetric_kl(p, q, eps=0.0) == np.inf
    assert 10.0 < M.symmetric_kl(p, q) < np.inf  # eps keeps it finite


def test_partial_overlap_by_hand() -> None:
    # p uniform on columns 0..3, q uniform on columns 2..5 (8x8): each has 32 pixels, 16 shared.
    p, q = blob(cols=slice(0, 4)), blob(cols=slice(2, 6))
    assert M.histogram_intersection(p, q) == pytest.approx(0.5)
    assert M.soft_iou(p, q) == pytest.approx(16 / 48)  # Σmin = 16/32, Σmax = 48/32
    assert M.cosine_similarity(p, q) == pytest.approx(0.5)
    assert M.otsu_iou(p, q) == pytest.approx(16 / 48)
    assert M.jensen_shannon(p, q) == pytest.approx(0.5 * LN2)  # half the mass disjoint: ½·[½ln2 + ½ln2]


def test_sym_kl_by_hand() -> None:
    # two-pixel distributions p = (3/4, 1/4), q = (1/4, 3/4): KL(p||q) = KL(q||p) = ½ ln 3
    p = np.array([[3.0, 1.0]])
    q = np.array([[1.0, 3.0]])
    assert M.symmetric_kl(p, q, eps=0.0) == pytest.approx(0.5 * math.log(3.0))


def test_overlap_dispatch_and_errors() -> None:
    p, q = blob(cols=slice(0, 4)), blob(cols=slice(2, 6))
    assert M.overlap(p, q, "jsd") == M.jensen_shannon(p, q)
    assert M.overlap(p, q, "sym_kl", eps=0.0) == M.symmetric_kl(p, q, eps=0.0)
    with pytest.raises(ValueError, match="unknown overlap metric"):
        M.overlap(p, q, "emd")
    with pytest.raises(ValueError, match="resolution"):
        M.cosine_similarity(np.ones((8, 8)), np.ones((4, 4)))


def test_zero_map_is_nan() -> None:
    z, p = np.zeros((4, 4)), blob(4, 4, rows=slice(0, 2))
    for metric in ["sym_kl", "jsd", "cosine", "intersection", "soft_iou"]:
        assert np.isnan(M.overlap(z, p, metric))
    assert M.otsu_iou(z, p) == 0.0  # zero map: empty mask, the other is not
    assert np.isnan(M.otsu_iou(z, z))  # both empty: undefined
    assert np.isnan(M.spatial_entropy(z))


# ----------------------------------------------------------------------------------------------- entropy
def test_entropy_uniform_and_one_hot() -> None:
    u, one = np.ones((4, 4)), blob(4, 4, rows=slice(1, 2), cols=slice(2, 3))
    assert M.spatial_entropy(u) == pytest.approx(math.log(16))
    assert M.spatial_entropy(u, normalized=True) == pytest.approx(1.0)
    assert M.spatial_entropy(one) == 0.0
    assert M.spatial_entropy(one, normalized=True) == 0.0
    assert M.spatial_entropy(blob(4, 4, rows=slice(0, 2)), normalized=True) == pytest.approx(math.log(8) / math.log(16))


def test_token_allocation_entropy() -> None:
    # recorded tokens: <sot>, 3 prompt pieces, <eot>; <sot> takes half of every pixel
    maps = np.zeros((5, 2, 2))
    maps[0] = 0.5
    maps[1:4] = 0.5 / 3  # prompt tokens share the rest equally
    ent = M.token_allocation_entropy(maps)
    np.testing.assert_allclose(ent.map, np.full((2, 2), math.log(3)))
    assert M.token_allocation_entropy(maps, normalized=True).mean == pytest.approx(1.0)
    one = np.zeros((5, 2, 2))
    one[0], one[2] = 0.3, 0.7  # a single prompt token takes each pixel
    assert M.token_allocation_entropy(one).mean == 0.0


# ----------------------------------------------------------------------------------------------- total variation
def test_tv_checkerboard_by_hand() -> None:
    c = checkerboard(4)  # 8 ones, 8 zeros
    # paper: 12 vertical + 12 horizontal neighbour pairs, each differs by 1
    assert M.tv_paper(c, spatial=False) == 24.0
    assert M.tv_paper(c) == pytest.approx(24 / 8)
    # released: horizontal mean 1; rows 1..3 vs last row (= row 1 pattern): row 2 differs everywhere → 4/12
    assert M.tv_released(c, spatial=False) == pytest.approx(1 + 1 / 3)
    assert M.tv_released(c) == pytest.approx((1 + 1 / 3) / 8)


def test_tv_paper_and_released_differ_by_hand() -> None:
    ramp = np.repeat(np.arange(3.0)[:, None], 3, axis=1)  # A[i, j] = i
    assert M.tv_paper(ramp, spatial=False) == 6.0  # 2 row steps × 3 columns
    assert M.tv_released(ramp, spatial=False) == pytest.approx(0.5)  # |2−1|, |2−2| per column over rows 1, 2
    assert M.tv_paper(ramp.T, spatial=False) == 6.0
    assert M.tv_released(ramp.T, spatial=False) == pytest.approx(1.0)  # horizontal steps of 1, rows identical


def test_tv_constant_is_zero() -> None:
    for fn in (M.tv_paper, M.tv_released):
        assert fn(np.full((5, 7), 0.2)) == 0.0
        assert fn(np.full((5, 7), 0.2), spatial=False) == 0.0


# ----------------------------------------------------------------------------------------------- Otsu
def test_otsu_thresholds_equal_skimage_bit_for_bit() -> None:
    """The one Otsu of attnlens against its reference, ``skimage.filters.threshold_otsu``, map by map."""
    from skimage.filters import threshold_otsu

    rng = np.random.default_rng(0)
    maps = rng.random((80, 16, 16)) ** 3
    maps[::7] = np.round(maps[::7] * 64) / 64  # ties and values exactly on bin edges
    maps[1::9] = np.round(maps[1::9] * 255) / 255
    maps[3] = 0.25  # constant: no split
    maps[5, 0, 0] = np.nan  # non-finite
    maps[6, 2, 2] = np.inf
    maps[8] = np.where(maps[8] > 0.5, 1.0, 0.0)  # two values
    for m in (maps.astype(np.float16).astype(np.float64), maps, maps.astype(np.float32)):
        got = M.otsu_thresholds(m)
        assert got.dtype == torch.float64 and got.shape == (80,)
        for row, g in zip(m.astype(np.float64), got.tolist()):
            if not np.isfinite(row).all() or row.max() == row.min():
                assert g == math.inf
            else:
                assert g == threshold_otsu(row)
    # pixels on np.histogram's own bin edges (where its ±1 index corrections decide the bin) over odd ranges
    edges = []
    for _ in range(60):
        lo, hi = np.sort(rng.random(2) * rng.choice([1e-3, 1.0, 7.3]))
        row = np.linspace(lo, hi, 257)[rng.integers(0, 257, 256)]
        row[:2] = lo, hi
        edges.append(row.reshape(16, 16))
    for row, g in zip(edges, M.otsu_thresholds(np.stack(edges)).tolist()):
        assert g == threshold_otsu(row)
    assert M.otsu_thresholds(maps.reshape(8, 10, 16, 16)).shape == (8, 10)
    assert M.otsu_thresholds(np.zeros((0, 4, 4))).shape == (0,)
    # entity regions are p > threshold of each map's spatial distribution, as a skimage loop would mark them
    p = maps[10:20] / maps[10:20].sum(axis=(-2, -1), keepdims=True)
    expected = np.stack([row > threshold_otsu(row) for row in p])
    np.testing.assert_array_equal(M.entity_regions(maps[10:20]), expected)
    np.testing.assert_array_equal(M.entity_regions(torch.from_numpy(maps[10:20])).numpy(), expected)


# ----------------------------------------------------------------------------------------------- leakage
def _two_entities() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    noun_a = blob(rows=slice(0, 4), cols=slice(0, 4), value=0.6) + 0.01  # top-left
    noun_b = blob(rows=slice(4, 8), cols=slice(4, 8), value=0.6) + 0.01  # bottom-right
    regions = M.entity_regions(np.stack([noun_a, noun_b]))
    return noun_a, noun_b, regions


def test_entity_regions_rules() -> None:
    noun_a, _, regions = _two_entities()
    assert regions.dtype == bool and regions.shape == (2, 8, 8)
    np.testing.assert_array_equal(regions[0], blob(rows=slice(0, 4), cols=slice(0, 4)).astype(bool))
    np.testing.assert_array_equal(M.entity_regions(noun_a, rule="mean"), regions[0])
    np.testing.assert_array_equal(M.entity_regions(noun_a, rule="quantile", q=0.5), regions[0])
    assert M.entity_regions(noun_a, rule="quantile", q=0.9).sum() == 0  # q-quantile is the blob value, > is strict
    assert not M.entity_regions(np.full((8, 8), 0.3)).any()  # constant map: empty region
    assert not M.entity_regions(np.zeros((8, 8))).any()
    with pytest.raises(ValueError):
        M.entity_regions(noun_a, rule="kmeans")


def test_modifier_on_other_noun_leaks_in() -> None:
    _, noun_b, regions = _two_entities()
    mod = blob(rows=slice(5, 7), cols=slice(5, 7))  # entirely on noun b's region
    assert M.leak_in_prompt(mod, regions[0], regions[1:]) == pytest.approx(1.0)
    assert M.leak_out_of_prompt(mod, regions) == pytest.approx(0.0)
    assert M.leak_in_prompt(mod, regions[1], regions[0]) == 0.0  # seen as b's modifier: no leak
    half = mod + blob(rows=slice(1, 3), cols=slice(1, 3))  # half on a, half on b
    assert M.leak_in_prompt(half, regions[0], [regions[1]]) == pytest.approx(0.5)


def test_own_region_excluded_from_leak_in() -> None:
    own = blob(4, 4, cols=slice(0, 2)).astype(bool)
    other = blob(4, 4, cols=slice(1, 4)).astype(bool)  # column 1 belongs to both
    mod = blob(4, 4, cols=slice(1, 3))  # half on column 1 (shared), half on column 2 (other only)
    assert M.leak_in_prompt(mod, own, other) == pytest.approx(0.5)
    assert M.leak_in_prompt(mod, None, other) == pytest.approx(1.0)


def test_modifier_off_all_regions_leaks_out() -> None:
    _, _, regions = _two_entities()
    mod = blob(rows=slice(0, 4), cols=slice(4, 8))  # top-right: no entity there
    assert M.leak_out_of_prompt(mod, regions) == pytest.approx(1.0)
    assert M.leak_in_prompt(mod, regions[0], regions[1:]) == 0.0


def test_neglect_on_raw() -> None:
    a = blob(4, 4, rows=slice(0, 1), cols=slice(0, 2), value=0.25)
    a[3, 3] = 0.5
    n = M.neglect(a)
    assert n.peak == 0.5 and n.mass == pytest.approx(1.0) and n.mean == pytest.approx(1 / 16)


# ----------------------------------------------------------------------------------------------- normalisations
def test_normalize_modes() -> None:
    rng = np.random.default_rng(1)
    maps = rng.random((2, 6, 4, 4))  # (head, token, y, x): <sot>, 4 pieces, <eot>
    np.testing.assert_array_equal(M.normalize(maps, "raw"), maps)
    sp = M.normalize(maps, "spatial")
    np.testing.assert_allclose(sp.sum(axis=(-2, -1)), 1.0)
    pr = M.normalize(maps, "prompt")
    np.testing.assert_allclose(pr.sum(axis=-3), 1.0)
    assert pr.shape == maps.shape and (pr[:, [0, 5]] == 0).all()
    np.testing.assert_allclose(pr[:, 1:5], maps[:, 1:5] / maps[:, 1:5].sum(axis=-3, keepdims=True))
    np.testing.assert_allclose(M.normalize(maps, "prompt", prompt_slice=4), pr)  # int T = slice(1, T+1)
    with pytest.raises(ValueError):
        M.normalize(maps, "softmax")


# ----------------------------------------------------------------------------------------------- batching / types
def test_broadcasting_gives_pairwise_matrix() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.random((3, 8, 8)) ** 3, rng.random((4, 8, 8)) ** 3
    for metric in M.OVERLAP_METRICS:
        mat = M.overlap(a[:, None], b[None], metric)
        assert mat.shape == (3, 4)
        assert mat[2, 1] == pytest.approx(M.overlap(a[2], b[1], metric))
    assert M.spatial_entropy(rng.random((2, 3, 5, 8, 8))).shape == (2, 3, 5)
    assert M.tv_released(rng.random((2, 3, 8, 8))).shape == (2, 3)
    assert M.entity_regions(rng.random((2, 3, 8, 8))).shape == (2, 3, 8, 8)
    assert M.token_allocation_entropy(rng.random((2, 6, 8, 8))).mean.shape == (2,)
    mods = rng.random((5, 8, 8))  # five modifier maps against the same regions
    _, _, regions = _two_entities()
    assert M.leak_out_of_prompt(mods, regions).shape == (5,)
    assert M.leak_in_prompt(mods, regions[0], regions[1:]).shape == (5,)


def test_numpy_and_torch_inputs() -> None:
    rng = np.random.default_rng(3)
    p, q = rng.random((2, 8, 8)), rng.random((2, 8, 8))
    for metric in M.OVERLAP_METRICS:
        out_np = M.overlap(p, q, metric)
        out_t = M.overlap(torch.from_numpy(p), torch.from_numpy(q), metric)
        assert isinstance(out_np, np.ndarray) and isinstance(out_t, torch.Tensor)
        np.testing.assert_allclose(out_t.numpy(), out_np)
    assert isinstance(M.jensen_shannon(p[0], q[0]), np.floating)  # 0-d numpy result is a numpy scalar
    assert isinstance(M.jensen_shannon(p, torch.from_numpy(q)), torch.Tensor)  # any tensor → tensor
    t32 = torch.from_numpy(p).float()
    assert M.spatial_entropy(t32).dtype == torch.float32
    assert M.entity_regions(t32).dtype == torch.bool
    n = M.neglect(torch.from_numpy(p))
    assert isinstance(n.peak, torch.Tensor) and n.peak.shape == (2,)


def test_torch_gradients_flow() -> None:
    p = torch.rand(8, 8, dtype=torch.float64, requires_grad=True)
    q = torch.rand(8, 8, dtype=torch.float64)
    M.symmetric_kl(p, q).backward()
    assert p.grad is not None and torch.isfinite(p.grad).all()


# ----------------------------------------------------------------------------------------------- resampling
@pytest.mark.parametrize("mode", ["bilinear", "area", "nearest"])
@pytest.mark.parametrize("size", [32, 8, (16, 32)])
def test_resampling_keeps_mass(mode: str, size) -> None:
    rng = np.random.default_rng(4)
    raw = rng.random((3, 16, 16))
    out = M.resample_maps(raw, size, mode=mode)
    hw = (size, size) if isinstance(size, int) else size
    assert out.shape == (3, *hw)
    np.testing.assert_allclose(out.sum(axis=(-2, -1)), raw.sum(axis=(-2, -1)), rtol=1e-6)
    dist = M.resample_maps(M.normalize(raw, "spatial"), size, mode=mode)
    np.testing.assert_allclose(dist.sum(axis=(-2, -1)), 1.0, rtol=1e-6)
    assert (M.resample_maps(np.zeros((16, 16)), size, mode=mode) == 0).all()


def test_match_resolution() -> None:
    p16, p32 = np.ones((16, 16)), np.ones((2, 32, 32))
    a, b = M.match_resolution(p16, p32)
    assert a.shape == (32, 32) and b.shape == (2, 32, 32)
    assert a.sum() == pytest.approx(256.0)
    assert M.histogram_intersection(a, b) == pytest.approx(np.ones(2))


# ----------------------------------------------------------------------------------------------- trajectory
def test_latent_drift() -> None:
    b = np.zeros((3, 4, 2, 2))
    b[:, 0, 0, 0] = 2.0  # ‖b[s]‖ = 2
    a = b.copy()
    a[1, 1, 0, 0] = 3.0
    a[2, 2, 1, 1] = 4.0
    a[2, 3, 1, 1] = 3.0
    d = M.latent_drift(a, b)
    np.testing.assert_allclose(d.l2, [0.0, 3.0, 5.0])
    np.testing.assert_allclose(d.relative, [0.0, 1.5, 2.5])
    with pytest.raises(ValueError):
        M.latent_drift(a, b[:2])


# ----------------------------------------------------------------------------------------------- registry
def test_metric_info() -> None:
    assert set(M.OVERLAP_METRICS) <= set(M.METRIC_INFO)
    for name, info in M.METRIC_INFO.items():
        assert set(info) == {"normalization", "range", "higher_is", "description"}, name
        assert info["normalization"] in {*M.NORMALIZATIONS, "n/a"}, name
        assert info["higher_is"] in {"better binding", "worse", "n/a"}, name
