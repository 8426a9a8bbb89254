"""The pure attention edits (attnlens.interventions.ops) on small random distributions."""

from __future__ import annotations

import pytest
import torch

from attnlens.interventions import ops


@pytest.fixture
def p():
    g = torch.Generator().manual_seed(0)
    return torch.softmax(torch.randn(2, 3, 16, 9, generator=g), dim=-1)  # (sample, head, Q, K)


def _rows_are_distributions(x):
    assert (x >= 0).all()
    assert torch.allclose(x.sum(-1), torch.ones(x.shape[:-1]), atol=1e-6)


def test_ablate_zeroes_the_tokens_and_keeps_distributions(p):
    out = ops.ablate(p, [2, 5])
    _rows_are_distributions(out)
    assert (out[..., [2, 5]] == 0).all()
    rest = [0, 1, 3, 4, 6, 7, 8]
    assert torch.allclose(out[..., rest], p[..., rest] / p[..., rest].sum(-1, keepdim=True))


def test_scale_by_one_is_the_identity_and_by_k_reweights(p):
    assert ops.scale(p, [3], 1.0) is p
    out = ops.scale(p, [3], 4.0)
    _rows_are_distributions(out)
    ratio = (out[..., 3] / out[..., 0]) / (p[..., 3] / p[..., 0])
    assert torch.allclose(ratio, torch.full_like(ratio, 4.0), rtol=1e-5)
    with pytest.raises(ValueError):
        ops.scale(p, [3], -1.0)


def test_swap_exchanges_columns_and_twice_is_the_identity(p):
    out = ops.swap(p, [1, 2], [6, 7])
    assert torch.equal(out[..., 1], p[..., 6]) and torch.equal(out[..., 7], p[..., 2])
    assert torch.equal(ops.swap(out, [1, 2], [6, 7]), p)
    with pytest.raises(ValueError):
        ops.swap(p, [1], [2, 3])


def test_copy_sets_a_column_to_another_and_renormalises(p):
    out = ops.copy(p, [4], [2])
    _rows_are_distributions(out)
    assert torch.allclose(out[..., 2], out[..., 4])


def test_mask_restricts_a_token_to_a_region(p):
    region = torch.zeros(16)
    region[:4] = 1.0
    out = ops.mask(p, [3], region)
    _rows_are_distributions(out)
    assert (out[..., 4:, 3] == 0).all() and (out[..., :4, 3] > 0).all()
    assert torch.equal(out[..., :4, :], p[..., :4, :] / p[..., :4, :].sum(-1, keepdim=True))


def test_edits_are_differentiable(p):
    x = p.clone().requires_grad_(True)
    ops.ablate(ops.copy(x, [1], [2]), [5])[..., 3].sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
