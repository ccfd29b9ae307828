"""The fast path (norms/fast_batchnorm.py) against the readable reference (norms/batchnorm.py).

BatchNorm(impl="fast") and BatchNorm(impl="reference") hold the same state and see the same inputs, for
every input rank, option, backward, dtype and memory layout: outputs, gradients, running statistics.
The reference computes in float64, so it is also the yardstick for the fast path's rounding. Then the
parts only the fast path has: the fused kernels (used in the common training step, and only there),
the large-offset branch, the second derivatives of the explicit backward, forward AD and vmap.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.func import functional_call, vmap

from bn_repro.norms import fast_batchnorm as fast
from bn_repro.norms.batchnorm import BatchNorm

BACKWARDS = ["autograd", "explicit"]
SHAPES = [(6, 4), (5, 4, 3), (4, 4, 3, 2), (3, 4, 2, 3, 2)]
OPTIONS = [
    {},
    {"affine": False},
    {"bias": False},
    {"track_running_stats": False},
    {"momentum": None},
    {"eps": 1e-3},
]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def layouts(shape):
    names = ["contiguous", "non_contiguous"]
    if len(shape) >= 4:
        names.append("channels_last")
    return names


def make_input(shape, layout, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    if layout == "non_contiguous":  # every other element of a twice-as-long last dim
        x = torch.randn(*shape[:-1], 2 * shape[-1], generator=gen)[..., ::2]
    else:
        x = torch.randn(shape, generator=gen)
    x = x * 3.0 + 2.0
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last if len(shape) == 4 else torch.channels_last_3d)
    return x.to(dtype)


def make_pair(channels, backward, dtype, **options):
    """The fast and the reference module with the same random state."""
    fast_bn = BatchNorm(channels, backward=backward, impl="fast", **options)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in fast_bn.parameters():
            p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
        if fast_bn.running_mean is not None:
            fast_bn.running_mean.copy_(torch.randn(channels, generator=gen))
            fast_bn.running_var.copy_(torch.rand(channels, generator=gen) + 0.5)
    ref_bn = BatchNorm(channels, backward=backward, impl="reference", **options)
    ref_bn.load_state_dict(fast_bn.state_dict())
    return fast_bn.to(dtype), ref_bn.to(dtype)


def tolerances(dtype):
    if dtype in (torch.float16, torch.bfloat16):
        # both compute in float32 or better and round once: an ulp apart at most
        eps = torch.finfo(dtype).eps
        return {"atol": 2 * eps, "rtol": 2 * eps}
    return {}  # torch.testing's defaults for the dtype


def step(layer, x, g):
    x = x.detach().clone().requires_grad_()
    y = layer(x)
    params = [p for p in (layer.weight, layer.bias) if p is not None]
    return y, torch.autograd.grad(y, [x, *params], g)


def assert_same_step(fast_bn, ref_bn, x, g):
    y_fast, grads_fast = step(fast_bn, x, g)
    y_ref, grads_ref = step(ref_bn, x, g)
    assert y_fast.dtype == y_ref.dtype == x.dtype
    assert y_fast.shape == x.shape
    if x.dim() >= 4 and not x.is_contiguous():
        assert y_fast.stride() == y_ref.stride()
    tol = tolerances(x.dtype)
    torch.testing.assert_close(y_fast, y_ref, **tol)
    torch.testing.assert_close(grads_fast[0], grads_ref[0], **tol)
    # dl/dgamma, dl/dbeta: sums over the batch of terms of either sign, rounded after summation
    for a, b in zip(grads_fast[1:], grads_ref[1:], strict=True):
        scale = float((g.double().abs() * 3).sum() / g.shape[1])
        eps = torch.finfo(x.dtype).eps
        torch.testing.assert_close(a, b, atol=max(8 * eps * scale, 1e-5), rtol=tol.get("rtol", 1.3e-6))


def assert_same_buffers(fast_bn, ref_bn, dtype):
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        a, b = getattr(fast_bn, name), getattr(ref_bn, name)
        assert (a is None) == (b is None)
        if a is not None:
            assert a.dtype == b.dtype
            torch.testing.assert_close(a, b, **tolerances(dtype), msg=name)


def _cases():
    for shape, options, dtype, backward in itertools.product(SHAPES, OPTIONS, DTYPES, BACKWARDS):
        if dtype in (torch.float16, torch.bfloat16) and options not in ({}, {"affine": False}):
            continue
        for layout in layouts(shape):
            name = f"{len(shape)}d-{layout}-{str(dtype)[6:]}-{backward}-" + (
                ",".join(f"{k}={v}" for k, v in options.items()) or "default"
            )
            yield pytest.param(shape, layout, dtype, backward, options, id=name)


@pytest.mark.parametrize("shape, layout, dtype, backward, options", list(_cases()))
def test_fast_matches_reference(shape, layout, dtype, backward, options):
    fast_bn, ref_bn = make_pair(shape[1], backward, dtype, **options)
    for training, seed in ((True, 1), (True, 2), (False, 3)):
        fast_bn.train(training)
        ref_bn.train(training)
        x = make_input(shape, layout, dtype, seed)
        g = make_input(shape, "contiguous", dtype, seed + 50)
        assert_same_step(fast_bn, ref_bn, x, g)
        assert_same_buffers(fast_bn, ref_bn, dtype)
    with torch.no_grad():  # a no_grad training forward runs the fused kernels in both backward modes
        fast_bn.train()
        ref_bn.train()
        x = make_input(shape, layout, dtype, 4)
        torch.testing.assert_close(fast_bn(x), ref_bn(x), **tolerances(dtype))
        assert_same_buffers(fast_bn, ref_bn, dtype)


@pytest.mark.parametrize("backward", BACKWARDS)
@pytest.mark.parametrize(
    "shape, layout",
    [((256, 8), "contiguous"), ((8, 4, 6, 6), "contiguous"), ((8, 4, 6, 6), "channels_last")],
    ids=["2d", "4d", "4d_channels_last"],
)
def test_large_offset_branch_matches_reference(shape, layout, backward):
    """Channels with |mean| >> std take the centred branch of the fused kernels (x - p, then the
    correction c); the others do not. Both agree with the float64 reference."""
    x = make_input(shape, layout, torch.float32, 5)
    offsets = torch.tensor([1e4, 0.0, -3e3, 7.0] * (shape[1] // 4)).view(1, -1, *([1] * (len(shape) - 2)))
    x = (
        (x + offsets).contiguous(memory_format=torch.channels_last)
        if layout == "channels_last"
        else x + offsets
    )
    fast_bn, ref_bn = make_pair(shape[1], backward, torch.float32)
    g = make_input(shape, "contiguous", torch.float32, 6)
    assert_same_step(fast_bn, ref_bn, x, g)
    assert_same_buffers(fast_bn, ref_bn, torch.float32)


def test_mixed_precision_input_matches_reference():
    """A bfloat16 / float16 input with float32 parameters (autocast style)."""
    for dtype in (torch.bfloat16, torch.float16):
        for backward in BACKWARDS:
            fast_bn, ref_bn = make_pair(4, backward, torch.float32)
            x = make_input((16, 4, 5), "contiguous", dtype, 7)
            assert_same_step(fast_bn, ref_bn, x, make_input((16, 4, 5), "contiguous", dtype, 8))
            assert_same_buffers(fast_bn, ref_bn, torch.float32)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{len(s)}d")
def test_second_derivatives_match_reference(shape):
    """Double backward: the gradient of a function of dl/dx (a gradient penalty), through every
    backward of both impls, in float64."""
    results = []
    for impl, backward in itertools.product(["fast", "reference"], BACKWARDS):
        bn = BatchNorm(shape[1], backward=backward, impl=impl).double()
        with torch.no_grad():
            bn.weight.copy_(torch.linspace(0.5, 1.5, shape[1]))
            bn.bias.copy_(torch.linspace(-1, 1, shape[1]))
        x = make_input(shape, "contiguous", torch.float64, 9).requires_grad_()
        g = make_input(shape, "contiguous", torch.float64, 10)
        (grad_x,) = torch.autograd.grad(bn(x), x, g, create_graph=True)
        penalty = (grad_x * torch.sin(x)).sum()
        results.append(torch.autograd.grad(penalty, [x, bn.weight]))  # dl/dx does not depend on beta
    for other in results[1:]:
        for a, b in zip(other, results[0], strict=True):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{len(s)}d")
def test_forward_ad_and_batched_grads_match_reference(shape):
    tangents, batched = [], []
    for impl, backward in itertools.product(["fast", "reference"], BACKWARDS):
        bn = BatchNorm(shape[1], backward=backward, impl=impl).double()
        x = make_input(shape, "contiguous", torch.float64, 11)
        t = make_input(shape, "contiguous", torch.float64, 12)
        w_t = torch.linspace(-1, 1, shape[1], dtype=torch.float64)
        with fwAD.dual_level():
            y = functional_call(
                bn, {"weight": fwAD.make_dual(bn.weight.detach(), w_t)}, (fwAD.make_dual(x, t),)
            )
            tangents.append(fwAD.unpack_dual(y).tangent)
        x = x.requires_grad_()
        upstream = torch.stack([make_input(shape, "contiguous", torch.float64, 13 + i) for i in range(3)])
        batched.append(torch.autograd.grad(bn(x), [x, bn.weight], upstream, is_grads_batched=True))
    for other in tangents[1:]:
        torch.testing.assert_close(other, tangents[0])
    for other in batched[1:]:
        for a, b in zip(other, batched[0], strict=True):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backward", BACKWARDS)
@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 2, 2)], ids=["2d", "4d"])
def test_vmap_matches_reference(shape, backward):
    outs = []
    for impl in ("fast", "reference"):
        bn = BatchNorm(3, backward=backward, impl=impl, track_running_stats=False)
        xs = torch.stack([make_input(shape, "contiguous", torch.float32, 20 + i) for i in range(3)])
        ws = torch.rand(3, 3, generator=torch.Generator().manual_seed(1)) + 0.5
        outs.append(vmap(lambda w, x, bn=bn: functional_call(bn, {"weight": w}, (x,)))(ws, xs))
    torch.testing.assert_close(outs[0], outs[1])


# ---------------------------------------------------------------- the fused kernels are used where they apply


class _Calls:
    def __init__(self, monkeypatch):
        self.names = []
        for name in ("_normalize_fused", "_backward_fused", "_backward_differentiable"):
            original = getattr(fast, name)

            def spy(*args, _original=original, _name=name, **kwargs):
                self.names.append(_name)
                return _original(*args, **kwargs)

            monkeypatch.setattr(fast, name, spy)


@pytest.mark.parametrize("shape", [(8, 4), (4, 4, 3, 3)], ids=["2d", "4d"])
def test_common_training_step_runs_fused_kernels(monkeypatch, shape):
    """float32, training, grad enabled, first-order backward: the explicit backward runs the fused
    forward and backward kernels; a backward with create_graph=True runs the differentiable one."""
    calls = _Calls(monkeypatch)
    bn = BatchNorm(shape[1], backward="explicit")
    x = make_input(shape, "contiguous", torch.float32, 1).requires_grad_()
    torch.autograd.grad(bn(x).square().sum(), [x, bn.weight])
    assert calls.names == ["_normalize_fused", "_backward_fused"]
    calls.names.clear()
    (grad_x,) = torch.autograd.grad(bn(x).square().sum(), x, create_graph=True)
    assert calls.names == ["_normalize_fused", "_backward_differentiable"]
    calls.names.clear()
    # the autograd backward records its graph through out-of-place ops only
    BatchNorm(shape[1], backward="autograd")(x)
    assert calls.names == []
    with torch.no_grad():
        BatchNorm(shape[1], backward="autograd")(x)
    assert calls.names == ["_normalize_fused"]


def test_transforms_take_the_differentiable_path(monkeypatch):
    calls = _Calls(monkeypatch)
    bn = BatchNorm(3, backward="explicit", track_running_stats=False)
    xs = make_input((2, 5, 3), "contiguous", torch.float32, 2)
    vmap(bn)(xs)
    with fwAD.dual_level():
        bn(fwAD.make_dual(xs[0], torch.ones_like(xs[0])))
    assert "_normalize_fused" not in calls.names


@pytest.mark.parametrize(
    "shape, memory_format",
    [
        ((3, 4), None),
        ((2, 4, 5), None),
        ((2, 4, 3, 5), torch.channels_last),
        ((2, 4, 3, 5), None),
        ((0, 4, 3, 5), torch.channels_last),
        ((2, 4, 0, 5), None),
        ((2, 4, 1, 2, 3), torch.channels_last_3d),
    ],
)
def test_channel_rows_round_trip(shape, memory_format):
    x = torch.arange(torch.Size(shape).numel(), dtype=torch.float32).view(shape)
    if memory_format is not None:
        x = x.contiguous(memory_format=memory_format)
    rows, channels_last = fast.channel_rows(x)
    assert rows.shape[-1 if channels_last or x.dim() == 2 else 1] == shape[1]
    assert rows.numel() == x.numel()
    if x.numel():
        assert rows.data_ptr() == x.data_ptr()  # a view, no copy
    assert torch.equal(fast.restore(rows.clone(), x, channels_last), x)
    assert fast.values_per_channel(x) == x.numel() // shape[1]


# ---------------------------------------------------------------- synchronized statistics, one rank


@pytest.fixture(scope="module")
def single_rank_group(tmp_path_factory):
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    created = not dist.is_initialized()
    if created:
        store = f"file://{tmp_path_factory.mktemp('dist') / 'store'}"
        dist.init_process_group("gloo", init_method=store, rank=0, world_size=1)
    yield dist.group.WORLD
    if created:
        dist.destroy_process_group()


# sync._AllReduceSum.backward all-reduces in place without an autograd rule of its own, so a
# create_graph backward through it warns (and on several ranks its second derivative would be wrong:
# a limitation of bn_repro/norms/sync.py). On one rank the sum is the identity and the result exact.
@pytest.mark.filterwarnings("ignore:.*an autograd kernel was not registered:UserWarning")
@pytest.mark.parametrize("impl, backward", list(itertools.product(["fast", "reference"], BACKWARDS)))
@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 2, 2), (0, 3, 2, 2)], ids=["2d", "4d", "empty"])
def test_process_group_path_matches_local_on_one_rank(single_rank_group, shape, impl, backward):
    """The all-reduce code paths (statistics, backward sums, the empty shard of a DDP rank, double
    backward through the differentiable all-reduce), on a one-process gloo group."""
    local = BatchNorm(3, backward=backward, impl=impl).double()
    synced = BatchNorm(3, backward=backward, impl=impl).double()
    synced.process_group = single_rank_group
    g = (
        make_input(shape, "contiguous", torch.float64, 31)
        if shape[0]
        else torch.empty(shape, dtype=torch.float64)
    )
    x = (
        (make_input(shape, "contiguous", torch.float64, 30) + 1e4)
        if shape[0]
        else torch.empty(shape, dtype=torch.float64)
    )
    results = []
    for bn in (local, synced):
        xx = x.clone().requires_grad_()
        y = bn(xx)
        grads = torch.autograd.grad(y, [xx, bn.weight, bn.bias], g, create_graph=True)
        second = torch.autograd.grad(
            (grads[0] * xx.cos()).sum(), [xx, bn.weight], allow_unused=True, materialize_grads=True
        )
        results.append((y, *grads, *second, bn.running_mean, bn.running_var, bn.num_batches_tracked))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b)
