"""norm=ghost_bn and norm=batch_renorm against norm=builtin and against direct computations."""

from __future__ import annotations

import pytest
import torch
from conftest import SMOKE, compose_config
from torch import nn

from bn_repro import norms
from bn_repro.config import ConfigError
from bn_repro.train import train

SHAPES = [(12, 5), (12, 5, 3, 2)]


def _pair(kind: str, shape, momentum=0.1, **options):
    ours = norms.build(kind, shape[1], len(shape), momentum=momentum, **options)
    builtin = norms.build("builtin", shape[1], len(shape), momentum=momentum)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ours.bias.normal_()
        builtin.weight.copy_(ours.weight)
        builtin.bias.copy_(ours.bias)
    return ours, builtin


def _step(layer, x, grad):
    x = x.detach().clone().requires_grad_()
    y = layer(x)
    return (y, *torch.autograd.grad(y, [x, layer.weight, layer.bias], grad))


def _batches(shape, n, offset=2.0):
    gen = torch.Generator().manual_seed(0)
    return [
        (torch.randn(shape, generator=gen) * 3 + offset * i, torch.randn(shape, generator=gen))
        for i in range(n)
    ]


def _assert_identical(ours, builtin, shape, steps=4):
    """Bit for bit: both layers run torch's own batch_norm kernel on the same values (one ghost batch
    is the whole batch; batch renorm with r = 1 and d = 0 passes gamma * 1 and gamma * 0 + beta, which
    are exactly gamma and beta), in the same process."""
    for x, grad in _batches(shape, steps):
        for a, b in zip(_step(ours, x, grad), _step(builtin, x, grad), strict=True):
            assert torch.equal(a, b)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(ours, name), getattr(builtin, name)), name
    ours.eval(), builtin.eval()
    x = _batches(shape, 1)[0][0]
    assert torch.equal(ours(x), builtin(x))


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("shape", SHAPES, ids=["2d", "4d"])
def test_ghost_bn_with_the_whole_batch_is_builtin_exactly(shape, momentum):
    _assert_identical(*_pair("ghost_bn", shape, momentum, virtual_batch_size=shape[0]), shape)


@pytest.mark.parametrize("shape", SHAPES, ids=["2d", "4d"])
def test_ghost_batches_have_their_own_statistics(shape):
    ghost = norms.build("ghost_bn", shape[1], len(shape), virtual_batch_size=4)
    x = torch.randn(shape) * 2 + 3
    y = ghost(x)
    dims = [0, *range(2, x.dim())]
    view = (1, -1, *([1] * (x.dim() - 2)))
    running_mean, running_var = torch.zeros(shape[1]), torch.ones(shape[1])
    for chunk, out in zip(x.split(4), y.split(4), strict=True):
        var, mean = torch.var_mean(chunk, dim=dims, unbiased=False)
        torch.testing.assert_close(out, (chunk - mean.view(view)) / torch.sqrt(var.view(view) + 1e-5))
        n = chunk.numel() // shape[1]
        running_mean = 0.9 * running_mean + 0.1 * mean
        running_var = 0.9 * running_var + 0.1 * var * n / (n - 1)
    torch.testing.assert_close(ghost.running_mean, running_mean)
    torch.testing.assert_close(ghost.running_var, running_var)
    assert int(ghost.num_batches_tracked) == shape[0] // 4  # one update per ghost batch, as torch's BN


def test_ghost_bn_refuses_a_batch_it_does_not_divide():
    ghost = norms.build("ghost_bn", 3, 2, virtual_batch_size=5)
    with pytest.raises(
        ValueError, match="a batch of 12 examples is not a multiple of norm.virtual_batch_size=5"
    ):
        ghost(torch.randn(12, 3))
    ghost.eval()
    assert ghost(torch.randn(12, 3)).shape == (12, 3)  # eval uses the running statistics: any batch


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("shape", SHAPES, ids=["2d", "4d"])
def test_batch_renorm_without_room_to_correct_is_builtin_exactly(shape, momentum):
    _assert_identical(*_pair("batch_renorm", shape, momentum, r_max=1.0, d_max=0.0), shape)


def _renorm_by_hand(layer, x, detach: bool):
    """Ioffe 2017, eq. for y with r and d from the layer's running statistics (before its update)."""
    dims = [0, *range(2, x.dim())]
    view = (1, -1, *([1] * (x.dim() - 2)))
    var_b, mu_b = torch.var_mean(x, dim=dims, unbiased=False)
    sigma_b, sigma = torch.sqrt(var_b + layer.eps), torch.sqrt(layer.running_var + layer.eps)
    r_max, d_max = layer.bounds(int(layer.num_batches_tracked) + 1)
    r = (sigma_b / sigma).clamp(1 / r_max, r_max)
    d = ((mu_b - layer.running_mean) / sigma).clamp(-d_max, d_max)
    if detach:
        r, d = r.detach(), d.detach()
    x_hat = (x - mu_b.view(view)) / sigma_b.view(view)
    return layer.weight.view(view) * (x_hat * r.view(view) + d.view(view)) + layer.bias.view(view)


def test_batch_renorm_corrects_by_r_and_d_and_stops_their_gradient():
    layer = norms.build("batch_renorm", 4, 2, r_max=3.0, d_max=5.0, start_steps=0, r_max_at=0, d_max_at=0)
    with torch.no_grad():
        layer.running_mean.fill_(1.0)
        layer.running_var.fill_(4.0)
        layer.weight.uniform_(0.5, 1.5)
    x = (torch.randn(16, 4) * 3 + 2).requires_grad_()
    grad = torch.randn(16, 4)
    expected = _renorm_by_hand(layer, x, detach=True)
    through_r_and_d = _renorm_by_hand(layer, x, detach=False)
    y = layer(x)
    torch.testing.assert_close(y, expected)
    (dx,) = torch.autograd.grad(y, x, grad)
    (dx_stopped,) = torch.autograd.grad(expected, x, grad)
    (dx_through,) = torch.autograd.grad(through_r_and_d, x, grad)
    torch.testing.assert_close(dx, dx_stopped)
    assert not torch.allclose(dx, dx_through, atol=1e-4)  # the stop-gradient changes the gradient


def test_batch_renorm_running_statistics_and_eval():
    layer = norms.build("batch_renorm", 3, 4, start_steps=0, r_max_at=2, d_max_at=2)
    mean, var = torch.zeros(3), torch.ones(3)
    for x, _ in _batches((8, 3, 2, 2), 5, offset=1.0):
        layer(x)
        v, m = torch.var_mean(x, dim=[0, 2, 3], unbiased=True)
        mean, var = 0.9 * mean + 0.1 * m, 0.9 * var + 0.1 * v
    torch.testing.assert_close(layer.running_mean, mean)
    torch.testing.assert_close(layer.running_var, var)
    layer.eval()
    x = torch.randn(8, 3, 2, 2)
    reference = nn.BatchNorm2d(3).eval()
    reference.load_state_dict(layer.state_dict())
    torch.testing.assert_close(layer(x), reference(x))


def test_batch_renorm_schedule():
    layer = norms.build("batch_renorm", 2, 2, r_max=3.0, d_max=5.0, start_steps=10, r_max_at=30, d_max_at=20)
    assert layer.bounds(1) == layer.bounds(10) == (1.0, 0.0)  # plain BN first
    assert layer.bounds(20) == (2.0, 5.0)
    assert layer.bounds(30) == layer.bounds(1000) == (3.0, 5.0)


def test_batch_renorm_refuses_ddp():
    model = nn.Sequential(norms.build("batch_renorm", 4, 2))
    with pytest.raises(RuntimeError, match="does not synchronize its batch statistics"):
        norms.synchronize(model, torch.device("cpu"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["norm=ghost_bn", "norm.virtual_batch_size=0"], "norm.virtual_batch_size=0: expected an integer"),
        (["norm=batch_renorm", "norm.r_max=0.5"], "norm.r_max=0.5: expected a number >= 1"),
        (["norm=batch_renorm", "norm.d_max_at=100"], "norm.d_max_at=100: is before norm.start_steps=500"),
    ],
)
def test_bad_options_fail_before_data_loads(overrides, message, tmp_path):
    config = compose_config([*SMOKE, "data.name=mnist", "data.root=/nonexistent", *overrides])
    with pytest.raises(ConfigError, match=message):
        train(config, tmp_path)


@pytest.mark.parametrize(
    "overrides",
    [["norm=ghost_bn", "norm.virtual_batch_size=20"], ["norm=batch_renorm", "norm.start_steps=2",
     "norm.r_max_at=6", "norm.d_max_at=6"], ["norm=batch_renorm", "norm.momentum=null"]],
    ids=["ghost_bn", "batch_renorm", "batch_renorm_cumulative"],
)  # fmt: skip
def test_they_train_the_fig1_mlp(overrides, tmp_path):
    summary = train(compose_config([*SMOKE, *overrides]), tmp_path)
    assert summary["status"] == "finished"
    assert summary["final_test_acc_population_stats"] is not None  # Algorithm 2 applies to both
