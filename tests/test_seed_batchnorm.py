"""The seed notebook's BatchNorm: its training forward matches torch, and its documented defects."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bn_repro.norms.seed_reference import SeedBatchNorm

EPS = 1e-5


def batch(shape, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen) * 3.0 + 2.0


def plain_normalise(x):
    dims = [0, *range(2, x.dim())]
    mean = x.mean(dims, keepdim=True)
    var = x.var(dims, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + EPS)


@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 2, 2)], ids=["2d", "4d"])
def test_training_forward_and_grads_match_torch(shape):
    seed_bn = SeedBatchNorm(3, num_dims=len(shape))
    ref = nn.BatchNorm1d(3) if len(shape) == 2 else nn.BatchNorm2d(3)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.normal_()
        seed_bn.gamma.copy_(ref.weight.view(seed_bn.gamma.shape))
        seed_bn.beta.copy_(ref.bias.view(seed_bn.beta.shape))
    x = batch(shape, 0)
    x_seed, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    upstream = batch(shape, 1)
    y_seed, y_ref = seed_bn(x_seed), ref(x_ref)
    torch.testing.assert_close(y_seed, y_ref)
    (g_seed,) = torch.autograd.grad(y_seed, x_seed, upstream)
    (g_ref,) = torch.autograd.grad(y_ref, x_ref, upstream)
    torch.testing.assert_close(g_seed, g_ref)


def test_eval_without_no_grad_still_uses_and_updates_batch_stats():
    layer = SeedBatchNorm(3, num_dims=2)
    layer.eval()
    x = batch((8, 3), 0)
    y = layer(x)
    torch.testing.assert_close(y, plain_normalise(x))
    assert not torch.equal(layer.moving_mean, torch.zeros(1, 3))


def test_no_grad_forward_in_training_uses_moving_stats():
    layer = SeedBatchNorm(3, num_dims=2)
    assert layer.training
    x = batch((8, 3), 0)
    with torch.no_grad():
        y = layer(x)
    # Fresh moving stats are mean 0, var 1, so the "normalised" output is x itself (up to eps).
    torch.testing.assert_close(y, x / torch.sqrt(torch.tensor(1.0 + EPS)))
    assert torch.equal(layer.moving_mean, torch.zeros(1, 3))


def test_moving_var_is_biased_and_momentum_weights_the_old_value():
    layer = SeedBatchNorm(3, num_dims=2)
    x = batch((8, 3), 0)
    layer(x)
    biased = x.var(0, unbiased=False)
    torch.testing.assert_close(layer.moving_var.view(-1), 0.9 * 1.0 + 0.1 * biased)
    torch.testing.assert_close(layer.moving_mean.view(-1), 0.1 * x.mean(0))
    assert not torch.allclose(layer.moving_var.view(-1), 0.9 + 0.1 * x.var(0, unbiased=True))


def test_moving_stats_are_not_in_state_dict():
    layer = SeedBatchNorm(3, num_dims=4)
    assert set(layer.state_dict()) == {"gamma", "beta"}
    assert list(layer.buffers()) == []


def test_3d_input_rejected_in_training():
    layer = SeedBatchNorm(3, num_dims=2)
    with pytest.raises(AssertionError):
        layer(batch((4, 3, 5), 0))
