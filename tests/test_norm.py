"""bn_repro.norm.BatchNorm against torch.nn.BatchNorm1d/2d/3d, and recompute_population_statistics."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from bn_repro.norm import BatchNorm, recompute_population_statistics

BACKWARDS = ["autograd", "explicit"]
TORCH_BN = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
SHAPES = [(6, 4), (5, 4, 3), (4, 4, 3, 2), (3, 4, 2, 3, 2)]
OPTIONS = [
    {},
    {"affine": False},
    {"track_running_stats": False},
    {"momentum": 0.3},
    {"momentum": None},
    {"eps": 1e-3},
]


def make_pair(shape, backward, dtype=torch.float32, **options):
    """A torch BN and a custom BN with the same random affine parameters."""
    ref = TORCH_BN[len(shape)](shape[1], **options).to(dtype)
    ours = BatchNorm(shape[1], backward=backward, **options).to(dtype)
    if ref.affine:
        with torch.no_grad():
            ref.weight.uniform_(0.5, 1.5)
            ref.bias.normal_()
            ours.weight.copy_(ref.weight)
            ours.bias.copy_(ref.bias)
    return ref, ours


def batch(shape, seed, dtype=torch.float32, memory_format=torch.contiguous_format):
    gen = torch.Generator().manual_seed(seed)
    # An offset and scale far from (0, 1) so that normalisation visibly does something.
    x = torch.randn(shape, generator=gen, dtype=dtype) * 3.0 + 2.0
    return x.contiguous(memory_format=memory_format)


def forward_backward(layer, x, grad):
    x = x.detach().clone().requires_grad_()
    y = layer(x)
    params = [p for p in (layer.weight, layer.bias) if p is not None]
    grads = torch.autograd.grad(y, [x, *params], grad)
    return y, grads


def assert_same_step(ref, ours, x, seed):
    grad = batch(x.shape, seed + 1000, dtype=x.dtype)
    y_ref, grads_ref = forward_backward(ref, x, grad)
    y_ours, grads_ours = forward_backward(ours, x, grad)
    torch.testing.assert_close(y_ours, y_ref)
    torch.testing.assert_close(grads_ours[0], grads_ref[0])
    # dl/dgamma and dl/dbeta are sums over the batch of terms of either sign: float32 rounding of
    # that sum differs by summation order, so the tolerance is relative to the sum of |terms|.
    for g_ours, g_ref in zip(grads_ours[1:], grads_ref[1:], strict=True):
        atol = (
            torch.finfo(x.dtype).eps * 8 * (grad.abs() * (grad.numel() / grad.shape[1])).sum() / grad.numel()
        )
        torch.testing.assert_close(g_ours, g_ref, atol=atol.item(), rtol=1e-5)
    return y_ref, y_ours


def assert_same_buffers(ref, ours):
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        ref_buf, our_buf = getattr(ref, name), getattr(ours, name)
        if ref_buf is None:
            assert our_buf is None, name
        else:
            torch.testing.assert_close(our_buf, ref_buf, msg=name)


@pytest.mark.parametrize("backward", BACKWARDS)
@pytest.mark.parametrize(
    "options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default"
)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{len(s)}d")
def test_matches_torch_training_then_eval(shape, options, backward):
    ref, ours = make_pair(shape, backward, **options)
    for step in range(3):
        assert_same_step(ref, ours, batch(shape, step), step)
    assert_same_buffers(ref, ours)
    ref.eval()
    ours.eval()
    assert_same_step(ref, ours, batch(shape, 99), 99)
    assert_same_buffers(ref, ours)


@pytest.mark.parametrize("backward", BACKWARDS)
@pytest.mark.parametrize(
    "shape, memory_format",
    [((4, 6, 3, 5), torch.channels_last), ((3, 6, 2, 3, 4), torch.channels_last_3d)],
    ids=["channels_last", "channels_last_3d"],
)
def test_channels_last(shape, memory_format, backward):
    ref, ours = make_pair(shape, backward)
    for step in range(2):
        x = batch(shape, step, memory_format=memory_format)
        y_ref, y_ours = assert_same_step(ref, ours, x, step)
        assert y_ours.is_contiguous(memory_format=memory_format) == y_ref.is_contiguous(
            memory_format=memory_format
        )
        assert y_ours.is_contiguous(memory_format=memory_format)
    assert_same_buffers(ref, ours)
    ref.eval()
    ours.eval()
    assert_same_step(ref, ours, batch(shape, 7, memory_format=memory_format), 7)


@pytest.mark.parametrize("backward", BACKWARDS)
@pytest.mark.parametrize("shape", [(6, 4), (4, 4, 3, 2)], ids=["2d", "4d"])
def test_float64(shape, backward):
    ref, ours = make_pair(shape, backward, dtype=torch.float64)
    for step in range(2):
        y_ref, y_ours = assert_same_step(ref, ours, batch(shape, step, dtype=torch.float64), step)
        assert y_ours.dtype == torch.float64
    assert_same_buffers(ref, ours)


def test_non_contiguous_input():
    ref, ours = make_pair((5, 4, 3, 2), "explicit")
    x = batch((5, 3, 4, 2), 0).transpose(1, 2)
    assert not x.is_contiguous()
    assert_same_step(ref, ours, x, 0)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(5, 3), (3, 2, 2, 3)], ids=["2d", "4d"])
def test_explicit_backward_gradcheck(shape, affine):
    layer = BatchNorm(shape[1], affine=affine, backward="explicit").double()
    x = batch(shape, 0, dtype=torch.float64).requires_grad_()
    if affine:
        with torch.no_grad():
            layer.weight.uniform_(0.5, 1.5)
            layer.bias.normal_()
        params = (layer.weight, layer.bias)
    else:
        params = ()

    def fn(x, *params):
        return functional_call(layer, dict(zip(("weight", "bias"), params, strict=False)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *params))


@pytest.mark.parametrize("backward", BACKWARDS)
@pytest.mark.parametrize("shape", [(16, 5), (4, 3, 3, 3)], ids=["dense", "conv"])
def test_scale_invariance(shape, backward):
    """Paper section 3.3: BN((aW)u) = BN(Wu) and d BN((aW)u) / d(aW) = (1/a) d BN(Wu) / dW.

    eps is tiny because the identity is exact only without it (eps does not scale with a^2); eps=0
    itself is refused in training, as by torch. In float64, var + 1e-300 rounds to var.
    """
    a = 3.7
    dense = len(shape) == 2
    weight = torch.randn((shape[1], 7) if dense else (shape[1], 2, 3, 3), dtype=torch.float64)
    bn = BatchNorm(shape[1], eps=1e-300, backward=backward).double()
    u = batch((shape[0], 7) if dense else (shape[0], 2, *shape[2:]), 0, dtype=torch.float64)
    upstream = batch(shape, 1, dtype=torch.float64)

    def run(weight):
        weight = weight.detach().clone().requires_grad_()
        out = bn(F.linear(u, weight) if dense else F.conv2d(u, weight, padding=1))
        (grad,) = torch.autograd.grad(out, weight, upstream)
        return out, grad

    y, grad_w = run(weight)
    y_scaled, grad_aw = run(a * weight)
    torch.testing.assert_close(y_scaled, y)
    torch.testing.assert_close(grad_aw, grad_w / a)


@pytest.mark.parametrize(
    "options",
    [{}, {"affine": False}, {"track_running_stats": False}],
    ids=["default", "no_affine", "no_stats"],
)
def test_state_dict_loads_both_ways(options):
    shape = (4, 3, 2, 2)
    trained_ref, trained_ours = make_pair(shape, "explicit", **options)
    for step in range(3):
        trained_ref(batch(shape, step))
        trained_ours(batch(shape, step + 10))

    ours_from_ref = BatchNorm(3, **options)
    ours_from_ref.load_state_dict(trained_ref.state_dict(), strict=True)
    ref_from_ours = nn.BatchNorm2d(3, **options)
    ref_from_ours.load_state_dict(trained_ours.state_dict(), strict=True)
    assert list(trained_ours.state_dict()) == list(trained_ref.state_dict())

    x = batch(shape, 50)
    for loaded, source in ((ours_from_ref, trained_ref), (ref_from_ours, trained_ours)):
        for key, value in source.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key
        loaded.eval()
        source.eval()
        torch.testing.assert_close(loaded(x), source(x))


def test_running_stats_are_buffers_that_follow_the_module():
    layer = BatchNorm(3)
    assert {name for name, _ in layer.named_buffers()} == {
        "running_mean",
        "running_var",
        "num_batches_tracked",
    }
    assert {name for name, _ in layer.named_parameters()} == {"weight", "bias"}
    layer.double()
    assert layer.running_mean.dtype == torch.float64
    assert layer.num_batches_tracked.dtype == torch.long


def test_no_running_stats_registers_none_buffers():
    layer = BatchNorm(3, track_running_stats=False)
    assert layer.running_mean is None and layer.running_var is None and layer.num_batches_tracked is None
    assert "running_mean" in layer._buffers
    assert list(layer.state_dict()) == ["weight", "bias"]


@pytest.mark.parametrize("backward", BACKWARDS)
def test_eval_under_enable_grad_uses_running_stats(backward):
    layer = BatchNorm(3, backward=backward)
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor([1.0, -2.0, 0.5]))
        layer.running_var.copy_(torch.tensor([4.0, 0.25, 1.0]))
        layer.weight.copy_(torch.tensor([2.0, 1.0, 0.5]))
        layer.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
    before = [b.clone() for b in layer.buffers()]
    layer.eval()
    x = batch((8, 3), 0).requires_grad_()
    with torch.enable_grad():
        y = layer(x)
    expected = (x - layer.running_mean) / torch.sqrt(
        layer.running_var + layer.eps
    ) * layer.weight + layer.bias
    torch.testing.assert_close(y, expected)
    for old, new in zip(before, layer.buffers(), strict=True):
        assert torch.equal(old, new)
    (grad_x,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(
        grad_x, (layer.weight / torch.sqrt(layer.running_var + layer.eps)).expand(8, 3)
    )


@pytest.mark.parametrize("backward", BACKWARDS)
def test_no_grad_forward_in_training_uses_batch_stats(backward):
    ref, ours = make_pair((16, 3), backward)
    x = batch((16, 3), 0)
    with torch.no_grad():
        y_ref, y_ours = ref(x), ours(x)
    torch.testing.assert_close(y_ours, y_ref)
    normalised = (y_ours - ours.bias) / ours.weight
    torch.testing.assert_close(normalised.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    assert ours.num_batches_tracked.item() == 1
    assert_same_buffers(ref, ours)


def test_extra_repr_and_resets():
    layer = BatchNorm(5, momentum=None, backward="explicit")
    assert repr(layer) == (
        "BatchNorm(5, eps=1e-05, momentum=None, affine=True, track_running_stats=True, backward='explicit')"
    )
    layer(batch((4, 5), 0))
    with torch.no_grad():
        layer.weight.fill_(3.0)
    layer.reset_running_stats()
    assert layer.num_batches_tracked.item() == 0
    assert torch.equal(layer.running_mean, torch.zeros(5)) and torch.equal(layer.running_var, torch.ones(5))
    assert torch.equal(layer.weight, torch.full((5,), 3.0))
    layer.reset_parameters()
    assert torch.equal(layer.weight, torch.ones(5)) and torch.equal(layer.bias, torch.zeros(5))


@pytest.mark.parametrize(
    "shape, training, options, match",
    [
        ((4, 5), True, {}, r"expected 3 channels \(num_features\) in dim 1, got 5"),
        ((4,), True, {}, r"expected a 2-D to 5-D input .*got a 1-D input of shape \(4,\)"),
        ((2, 3, 2, 2, 2, 2), True, {}, r"got a 6-D input"),
        ((1, 3), True, {}, r"Expected more than 1 value per channel when training, got input size"),
        ((1, 3, 1, 1), True, {}, r"Expected more than 1 value per channel when training"),
        ((1, 3), False, {"track_running_stats": False}, r"Expected more than 1 value per channel"),
    ],
)
def test_input_errors(shape, training, options, match):
    layer = BatchNorm(3, **options).train(training)
    with pytest.raises(ValueError, match=match):
        layer(torch.randn(shape))


def test_one_value_per_channel_is_fine_in_eval():
    layer = BatchNorm(3).eval()
    assert layer(torch.randn(1, 3)).shape == (1, 3)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"backward": "manual"}, r"unknown backward 'manual'; valid choices: autograd, explicit"),
        ({"momentum": -0.1}, r"momentum must be None or a number in \[0, 1\], got -0.1"),
        ({"momentum": 1.5}, r"got 1.5"),
        ({"momentum": "0.1"}, r"got '0.1'"),
    ],
)
def test_constructor_errors(options, match):
    with pytest.raises(ValueError, match=match):
        BatchNorm(3, **options)


def _direct_population_stats(model, inputs):
    """E_B[mu_B] and E_B[unbiased var_B] of each BN layer's input, walking the Sequential by hand."""
    per_layer = {}
    model.train()
    with torch.no_grad():
        for x in inputs:
            h = x
            for module in model:
                if isinstance(module, (BatchNorm, nn.modules.batchnorm._BatchNorm)):
                    dims = [0, *range(2, h.dim())]
                    mean = h.mean(dims)
                    var = h.var(dims, unbiased=True)
                    per_layer.setdefault(module, []).append((mean, var))
                h = module(h)
    return {
        module: (torch.stack([m for m, _ in stats]).mean(0), torch.stack([v for _, v in stats]).mean(0))
        for module, stats in per_layer.items()
    }


def _model(kind):
    torch.manual_seed(0)
    if kind == "2d":
        model = nn.Sequential(
            nn.Linear(6, 5), BatchNorm(5, backward="explicit"), nn.ReLU(), nn.Linear(5, 4), nn.BatchNorm1d(4)
        )
        inputs = [batch((10, 6), seed) for seed in range(5)]
    else:
        model = nn.Sequential(
            nn.Conv2d(3, 4, 3),
            BatchNorm(4, momentum=None),
            nn.ReLU(),
            nn.Conv2d(4, 5, 1),
            nn.SyncBatchNorm(5),
        )
        inputs = [batch((4, 3, 5, 5), seed) for seed in range(5)]
    return model, inputs


@pytest.mark.parametrize("as_tuples", [False, True], ids=["tensors", "tuples"])
@pytest.mark.parametrize("kind", ["2d", "4d"])
def test_recompute_population_statistics(kind, as_tuples):
    model, inputs = _model(kind)
    for x in inputs[:2]:
        model(x)
    model.eval()
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    momenta = [m.momentum for m in model if hasattr(m, "momentum")]
    num_batches = 4
    expected = _direct_population_stats(copy.deepcopy(model), inputs[:num_batches])
    model.eval()

    batches = [(x, torch.zeros(len(x))) for x in inputs] if as_tuples else iter(inputs)
    assert recompute_population_statistics(model, batches, num_batches) is model

    assert not any(m.training for m in model.modules())
    assert [m.momentum for m in model if hasattr(m, "momentum")] == momenta
    for name, p in model.named_parameters():
        assert torch.equal(p, params[name]), name
    bn_layers = [m for m in model if hasattr(m, "running_mean")]
    assert len(bn_layers) == 2
    for layer, (orig_layer, (mean, var)) in zip(bn_layers, expected.items(), strict=True):
        assert type(layer) is type(orig_layer)
        torch.testing.assert_close(layer.running_mean, mean)
        torch.testing.assert_close(layer.running_var, var)
        assert layer.num_batches_tracked.item() == num_batches


def test_recompute_restores_training_flags_per_module():
    model, inputs = _model("2d")
    model.train()
    model[1].eval()
    recompute_population_statistics(model, inputs, 2)
    assert [m.training for m in model] == [True, False, True, True, True]


def test_recompute_errors_leave_model_unchanged():
    model, inputs = _model("2d")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"batches ran out after 5 of num_batches=8"):
        recompute_population_statistics(model, inputs, 8)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert model.training
    with pytest.raises(ValueError, match=r"num_batches must be a positive int, got 0"):
        recompute_population_statistics(model, inputs, 0)


@pytest.mark.parametrize(
    "model",
    [nn.Sequential(nn.Linear(3, 3)), nn.Sequential(nn.Linear(3, 3), BatchNorm(3, track_running_stats=False))],
    ids=["no_bn", "no_running_stats"],
)
def test_recompute_needs_bn_layers_with_running_stats(model):
    with pytest.raises(ValueError, match=r"no BatchNorm layer with running statistics"):
        recompute_population_statistics(model, [torch.randn(4, 3)], 1)


@pytest.mark.parametrize("backward", BACKWARDS)
def test_bfloat16_input_with_float32_parameters_like_torch(backward):
    """Autocast hands BN bfloat16 activations while its parameters stay float32: computed in float32."""
    shape = (8, 4, 3, 3)
    ref, ours = make_pair(shape, backward)
    x = batch(shape, 0).to(torch.bfloat16)
    y_ref, (gx_ref, gw_ref, _) = forward_backward(ref, x, torch.ones(shape, dtype=torch.bfloat16))
    y_ours, (gx_ours, gw_ours, _) = forward_backward(ours, x, torch.ones(shape, dtype=torch.bfloat16))
    assert (
        y_ours.dtype == torch.bfloat16 and gx_ours.dtype == torch.bfloat16 and gw_ours.dtype == torch.float32
    )
    torch.testing.assert_close(y_ours, y_ref)
    torch.testing.assert_close(gx_ours, gx_ref)
    torch.testing.assert_close(gw_ours, gw_ref, atol=1e-4, rtol=1e-4)
    assert_same_buffers(ref, ours)
    ref.eval()
    ours.eval()
    torch.testing.assert_close(ours(x), ref(x))


@pytest.fixture
def single_rank_group(tmp_path):
    """A one-process gloo group: exercises the synchronized-statistics code path without a launcher."""
    import torch.distributed as dist

    if not dist.is_available() or dist.is_initialized():
        pytest.skip("needs torch.distributed and no process group already set up")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("backward", BACKWARDS)
@pytest.mark.parametrize("shape", [(6, 4), (4, 4, 3, 2)], ids=["2d", "4d"])
def test_process_group_of_one_matches_torch(shape, backward, single_rank_group):
    ref, ours = make_pair(shape, backward)
    ours.process_group = single_rank_group
    for step in range(2):
        assert_same_step(ref, ours, batch(shape, step), step)
    assert_same_buffers(ref, ours)
    assert "process_group" not in ours.state_dict()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_recompute_skips_empty_batches_and_accumulates_16bit_in_float32(dtype):
    """An empty batch (a DDP rank's empty shard) has no statistics and does not count; 16-bit
    inputs are accumulated in float32."""
    model = nn.Sequential(BatchNorm(3)).to(dtype)
    full = [(batch((4096, 3), seed) * 4 + 30).to(dtype) for seed in range(2)]
    batches = [full[0], torch.empty(0, 3, dtype=dtype), full[1]]
    recompute_population_statistics(model, batches, 3)
    layer = model[0]
    expected_mean = torch.stack([x.double().mean(0) for x in full]).mean(0)
    expected_var = torch.stack([x.double().var(0) for x in full]).mean(0)
    tol = {"rtol": 2 * torch.finfo(dtype).eps, "atol": 0.0}
    torch.testing.assert_close(layer.running_mean.double(), expected_mean.to(dtype).double(), **tol)
    torch.testing.assert_close(layer.running_var.double(), expected_var.to(dtype).double(), **tol)
    assert layer.running_mean.dtype == dtype
    assert layer.num_batches_tracked.item() == 2
