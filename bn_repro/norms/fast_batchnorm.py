"""The fast path of bn_repro.norms.batchnorm.BatchNorm: the same formulas, arranged for speed on CPU.

bn_repro/norms/batchnorm.py holds Algorithm 1 and the paper's backward as written; this module computes
the same quantities with fewer passes over memory, fewer allocations and fewer small ops (each op
called from Python costs a few microseconds, as much as a pass over a 100 KiB tensor). The tests hold
it to the readable version (tests/test_batchnorm_fast_path.py).

Inputs are per-channel rows from `channel_rows`: (R, C) for 2-D and channels-last input, (N, C, M)
otherwise. Per-channel statistics are (C,) for (R, C) rows and (1, C, 1) for (N, C, M) rows, so that
they broadcast without a view.

Two ways to run every formula:

- fused: kernels that write into fresh buffers (`out=`, `mul_`, ...), one input-sized buffer per
  direction. Used only where nothing can observe the difference: no autograd graph is recorded
  through them, no torch.func transform (vmap, grad, jvp, ...) is active, no forward-mode AD level
  is open, and no input is a batched tensor of `autograd.grad(..., is_grads_batched=True)`. That is
  the common training step: float32, grad enabled, first-order backward.
- differentiable: the same formulas in out-of-place tensor ops, for everything else. The explicit
  backward then recomputes the statistics from x, so that differentiating it again (double
  backward, forward-over-reverse) is exact, and vmap can batch every op.

Numerics. The mean is a per-channel sum p (the "pivot"); the variance is the mean of (x - p)^2, one
fused pass. When some channel has a large common offset, |p| > _OFFSET * std, two things change:
x * scale + shift (torch's own arrangement, one pass) would lose eps * |p| / std, and float32
summation has left an error of ~eps * |p| in p itself. Then the fused path centres x once more:
c = mean(x - p) corrects the mean (mean = p + c, var = mean((x - p)^2) - c^2 with c tiny), and y and
dl/dx are computed from x - p (exact in floating point when x and p are close). A common offset of
1e5 then costs float32 almost nothing, where torch's CPU kernel loses ~eps * offset / std. The
differentiable path always centres.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd import forward_ad

from bn_repro.norms.sync import global_count, sum_over_ranks

_is_legacy_batched = torch._C._functorch.is_legacy_batchedtensor
_peek_transform = torch._C._functorch.peek_interpreter_stack
_mse = torch._C._nn.mse_loss  # (x - t)^2, one fused pass (reduction 0: none)
_mse_backward = torch.ops.aten.mse_loss_backward.default  # 2 g (x - t), one fused pass

# |mean| > _OFFSET * std counts as a large common offset (see the module docstring). Below it the
# uncentred arrangement loses at most ~(|x| + |mean|) / std ~ 10 ulps, as torch's kernel does.
_OFFSET = 4.0


# ---------------------------------------------------------------- layout and small helpers


def channel_rows(x: Tensor) -> tuple[Tensor, bool | None]:
    """View x as (R, C) or (N, C, M) so that per-channel reductions need no copy.

    A 2-D input is used as is. A channels-last input (channel dim densest in memory) becomes
    (N*spatial, C), so statistics are reductions over dim 0, the fast case on CPU. Anything else
    becomes (N, C, M) with M the product of the spatial dims, reduced over dims (0, 2); that is a
    view for contiguous inputs. The flag says which of the two layouts `restore` undoes (None: x
    itself). Sizes are explicit, so empty inputs (N = 0 or a spatial size 0) reshape too.
    """
    if x.dim() == 2:
        return x, None
    n, c, m = x.shape[0], x.shape[1], math.prod(x.shape[2:])
    if not x.is_contiguous() and x.movedim(1, -1).is_contiguous():
        return x.movedim(1, -1).reshape(n * m, c), True
    return x.reshape(n, c, m), False


def restore(y: Tensor, like: Tensor, channels_last: bool | None) -> Tensor:
    if channels_last is None:
        return y
    if channels_last:
        return y.view(like.shape[0], *like.shape[2:], like.shape[1]).movedim(-1, 1)
    return y.view(like.shape)


def reduce_dims(rows: Tensor) -> tuple[int, ...]:
    return (0,) if rows.dim() == 2 else (0, 2)


def values_per_channel(x: Tensor) -> int:
    """m: how many values each channel's statistics pool (batch x spatial); also fine for C = 0."""
    return x.shape[0] * math.prod(x.shape[2:])


def _channel_sum(t: Tensor) -> Tensor:
    """Per-channel sum of (R, C) or (N, C, M) rows: shape (C,), or (1, C, 1) for (N, C, M).

    For (N, C, M), summing dim 2 then dim 0 is faster on CPU than one reduction over (0, 2)
    (96 against 119 us at (32, 64, 1024) on the 2-core EPYC). Both are torch's cascade sums, whose
    rounding error grows like log(m), not m.
    """
    if t.dim() == 3:
        return t.sum(2, keepdim=True).sum(0, keepdim=True)
    return t.sum(0)


def _channel_mean(t: Tensor, group, inv_m: float) -> Tensor:
    """Per-channel sum over the global batch, times inv_m = 1/m (t.mean is no faster on CPU)."""
    return sum_over_ranks(_channel_sum(t), group).mul_(inv_m)


def _like_stat(param: Tensor, stat: Tensor) -> Tensor:
    """A (C,) parameter or tangent shaped to broadcast like the per-channel statistic `stat`."""
    return param if stat.dim() == 1 or param.dim() != 1 else param.view(stat.shape)


def flat(stat: Tensor) -> Tensor:
    return stat if stat.dim() == 1 else stat.view(-1)


def plain(*tensors: Tensor | None) -> bool:
    """True where fused in-place / out= kernels are safe: no torch.func transform active, no
    forward-AD level open, no legacy-batched tensor (autograd.grad(is_grads_batched=True))."""
    if _peek_transform() is not None or forward_ad._current_level >= 0:
        return False
    return not any(t is not None and _is_legacy_batched(t) for t in tensors)


def _records_graph(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _large_offset(pivot: Tensor, invstd: Tensor) -> bool:
    """Whether some channel's |mean| exceeds _OFFSET standard deviations."""
    return pivot.numel() > 0 and pivot.mul(invstd).abs_().max().item() > _OFFSET


def _scale_shift(centre: Tensor | None, invstd: Tensor, weight: Tensor | None, bias: Tensor | None):
    """Per-channel (scale, shift) with gamma * (t - centre) * invstd + beta = t * scale + shift."""
    scale = invstd if weight is None else invstd.mul(_like_stat(weight, invstd))
    bias = None if bias is None else _like_stat(bias, invstd)
    if centre is None:
        return scale, bias
    if bias is None:
        return scale, centre.mul(scale).neg_()
    return scale, torch.addcmul(bias, centre, scale, value=-1.0)


def _affine(t: Tensor, scale: Tensor, shift: Tensor | None, out: Tensor) -> Tensor:
    """out = t * scale + shift. One addcmul when the channel dim is innermost; when scale is
    broadcast along the innermost dim instead, addcmul is ~3x slower than a mul and an add."""
    if shift is None:
        return torch.mul(t, scale, out=out)
    if t.dim() == 2:
        return torch.addcmul(shift, t, scale, out=out)
    return torch.mul(t, scale, out=out).add_(shift)


# ---------------------------------------------------------------- Algorithm 1, forward


def normalize(
    rows: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, group, count: int, fused: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None, Tensor]:
    """Training-mode BN of `rows`: (y, mean, biased var, pivot p, correction c, invstd).

    mean = p + c (c is None where the fused path found no large offset: mean = p). `count` is m
    over every rank of `group`; 0 for an empty global batch, where every sum is 0 and the
    statistics are finite placeholders that the module does not fold into its running statistics.
    """
    if fused:
        return _normalize_fused(rows, weight, bias, eps, group, count)
    m = max(count, 1)
    # p is a constant: mean = p + mean(x - p) for any p, so the gradient stays exact.
    pivot = sum_over_ranks(_channel_sum(rows), group).detach() / m
    d = rows - pivot
    sum_d, sum_d2 = _channel_sum(d), _channel_sum(d * d)
    if group is not None:  # one all-reduce for both sums
        sum_d, sum_d2 = sum_over_ranks(torch.stack([sum_d, sum_d2]), group).unbind(0)
    c = sum_d / m
    var = torch.clamp_min(sum_d2 / m - c * c, 0.0)
    invstd = torch.rsqrt(var + eps)
    scale, shift = _scale_shift(c, invstd, weight, bias)
    y = torch.addcmul(shift, d, scale) if rows.dim() == 2 else d * scale + shift
    return y, pivot + c, var, pivot, c, invstd


def _normalize_fused(rows, weight, bias, eps, group, count):
    """`normalize` with fused kernels and one input-sized buffer (y), used first as scratch."""
    inv_m = 1.0 / max(count, 1)
    pivot = _channel_mean(rows, group, inv_m)
    if rows.dim() == 2:
        y = _mse(rows, pivot.expand_as(rows), 0, out=torch.empty_like(rows))  # (x - p)^2
        mean_d2 = _channel_mean(y, group, inv_m)
        centred = None
    else:
        # x - p is needed for y anyway; vector_norm reads it once and writes nothing.
        y = centred = torch.sub(rows, pivot)
        norms = torch.linalg.vector_norm(y, dim=2, keepdim=True)
        mean_d2 = sum_over_ranks(norms.mul_(norms).sum(0, keepdim=True), group).mul_(inv_m)
    var = mean_d2
    invstd = var.add(eps).rsqrt_()
    c = None
    if _large_offset(pivot, invstd):
        if centred is None:
            centred = torch.sub(rows, pivot, out=y)
        c = _channel_mean(centred, group, inv_m)
        var = torch.addcmul(mean_d2, c, c, value=-1.0).clamp_min_(0.0)
        invstd = var.add(eps).rsqrt_()
    if centred is None:  # x * scale + (beta - p * scale), torch's arrangement
        scale, shift = _scale_shift(pivot, invstd, weight, bias)
        y = _affine(rows, scale, shift, out=y)
    else:  # (x - p) * scale + (beta - c * scale)
        scale, shift = _scale_shift(c, invstd, weight, bias)
        y = _affine(centred, scale, shift, out=y)
    return y, pivot if c is None else pivot + c, var, pivot, c, invstd


def batch_stats(rows: Tensor, group=None) -> tuple[Tensor, Tensor, int]:
    """Per-channel batch mean, biased batch variance and the (global) count m of `rows`."""
    count = global_count(values_per_channel(rows), rows.device, group)
    fused = plain(rows) and not _records_graph(rows)
    _, mean, var, *_ = normalize(rows, None, None, 1.0, group, count, fused)
    return mean, var, count


# ---------------------------------------------------------------- the paper's backward


def _backward_fused(g, rows, weight, pivot, c, invstd, count, group, needs):
    """dl/dx, dl/dgamma, dl/dbeta with fused kernels and one input-sized buffer (formulas: see
    ExplicitBatchNorm). With c (a large offset, found by forward) dl/dx is computed from x - p;
    without, as k * x + a * g + shift, torch's arrangement."""
    m = max(count, 1)
    sum_g = _channel_sum(g)
    buf = _mse_backward(g, rows, pivot.expand_as(rows), 0)  # 2 g (x - p)
    sum2_g_xmu = _channel_sum(buf)  # 2 sum g (x - mu), once corrected:
    if c is not None:  # sum g (x - mu) = sum g (x - p) - c sum g; c is tiny, nothing cancels
        sum2_g_xmu.addcmul_(c, sum_g, value=-2.0)
    grad_x = grad_weight = grad_bias = None
    if needs[1]:
        grad_weight = flat(torch.mul(invstd, sum2_g_xmu).mul_(0.5))
    if needs[2]:
        grad_bias = flat(sum_g)
    if needs[0]:
        if group is not None:  # dl/dmu and dl/dvar take the sums over the global batch
            sum_g, sum2_g_xmu = sum_over_ranks(torch.stack([sum_g, sum2_g_xmu]), group).unbind(0)
        a = invstd if weight is None else invstd.mul(_like_stat(weight, invstd))  # gamma * invstd
        k = torch.mul(a, sum2_g_xmu).mul_(invstd).mul_(invstd).mul_(-0.5 / m)  # 2/m dl/dvar
        # dl/dx = a g + k (x - mu) - a sum g / m, with mu = p + c:
        centre = pivot if c is None else c
        shift = torch.addcmul(torch.mul(k, centre), a, sum_g, value=1.0 / m).neg_()
        if c is None:
            _affine(rows, k, shift, out=buf)
        else:
            _affine(torch.sub(rows, pivot, out=buf), k, shift, out=buf)
        grad_x = buf.addcmul_(g, a)
    return grad_x, grad_weight, grad_bias


def _backward_differentiable(g, rows, weight, pivot, eps, count, group, needs):
    """The same gradient in out-of-place ops that recompute the statistics from x (they depend on
    x), so that autograd differentiates it again exactly and vmap can batch it."""
    m = max(count, 1)
    d = rows - pivot
    x_mu = d - sum_over_ranks(_channel_sum(d), group) / m
    var = sum_over_ranks(_channel_sum(x_mu * x_mu), group) / m
    invstd = torch.rsqrt(var + eps)
    sum_g = _channel_sum(g)
    sum_g_xmu = _channel_sum(g * x_mu)
    grad_x = grad_weight = grad_bias = None
    if needs[1]:
        grad_weight = flat(invstd * sum_g_xmu)
    if needs[2]:
        grad_bias = flat(sum_g)
    if needs[0]:
        if group is not None:
            sum_g, sum_g_xmu = sum_over_ranks(torch.stack([sum_g, sum_g_xmu]), group).unbind(0)
        a = invstd if weight is None else invstd * _like_stat(weight, invstd)
        grad_x = a * (g - sum_g / m - x_mu * (invstd * invstd * sum_g_xmu / m))
    return grad_x, grad_weight, grad_bias


def _jvp(rows, weight, pivot, c, invstd, count, group, rows_t, weight_t, bias_t):
    """dy = gamma * dx_hat + dgamma * x_hat + dbeta, with (means over the global batch)
    dmu = mean(dx), dvar = 2 mean((x - mu) dx), dx_hat = invstd * (dx - dmu - x_hat * invstd * dvar / 2)."""
    m = max(count, 1)
    x_mu = rows - pivot if c is None else rows - pivot - c
    x_hat = x_mu * invstd
    y_t = None
    if rows_t is not None:
        x_t = rows_t - sum_over_ranks(_channel_sum(rows_t), group) / m
        half_var_t = sum_over_ranks(_channel_sum(x_mu * x_t), group) / m
        x_hat_t = (x_t - x_hat * (invstd * half_var_t)) * invstd
        y_t = x_hat_t if weight is None else x_hat_t * _like_stat(weight, invstd)
    if weight_t is not None:
        term = x_hat * _like_stat(weight_t, invstd)
        y_t = term if y_t is None else y_t + term
    if bias_t is not None:
        term = _like_stat(bias_t, invstd)
        y_t = term + torch.zeros_like(rows) if y_t is None else y_t + term
    return y_t


class ExplicitBatchNorm(torch.autograd.Function):
    """Training-mode BN whose backward is the paper's backprop, written out by hand.

    apply(rows, weight, bias, eps, group, count) -> (y, batch mean, biased batch variance); the
    statistics are not differentiable (the module folds them into its running statistics).

    Paper, with g = dl/dy, invstd = (sigma_B^2 + eps)^(-1/2), sums over the m values of a channel:
      dl/dbeta   = sum g
      dl/dgamma  = sum g * x_hat = invstd * sum g * (x - mu)
      dl/dx_hat  = g * gamma
      dl/dvar    = sum dl/dx_hat * (x - mu) * (-1/2) * (sigma_B^2 + eps)^(-3/2)
                 = -1/2 * gamma * invstd^3 * sum g * (x - mu)
      dl/dmu     = -invstd * sum dl/dx_hat  +  dl/dvar * (-2/m) * sum (x - mu)
                 = -gamma * invstd * sum g        (sum (x - mu) = 0 exactly, as torch also drops it)
      dl/dx      = dl/dx_hat * invstd + dl/dvar * 2 (x - mu) / m + dl/dmu / m
                 = (gamma * invstd) * g + k * (x - mu) + dl/dmu / m,   k = 2/m * dl/dvar
    The seed's LaTeX prints the exponent as +3/2 and drops eps in dl/dmu; the -3/2 and eps above are
    what differentiating Algorithm 1 gives. With synchronized statistics, mu and sigma_B^2 depend on
    every rank's x, so dl/dvar and dl/dmu take the sums over the global batch; dl/dgamma and dl/dbeta
    stay local, as in nn.SyncBatchNorm, because DDP averages parameter gradients over the ranks.

    A first-order backward runs fused kernels (`_backward_fused`); a backward that autograd records
    (create_graph=True) or one with batched gradients (is_grads_batched) runs
    `_backward_differentiable`, so second derivatives are exact. `jvp` is the forward-mode
    derivative of Algorithm 1. This class is the eager one (an autograd.Function with setup_context
    costs ~80 us more per call); under torch.func transforms `explicit_train` uses
    `_FunctionalExplicitBatchNorm`, the same formulas with a generated vmap rule.
    """

    @staticmethod
    def forward(ctx, rows, weight, bias, eps, group, count):
        fused = plain(rows, weight, bias)
        y, mean, var, pivot, c, invstd = normalize(rows, weight, bias, eps, group, count, fused)
        ctx.save_for_backward(rows, weight)
        ctx.save_for_forward(rows, weight)
        ctx.mark_non_differentiable(mean, var)
        ctx.stats = pivot, c, invstd
        ctx.eps, ctx.group, ctx.count = eps, group, count
        return y, mean, var

    @staticmethod
    def backward(ctx, grad_y, _grad_mean, _grad_var):
        rows, weight = ctx.saved_tensors
        pivot, c, invstd = ctx.stats
        needs = ctx.needs_input_grad
        if not torch.is_grad_enabled() and plain(grad_y):
            grads = _backward_fused(grad_y, rows, weight, pivot, c, invstd, ctx.count, ctx.group, needs)
        else:
            grads = _backward_differentiable(
                grad_y, rows, weight, pivot, ctx.eps, ctx.count, ctx.group, needs
            )
        return *grads, None, None, None

    @staticmethod
    def jvp(ctx, rows_t, weight_t, bias_t, _eps_t, _group_t, _count_t):
        rows, weight = ctx.saved_tensors
        pivot, c, invstd = ctx.stats
        return (
            _jvp(rows, weight, pivot, c, invstd, ctx.count, ctx.group, rows_t, weight_t, bias_t),
            None,
            None,
        )


class _FunctionalExplicitBatchNorm(torch.autograd.Function):
    """ExplicitBatchNorm for torch.func transforms (vmap, grad, jvp, functional_call under them):
    setup_context style, with per-channel statistics as (non-differentiable) outputs, since under a
    transform nothing may be kept on ctx but what setup_context is given; always the
    differentiable formulas."""

    generate_vmap_rule = True

    @staticmethod
    def forward(rows, weight, bias, eps, group, count):
        y, mean, var, pivot, c, invstd = normalize(rows, weight, bias, eps, group, count, fused=False)
        return y, mean, var, torch.stack([flat(pivot), flat(c), flat(invstd)])

    @staticmethod
    def setup_context(ctx, inputs, output):
        rows, weight, _bias, eps, group, count = inputs
        _, mean, var, stats = output
        ctx.mark_non_differentiable(mean, var, stats)
        ctx.save_for_backward(rows, weight, stats)
        ctx.save_for_forward(rows, weight, stats)
        ctx.eps, ctx.group, ctx.count = eps, group, count

    @staticmethod
    def _unpack(ctx):
        rows, weight, stats = ctx.saved_tensors
        shape = (-1,) if rows.dim() == 2 else (1, -1, 1)
        pivot, c, invstd = (s.view(shape) for s in stats.unbind(0))
        return rows, weight, pivot, c, invstd

    @staticmethod
    def backward(ctx, grad_y, _grad_mean, _grad_var, _grad_stats):
        rows, weight, pivot, _c, _invstd = _FunctionalExplicitBatchNorm._unpack(ctx)
        grads = _backward_differentiable(
            grad_y, rows, weight, pivot, ctx.eps, ctx.count, ctx.group, ctx.needs_input_grad
        )
        return *grads, None, None, None

    @staticmethod
    def jvp(ctx, rows_t, weight_t, bias_t, _eps_t, _group_t, _count_t):
        rows, weight, pivot, c, invstd = _FunctionalExplicitBatchNorm._unpack(ctx)
        y_t = _jvp(rows, weight, pivot, c, invstd, ctx.count, ctx.group, rows_t, weight_t, bias_t)
        return y_t, None, None, None


# ---------------------------------------------------------------- entry points used by BatchNorm


def autograd_train(
    rows: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, group=None
) -> tuple[Tensor, Tensor, Tensor, int]:
    """Training-mode BN in tensor ops for autograd: (y, batch mean, biased batch var, count).

    Fused only where no graph is recorded (e.g. a no_grad forward); otherwise out-of-place
    differentiable ops, so double backward, forward AD and vmap all apply.
    """
    count = global_count(values_per_channel(rows), rows.device, group)
    fused = plain(rows, weight, bias) and not _records_graph(rows, weight, bias)
    y, mean, var, *_ = normalize(rows, weight, bias, eps, group, count, fused)
    return y, mean, var, count


def explicit_train(
    rows: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, group=None
) -> tuple[Tensor, Tensor, Tensor, int]:
    """Training-mode BN whose backward is ExplicitBatchNorm's: (y, batch mean, biased batch var, count)."""
    count = global_count(values_per_channel(rows), rows.device, group)
    if _peek_transform() is None:
        y, mean, var = ExplicitBatchNorm.apply(rows, weight, bias, eps, group, count)
    else:
        y, mean, var, _ = _FunctionalExplicitBatchNorm.apply(rows, weight, bias, eps, group, count)
    return y, mean, var, count


def eval_affine(
    x: Tensor, mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> Tensor:
    """Algorithm 2's affine map with (C,) statistics on an (N, C, ...) input, evaluated as
    (x - E[x]) * (gamma * invstd) + beta: centred first, so a large common offset is not amplified."""
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    if x.dim() > 2:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        mean, scale = mean.view(shape), scale.view(shape)
        bias = None if bias is None else bias.view(shape)
    if plain(x, weight, bias) and not _records_graph(x, weight, bias):
        d = torch.sub(x, mean)
        if bias is None:
            return d.mul_(scale)
        return torch.addcmul(bias, d, scale, out=d) if x.dim() == 2 else d.mul_(scale).add_(bias)
    y = (x - mean) * scale
    return y if bias is None else y + bias
