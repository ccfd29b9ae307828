"""bn_repro's BatchNorm beside torch.nn.BatchNorm1d/2d/3d on the cases torch's own BatchNorm tests use.

Sources (torch 2.x): torch/testing/_internal/common_modules.py (module_inputs_torch_nn_BatchNorm1d/2d/3d,
module_error_inputs_torch_nn_BatchNorm1d_2d_3d), common_methods_invocations.py (sample_inputs_batch_norm),
torch/nn/modules/batchnorm.py (_NormBase._load_from_state_dict, _version = 2, _BatchNorm.forward) and
torch/nn/functional.py (batch_norm's eps checks). Those helpers cannot be imported here (they need
torch's test dependencies), so their inputs are written out below. Every case runs in both backward
modes and both impls.
"""

from __future__ import annotations

import collections
import copy
import io
import itertools
import pickle

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.func import functional_call, grad, jacfwd, jacrev, stack_module_state, vmap

from bn_repro.norm import BatchNorm

VARIANTS = [("fast", "autograd"), ("fast", "explicit"), ("reference", "autograd"), ("reference", "explicit")]
VARIANT_IDS = [f"{impl}-{backward}" for impl, backward in VARIANTS]
TORCH_BN = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}

variants = pytest.mark.parametrize("impl, backward", VARIANTS, ids=VARIANT_IDS)


def make_pair(shape, impl, backward, *args, dtype=torch.float32, seed=0, **kwargs):
    """torch's BN and ours, built with the same arguments, with the same random state."""
    ref = TORCH_BN[len(shape)](*args, **kwargs).to(dtype)
    ours = BatchNorm(*args, backward=backward, impl=impl, **kwargs).to(dtype)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if ref.weight is not None:
            ref.weight.copy_(torch.rand(ref.weight.shape, generator=gen) + 0.5)
        if ref.bias is not None:
            ref.bias.copy_(torch.randn(ref.bias.shape, generator=gen))
        if ref.running_mean is not None:
            ref.running_mean.copy_(torch.randn(ref.running_mean.shape, generator=gen))
            ref.running_var.copy_(torch.rand(ref.running_var.shape, generator=gen) + 0.5)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def make_input(shape, dtype=torch.float32, seed=1, memory_format=torch.contiguous_format):
    """Uniform in [-9, 9), torch.testing.make_tensor's default range (the ModuleInfo inputs use it)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=gen, dtype=torch.float64) * 18 - 9
    return x.to(dtype).contiguous(memory_format=memory_format)


def params_of(m):
    return [p for p in (m.weight, m.bias) if p is not None]


def step(m, x, g):
    """Forward, then the gradients of x and of the parameters against upstream g."""
    x = x.detach().clone().requires_grad_()
    y = m(x)
    grads = torch.autograd.grad(y, [x, *params_of(m)], g, allow_unused=True)
    return y, grads


def assert_buffers_equal(ref, ours, **tol):
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        a, b = getattr(ref, name), getattr(ours, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert b.dtype == a.dtype, name
            torch.testing.assert_close(b, a, msg=name, **tol)


# ---------------------------------------------------------------- module_inputs_torch_nn_BatchNorm*

# (constructor args, constructor kwargs, input shape, desc): torch's ModuleInfo inputs, written out.
MODULE_INPUTS = [
    ((10,), {}, (4, 10), "1d_affine"),
    ((5,), {}, (4, 5, 3), "1d_3d_input"),
    ((10, 1e-3, None), {}, (4, 10), "1d_affine_simple_average"),
    ((10, 1e-3, 0.3, False), {}, (4, 10), "1d_not_affine"),
    ((10, 1e-3, 0.3, True, False), {}, (4, 10), "1d_not_tracking_stats"),
    ((5, 1e-3, 0.3, False), {}, (4, 5, 3), "1d_3d_input_not_affine"),
    ((5, 1e-3, 0.3, False), {}, (0, 5, 9), "1d_zero_batch"),
    ((10,), {"bias": False}, (4, 10), "1d_affine_not_bias"),
    ((3,), {}, (2, 3, 6, 6), "2d"),
    ((3, 1e-3, None), {}, (2, 3, 6, 6), "2d_simple_average"),
    ((3, 1e-3, 0.8), {}, (2, 3, 6, 6), "2d_momentum"),
    ((3, 1e-3, 0.8, False), {}, (2, 3, 6, 6), "2d_not_affine"),
    ((3, 1e-3, 0.8, True, False), {}, (2, 3, 6, 6), "2d_not_tracking_stats"),
    ((5, 1e-3, 0.3, False), {}, (0, 5, 2, 2), "2d_zero_batch"),
    ((3,), {"bias": False}, (2, 3, 6, 6), "2d_affine_not_bias"),
    ((3,), {}, (2, 3, 4, 4, 4), "3d"),
    ((3, 1e-3, None), {}, (2, 3, 4, 4, 4), "3d_simple_average"),
    ((3, 1e-3, 0.7), {}, (2, 3, 4, 4, 4), "3d_momentum"),
    ((3, 1e-3, 0.7, False), {}, (2, 3, 4, 4, 4), "3d_not_affine"),
    ((3, 1e-3, 0.7, True, False), {}, (2, 3, 4, 4, 4), "3d_not_tracking_stats"),
    ((5, 1e-3, 0.3, False), {}, (0, 5, 2, 2, 2), "3d_zero_batch"),
    ((3,), {"bias": False}, (2, 3, 4, 4, 4), "3d_affine_not_bias"),
]


@variants
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize(
    "args, kwargs, shape", [c[:3] for c in MODULE_INPUTS], ids=[c[3] for c in MODULE_INPUTS]
)
def test_module_inputs_train_then_eval(args, kwargs, shape, dtype, impl, backward):
    ref, ours = make_pair(shape, impl, backward, *args, dtype=dtype, **kwargs)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert list(ours.state_dict()) == list(ref.state_dict())
    for training, seed in ((True, 1), (True, 2), (False, 3)):
        ref.train(training)
        ours.train(training)
        x = make_input(shape, dtype, seed)
        g = make_input(shape, dtype, seed + 100)
        y_ref, grads_ref = step(ref, x, g)
        y_ours, grads_ours = step(ours, x, g)
        assert y_ours.shape == y_ref.shape and y_ours.dtype == y_ref.dtype
        torch.testing.assert_close(y_ours, y_ref)
        torch.testing.assert_close(grads_ours[0], grads_ref[0])
        for a, b in zip(grads_ours[1:], grads_ref[1:], strict=True):
            torch.testing.assert_close(a, b, atol=1e-4 if dtype == torch.float32 else 1e-10, rtol=1e-5)
        assert_buffers_equal(ref, ours)


@variants
@pytest.mark.parametrize("shape", [(4, 6, 3, 5), (3, 6, 2, 3, 4)], ids=["channels_last", "channels_last_3d"])
def test_channels_last_matches_contiguous_and_torch(shape, impl, backward):
    memory_format = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
    ref, ours = make_pair(shape, impl, backward, shape[1])
    ref_c, ours_c = make_pair(shape, impl, backward, shape[1])
    x, g = make_input(shape, seed=4), make_input(shape, seed=5)
    y_ref, grads_ref = step(ref, x.contiguous(memory_format=memory_format), g)
    y_cl, grads_cl = step(
        ours, x.contiguous(memory_format=memory_format), g.contiguous(memory_format=memory_format)
    )
    y_c, grads_c = step(ours_c, x, g)
    assert y_cl.is_contiguous(memory_format=memory_format)
    for y in (y_ref, y_c):
        torch.testing.assert_close(y_cl, y)
    for grads in (grads_ref, grads_c):
        torch.testing.assert_close(grads_cl[0], grads[0])
        for a, b in zip(grads_cl[1:], grads[1:], strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)
    assert_buffers_equal(ref, ours)


@variants
def test_affine_not_bias_repr_and_state_dict(impl, backward):
    ours = BatchNorm(4, bias=False, backward=backward, impl=impl)
    assert ours.bias is None and ours.weight is not None
    assert list(ours.state_dict()) == list(nn.BatchNorm1d(4, bias=False).state_dict())
    assert repr(ours).endswith(", bias=False)")
    assert "bias" not in repr(BatchNorm(4))


# ---------------------------------------------------------------- empty batches

EMPTY_SHAPES = [(0, 5), (0, 5, 9), (0, 5, 2, 2), (0, 5, 2, 2, 2), (3, 5, 0), (2, 5, 0, 3)]


@variants
@pytest.mark.parametrize(
    "options",
    [{}, {"momentum": None}, {"affine": False}, {"track_running_stats": False}],
    ids=["default", "cumulative", "no_affine", "no_stats"],
)
@pytest.mark.parametrize("shape", EMPTY_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_empty_batch(shape, options, impl, backward):
    """torch: an empty output of the input's shape, zero gradients for weight and bias, running
    statistics untouched, num_batches_tracked still counting the batch (it is incremented before
    the kernel sees the input)."""
    ref, ours = make_pair(shape, impl, backward, 5, **options)
    g = torch.empty(shape)
    for training in (True, False, True):
        ref.train(training)
        ours.train(training)
        before = copy.deepcopy(ours.state_dict())
        y_ref, grads_ref = step(ref, torch.empty(shape), g)
        y_ours, grads_ours = step(ours, torch.empty(shape), g)
        assert y_ours.shape == y_ref.shape == shape and y_ours.dtype == y_ref.dtype
        for a, b in zip(grads_ours, grads_ref, strict=True):
            assert a.shape == b.shape
            assert torch.equal(a, b)
        for name in ("weight", "bias"):
            if getattr(ours, name) is not None:
                assert torch.equal(grads_ours[1 + (name == "bias")], torch.zeros(5))
        assert_buffers_equal(ref, ours, rtol=0, atol=0)
        for name in ("running_mean", "running_var"):
            if name in before:
                assert torch.equal(ours.state_dict()[name], before[name])
    # and a non-empty batch afterwards (momentum=None divides by the count that includes the empties)
    ref.train()
    ours.train()
    full = (4, *shape[1:2], *(s or 2 for s in shape[2:]))
    y_ref, _ = step(ref, make_input(full, seed=7), make_input(full, seed=8))
    y_ours, _ = step(ours, make_input(full, seed=7), make_input(full, seed=8))
    torch.testing.assert_close(y_ours, y_ref)
    assert_buffers_equal(ref, ours)


EMPTY_CHANNELS_LAST_SHAPES = [(0, 5, 2, 3), (2, 5, 0, 3), (0, 5, 2, 3, 4), (2, 5, 0, 3, 4)]


@variants
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", EMPTY_CHANNELS_LAST_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_empty_channels_last_batch_keeps_the_memory_format_like_torch(shape, training, impl, backward):
    """An empty channels_last (channels_last_3d) batch: torch's output and dl/dx keep the input's
    memory format, and the input's strides; so do ours, with either backward and impl, also when the
    backward is recorded for a second derivative. (An empty tensor counts as contiguous whatever its
    strides, so the strides are what tell the layouts apart.)"""
    memory_format = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
    ref, ours = make_pair(shape, impl, backward, shape[1])
    ref.train(training), ours.train(training)
    x = torch.empty(shape).contiguous(memory_format=memory_format)
    g = torch.empty(shape).contiguous(memory_format=memory_format)  # upstream gradient in y's layout
    (y_ref, grads_ref), (y, grads) = step(ref, x, g), step(ours, x, g)
    for ours_t, ref_t in ((y, y_ref), (grads[0], grads_ref[0])):
        assert ref_t.is_contiguous(memory_format=memory_format) and ref_t.stride() == x.stride()
        assert ours_t.shape == ref_t.shape and ours_t.stride() == ref_t.stride()
    for a, b in zip(grads[1:], grads_ref[1:], strict=True):
        assert torch.equal(a, b) and not a.any()  # no values: exactly zero gradients, as torch's
    assert ours.num_batches_tracked.item() == ref.num_batches_tracked.item() == int(training)
    x = x.clone().requires_grad_()
    (dx,) = torch.autograd.grad(ours(x), x, g.clone().requires_grad_(), create_graph=True)
    assert dx.stride() == x.stride()


# ---------------------------------------------------------------- higher-order and functional autograd

GRAD_SHAPES = [(3, 2), (2, 2, 3), (2, 2, 2, 2), (2, 2, 1, 2, 2)]
GRAD_OPTIONS = [{}, {"affine": False}, {"track_running_stats": False}, {"momentum": None}, {"eps": 1e-3}]


def gradchecks(impl, backward, shape, options, training, fast_mode=False):
    """gradcheck (with batched gradients and forward AD) and gradgradcheck (with batched gradients
    and forward-over-reverse) of the module as a function of x, weight and bias, in float64."""
    bn = BatchNorm(shape[1], backward=backward, impl=impl, **options).double().train(training)
    gen = torch.Generator().manual_seed(0)
    if bn.running_mean is not None:
        with torch.no_grad():
            bn.running_mean.copy_(torch.randn(shape[1], generator=gen, dtype=torch.float64))
            bn.running_var.copy_(torch.rand(shape[1], generator=gen, dtype=torch.float64) + 0.5)
    names = [n for n, _ in bn.named_parameters()]
    params = [
        (torch.rand(shape[1], generator=gen, dtype=torch.float64) + 0.5).requires_grad_() for _ in names
    ]
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 1).requires_grad_()
    buffers = {k: v.clone() for k, v in bn.named_buffers()}

    def fn(x, *ps):
        # fresh buffers each call: the finite differences must all see the same running statistics
        return functional_call(
            bn, {**dict(zip(names, ps, strict=True)), **{k: v.clone() for k, v in buffers.items()}}, (x,)
        )

    inputs = (x, *params)
    assert torch.autograd.gradcheck(
        fn, inputs, check_batched_grad=True, check_forward_ad=True, fast_mode=fast_mode
    )
    assert torch.autograd.gradgradcheck(
        fn, inputs, check_batched_grad=True, check_fwd_over_rev=True, fast_mode=fast_mode
    )


def _grad_cases():
    """Every impl, backward, rank and option. By default: the fast impl on every rank and option
    (the defaults and affine=False with full Jacobians; eps, and the options that change only the
    module's plumbing in training, with gradcheck's fast mode, a random projection), and the
    reference impl on the defaults; everything with full Jacobians under -m slow."""
    cases = []
    for (impl, backward), shape, options in itertools.product(VARIANTS, GRAD_SHAPES, GRAD_OPTIONS):
        name = f"{impl}-{backward}-{len(shape)}d-" + (
            ",".join(f"{k}={v}" for k, v in options.items()) or "default"
        )
        distinct = options in ({}, {"affine": False})
        if impl == "fast" or options == {}:
            fast_mode = not distinct
            cases.append(
                pytest.param(
                    impl, backward, shape, options, fast_mode, id=name + ("-fast_mode" if fast_mode else "")
                )
            )
        if impl != "fast" or not distinct:
            if not (impl == "reference" and options == {}):
                cases.append(
                    pytest.param(impl, backward, shape, options, False, id=name, marks=pytest.mark.slow)
                )
    return cases


@pytest.mark.parametrize("impl, backward, shape, options, fast_mode", _grad_cases())
def test_gradcheck_and_gradgradcheck_training(impl, backward, shape, options, fast_mode):
    gradchecks(impl, backward, shape, options, training=True, fast_mode=fast_mode)


@pytest.mark.parametrize(
    "impl, backward, shape, options",
    [
        pytest.param(
            i,
            b,
            s,
            o,
            id=f"{i}-{b}-{len(s)}d-{'running_stats' if o == {} else 'batch_stats'}",
            marks=() if (i == "fast" and len(s) in (2, 4)) else pytest.mark.slow,
        )
        for (i, b), s, o in itertools.product(VARIANTS, GRAD_SHAPES, [{}, {"track_running_stats": False}])
    ],
)
def test_gradcheck_and_gradgradcheck_eval(impl, backward, shape, options):
    gradchecks(impl, backward, shape, options, training=False)


@variants
@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5), (2, 3, 4, 4)], ids=["2d", "3d", "4d"])
def test_vmap_over_functional_call_ensemble(shape, impl, backward):
    """Model ensembling (torch.func.stack_module_state + functional_call + vmap) against a loop of
    torch BNs: batch statistics in training (track_running_stats=False), and per-member running
    statistics updated in place when the buffers are stacked too."""
    for options in ({"track_running_stats": False}, {}):
        pairs = [make_pair(shape, impl, backward, 3, seed=s, **options) for s in range(3)]
        params, buffers = stack_module_state([ours for _, ours in pairs])
        xs = torch.stack([make_input(shape, seed=10 + s) for s in range(3)])
        module = pairs[0][1]
        out = vmap(lambda p, b, x, module=module: functional_call(module, (p, b), (x,)))(params, buffers, xs)
        expected = torch.stack([ref(x) for (ref, _), x in zip(pairs, xs, strict=True)])
        torch.testing.assert_close(out, expected)
        for i, (ref, _) in enumerate(pairs):
            for name, buf in ref.named_buffers():
                torch.testing.assert_close(buffers[name][i], buf, msg=name)


@variants
@pytest.mark.parametrize("shape", [(6, 3), (2, 3, 4, 4)], ids=["2d", "4d"])
def test_vmap_of_grad_and_is_grads_batched(shape, impl, backward):
    pairs = [make_pair(shape, impl, backward, 3, track_running_stats=False, seed=s) for s in range(3)]
    params, buffers = stack_module_state([ours for _, ours in pairs])
    xs = torch.stack([make_input(shape, seed=20 + s) for s in range(3)])
    weights = torch.linspace(-1, 1, xs[0].numel()).view(shape)

    def loss(p, b, x):
        return (functional_call(pairs[0][1], (p, b), (x,)) ** 2 * weights).sum()

    grads = vmap(grad(loss))(params, buffers, xs)
    for i, (ref, _) in enumerate(pairs):
        expected = torch.autograd.grad((ref(xs[i]) ** 2 * weights).sum(), [ref.weight, ref.bias])
        torch.testing.assert_close(grads["weight"][i], expected[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(grads["bias"][i], expected[1], atol=1e-4, rtol=1e-4)

    # autograd.grad(..., is_grads_batched=True): a batch of upstream gradients in one backward
    ref, ours = pairs[0]
    x = xs[0].requires_grad_()
    upstream = torch.stack([make_input(shape, seed=30 + s) for s in range(4)])
    batched = torch.autograd.grad(ours(x), [x, ours.weight], upstream, is_grads_batched=True)
    y_ref = ref(x)
    for j in range(4):
        looped = torch.autograd.grad(y_ref, [x, ref.weight], upstream[j], retain_graph=True)
        torch.testing.assert_close(batched[0][j], looped[0])
        torch.testing.assert_close(batched[1][j], looped[1], atol=1e-4, rtol=1e-5)


@variants
@pytest.mark.parametrize("shape", [(5, 3), (3, 3, 2), (2, 3, 2, 2)], ids=["2d", "3d", "4d"])
def test_jacrev_jacfwd_match_torch(shape, impl, backward):
    ref, ours = make_pair(shape, impl, backward, 3, track_running_stats=False, dtype=torch.float64)
    x = make_input(shape, torch.float64, seed=2)
    expected = jacrev(ref)(x)
    torch.testing.assert_close(jacrev(ours)(x), expected)
    torch.testing.assert_close(jacfwd(ours)(x), expected)
    ref.eval(), ours.eval()
    torch.testing.assert_close(jacfwd(ours)(x), jacrev(ref)(x))


@variants
def test_vmap_of_training_forward_with_unbatched_buffers_raises_like_torch(impl, backward):
    xs = make_input((4, 6, 3), seed=3)
    with pytest.raises(RuntimeError, match="running_mean or running_var, which will be updated in place"):
        vmap(nn.BatchNorm1d(3))(xs)
    with pytest.raises(RuntimeError, match="running_mean or running_var, which will be updated in place"):
        vmap(BatchNorm(3, backward=backward, impl=impl))(xs)


@variants
def test_vmap_eval_matches_torch(impl, backward):
    ref, ours = make_pair((6, 3, 4), impl, backward, 3)
    ref.eval(), ours.eval()
    xs = make_input((5, 6, 3, 4), seed=6)
    torch.testing.assert_close(vmap(ours)(xs), vmap(ref)(xs))


# ---------------------------------------------------------------- 16-bit modules


@variants
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("shape", [(40000, 3), (8, 4, 64, 64)], ids=["2d", "4d"])
def test_16bit_module_accumulates_in_float32(shape, dtype, impl, backward):
    """module.half() / .bfloat16() with many values per channel: the statistics are float32 sums
    (a float16 sum of 32768 values of ~20 overflows), the running statistics stay 16-bit, and the
    output is torch's to the dtype's rounding, in both memory layouts."""
    float_ref, _ = make_pair(shape, impl, backward, shape[1])
    ref16 = copy.deepcopy(float_ref).to(dtype)
    ours16 = BatchNorm(shape[1], backward=backward, impl=impl).to(dtype)
    ours16.load_state_dict(ref16.state_dict())
    float_ref.load_state_dict(ref16.state_dict())  # the 16-bit parameters, held in float32
    x32 = make_input(shape, seed=9) * 2.0 + 20.0
    x = x32.to(dtype)
    g = make_input(shape, seed=10).to(dtype)
    y_ref, grads_ref = step(ref16, x, g)
    y, grads = step(ours16, x, g)
    eps = torch.finfo(dtype).eps
    assert y.dtype == dtype and all(t.dtype == dtype for t in grads)
    assert ours16.running_mean.dtype == dtype and ours16.running_var.dtype == dtype
    # the exact answers for these 16-bit values (float64), which ours round once
    y_exact, grads_exact = step(copy.deepcopy(float_ref).double(), x.double(), g.double())
    torch.testing.assert_close(y.double(), y_exact, atol=2 * eps, rtol=eps)
    torch.testing.assert_close(grads[0].double(), grads_exact[0], atol=2 * eps, rtol=eps)
    for ours_g, ref_g, exact_g in zip(grads[1:], grads_ref[1:], grads_exact[1:], strict=True):
        # sums of 32768 terms: within a rounding of the exact sum, and no further off than torch's
        ours_err = (ours_g.double() - exact_g).abs()
        assert bool((ours_err <= torch.maximum((ref_g.double() - exact_g).abs(), eps * exact_g.abs())).all())
    torch.testing.assert_close(y, y_ref, atol=4 * eps, rtol=2 * eps)
    torch.testing.assert_close(grads[0], grads_ref[0], atol=4 * eps, rtol=2 * eps)
    for name in ("running_mean", "running_var"):
        torch.testing.assert_close(getattr(ours16, name), getattr(ref16, name), atol=eps, rtol=eps)
    if len(shape) == 4:
        ours_cl = BatchNorm(shape[1], backward=backward, impl=impl).to(dtype)
        ours_cl.load_state_dict(float_ref.state_dict())
        y_cl, grads_cl = step(
            ours_cl,
            x.contiguous(memory_format=torch.channels_last),
            g.contiguous(memory_format=torch.channels_last),
        )
        assert y_cl.is_contiguous(memory_format=torch.channels_last)
        # the layouts sum in different orders in float32; rounded to 16 bits they agree to an ulp
        torch.testing.assert_close(y_cl, y, atol=2 * eps, rtol=eps)
        torch.testing.assert_close(grads_cl[0], grads[0], atol=2 * eps, rtol=eps)


@variants
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_16bit_eval_and_mixed_precision(dtype, impl, backward):
    ref, ours = make_pair((64, 4, 8, 8), impl, backward, 4)
    x = (make_input((64, 4, 8, 8), seed=11) + 30.0).to(dtype)
    # 16-bit input with float32 parameters (autocast style): float32 compute, input's dtype out
    for training in (True, False):
        ref.train(training), ours.train(training)
        y_ref, y = ref(x), ours(x)
        assert y.dtype == y_ref.dtype == dtype
        torch.testing.assert_close(y, y_ref, atol=4 * torch.finfo(dtype).eps, rtol=2 * torch.finfo(dtype).eps)
    ref16, ours16 = copy.deepcopy(ref).to(dtype).eval(), copy.deepcopy(ours).to(dtype).eval()
    torch.testing.assert_close(
        ours16(x), ref16(x), atol=4 * torch.finfo(dtype).eps, rtol=2 * torch.finfo(dtype).eps
    )


# ---------------------------------------------------------------- numerical stability


def _errors(layer, x, exact_y, exact_grad, g):
    y, grads = step(layer, x, g)
    return (y.double() - exact_y).abs().max().item(), (grads[0].double() - exact_grad).abs().max().item()


@variants
@pytest.mark.parametrize("offset", [1e3, 1e4, 1e5])
@pytest.mark.parametrize(
    "shape, memory_format",
    [
        ((256, 16), torch.contiguous_format),
        ((16, 8, 8, 8), torch.contiguous_format),
        ((16, 8, 8, 8), torch.channels_last),
    ],
    ids=["2d", "4d", "4d_channels_last"],
)
def test_large_common_offset_at_least_as_accurate_as_torch(shape, memory_format, offset, impl, backward):
    """float32 input x = offset + N(0, 1): the output and dl/dx, against float64 BN of the same
    float32 values, are no further off than torch's float32 kernel's."""
    ref, ours = make_pair(shape, impl, backward, shape[1])
    gen = torch.Generator().manual_seed(int(offset))
    x = (torch.randn(shape, generator=gen) + offset).contiguous(memory_format=memory_format)
    g = torch.randn(shape, generator=gen)
    exact_bn = copy.deepcopy(ref).double()
    exact_y, exact_grads = step(exact_bn, x.double(), g.double())
    err_ref = _errors(ref, x, exact_y, exact_grads[0], g)
    err_ours = _errors(ours, x, exact_y, exact_grads[0], g)
    for ours_e, ref_e in zip(err_ours, err_ref, strict=True):
        assert ours_e <= ref_e * 1.05 + 2e-6, (err_ours, err_ref)
    # eval mode, with the batch statistics (rounded to float32) as running statistics
    mean, var = x.double().mean(exact_dims(x)), x.double().var(exact_dims(x))
    for layer in (ref, ours, exact_bn):
        layer.eval()
        layer.running_mean.copy_(mean.float())
        layer.running_var.copy_(var.float())
    exact_y, exact_grads = step(exact_bn, x.double(), g.double())
    err_ref = _errors(ref, x, exact_y, exact_grads[0], g)
    err_ours = _errors(ours, x, exact_y, exact_grads[0], g)
    for ours_e, ref_e in zip(err_ours, err_ref, strict=True):
        assert ours_e <= ref_e * 1.05 + 2e-6, (err_ours, err_ref)


def exact_dims(x):
    return [0, *range(2, x.dim())]


# ---------------------------------------------------------------- validation and compatibility


@variants
@pytest.mark.parametrize("shape", [(2, 10), (2, 10, 5, 5), (2, 10, 4, 4, 4)], ids=["1d", "2d", "3d"])
@pytest.mark.parametrize("eps", [-1.0, 0.0])
def test_eps_must_be_positive_at_forward(shape, eps, impl, backward):
    """module_error_inputs_torch_nn_BatchNorm1d_2d_3d: the constructor accepts eps <= 0 (torch
    checks it in F.batch_norm), the training forward raises ValueError 'eps must be positive'."""
    ref = TORCH_BN[len(shape)](10, eps=eps)
    ours = BatchNorm(10, eps=eps, backward=backward, impl=impl)
    x = make_input(shape)
    for module in (ref, ours):
        with pytest.raises(ValueError, match="eps must be positive"):
            module(x)
    # eval with running statistics: eps = 0 is allowed, eps < 0 is not, as in torch
    ref.eval(), ours.eval()
    if eps == 0.0:
        torch.testing.assert_close(ours(x), ref(x))
    else:
        for module in (ref, ours):
            with pytest.raises(ValueError, match="eps must be non-negative"):
                module(x)
    # without running statistics, eval normalises with batch statistics: eps > 0 again
    ours_batch = BatchNorm(10, eps=eps, track_running_stats=False, backward=backward, impl=impl).eval()
    with pytest.raises(ValueError, match="eps must be positive"):
        ours_batch(x)


def _old_state_dict(metadata):
    src = nn.BatchNorm2d(3)
    src(make_input((4, 3, 2, 2)))
    sd = collections.OrderedDict((k, v) for k, v in src.state_dict().items() if k != "num_batches_tracked")
    if metadata is not None:
        sd._metadata = metadata
    return sd


@variants
@pytest.mark.parametrize(
    "metadata", [None, {"": {"version": 1}}, {"": {}}], ids=["no_metadata", "version1", "no_version"]
)
def test_state_dict_before_num_batches_tracked_loads_as_in_torch(metadata, impl, backward):
    for meta in (False, True):
        device = "meta" if meta else None
        ref = nn.BatchNorm2d(3, device=device)
        ours = BatchNorm(3, backward=backward, impl=impl, device=device)
        if not meta:
            ref.num_batches_tracked.fill_(5)
            ours.num_batches_tracked.fill_(5)
        r_ref = ref.load_state_dict(_old_state_dict(metadata), assign=meta)
        r_ours = ours.load_state_dict(_old_state_dict(metadata), assign=meta)
        assert r_ours == r_ref
        assert ours.num_batches_tracked.device.type == "cpu"
        assert torch.equal(ours.num_batches_tracked, ref.num_batches_tracked)
        for name in ("running_mean", "running_var", "weight", "bias"):
            assert torch.equal(getattr(ours, name), getattr(ref, name))
    # a version-2 state_dict without the key is still an error, as in torch
    sd = _old_state_dict({"": {"version": 2}})
    with pytest.raises(RuntimeError, match="num_batches_tracked"):
        BatchNorm(3, backward=backward, impl=impl).load_state_dict(sd)
    assert (
        BatchNorm(3).state_dict()._metadata[""]["version"]
        == nn.BatchNorm2d(3).state_dict()._metadata[""]["version"]
        == 2
    )


@variants
def test_meta_device_then_load_state_dict_assign(impl, backward):
    ref, _ = make_pair((4, 3, 2, 2), impl, backward, 3)
    ref(make_input((4, 3, 2, 2)))
    ours = BatchNorm(3, backward=backward, impl=impl, device="meta")
    assert all(t.is_meta for t in ours.state_dict().values())
    ours.load_state_dict(ref.state_dict(), assign=True)
    for name, value in ours.state_dict().items():
        assert not value.is_meta, name
        assert torch.equal(value, ref.state_dict()[name])
    assert isinstance(ours.weight, nn.Parameter)
    x = make_input((4, 3, 2, 2), seed=3)
    torch.testing.assert_close(ours(x), ref(x))
    assert_buffers_equal(ref, ours)
    # to_empty, as torch's test_modules does
    empty = BatchNorm(3, backward=backward, impl=impl, device="meta").to_empty(device="cpu")
    empty.reset_parameters()
    assert torch.equal(empty.running_var, torch.ones(3)) and empty.num_batches_tracked.item() == 0


@variants
def test_forward_ad_with_dual_running_stats(impl, backward):
    """torch: in eval mode, a tangent on the input together with dual running statistics raises
    RuntimeError; in training the running statistics are updated but keep their tangent."""
    msg = "batch_norm is not differentiable wrt running_mean and running_var"
    x = make_input((4, 3), seed=4)
    for module in (nn.BatchNorm1d(3), BatchNorm(3, backward=backward, impl=impl)):
        with fwAD.dual_level():
            module.running_mean = fwAD.make_dual(torch.zeros(3), torch.ones(3))
            dual_x = fwAD.make_dual(x, torch.ones_like(x))
            y = module(dual_x)
            assert fwAD.unpack_dual(y).tangent is not None
            primal, tangent = fwAD.unpack_dual(module.running_mean)
            torch.testing.assert_close(primal, 0.1 * x.mean(0))
            assert torch.equal(tangent, torch.ones(3))
            module.eval()
            with pytest.raises(RuntimeError, match=msg):
                module(dual_x)
            module(x)  # no tangent on the input: nothing to differentiate, no error
    # ordinary forward AD (no dual statistics) matches torch's jvp
    ref, ours = make_pair((5, 3, 4), impl, backward, 3, dtype=torch.float64)
    x, t = make_input((5, 3, 4), torch.float64, seed=5), make_input((5, 3, 4), torch.float64, seed=6)
    for training in (True, False):
        ref.train(training), ours.train(training)
        with fwAD.dual_level():
            expected = fwAD.unpack_dual(ref(fwAD.make_dual(x, t))).tangent
            got = fwAD.unpack_dual(ours(fwAD.make_dual(x, t))).tangent
        torch.testing.assert_close(got, expected)


@variants
def test_kept_on_purpose_channel_count_and_momentum(impl, backward):
    """Refused on purpose (documented in BatchNorm's docstring): a wrong channel count is a
    ValueError naming both counts (torch: RuntimeError), and a momentum outside [0, 1] is refused
    (torch accepts any float)."""
    with pytest.raises(RuntimeError):
        nn.BatchNorm1d(3)(make_input((4, 5)))
    with pytest.raises(ValueError, match=r"expected 3 channels \(num_features\) in dim 1, got 5"):
        BatchNorm(3, backward=backward, impl=impl)(make_input((4, 5)))
    for momentum in (-1.2, 1.5):
        nn.BatchNorm1d(3, momentum=momentum)(make_input((4, 3)))
        with pytest.raises(ValueError, match="momentum must be None or a number in"):
            BatchNorm(3, momentum=momentum, backward=backward, impl=impl)
    assert "Refused on purpose" in BatchNorm.__doc__


@variants
def test_one_value_per_channel_in_training_raises_like_torch(impl, backward):
    for shape in ((1, 3), (1, 3, 1, 1)):
        x = make_input(shape)
        with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
            TORCH_BN[len(shape)](3)(x)
        with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
            BatchNorm(3, backward=backward, impl=impl)(x)


@variants
def test_pickle_and_deepcopy_roundtrip(impl, backward):
    ref, ours = make_pair((4, 3), impl, backward, 3)
    ours(make_input((4, 3)))
    buf = io.BytesIO()
    torch.save(ours, buf)
    buf.seek(0)
    for clone in (pickle.loads(pickle.dumps(ours)), copy.deepcopy(ours), torch.load(buf, weights_only=False)):
        assert repr(clone) == repr(ours)
        for key, value in ours.state_dict().items():
            assert torch.equal(clone.state_dict()[key], value)
