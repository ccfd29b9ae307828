"""Batch Normalization (Ioffe & Szegedy 2015, Algorithms 1 and 2) with torch.nn.BatchNorm semantics.

`BatchNorm` is one module for (N, C), (N, C, L), (N, C, H, W) and (N, C, D, H, W) inputs that matches
nn.BatchNorm1d/2d/3d (outputs, gradients, running statistics, state_dict names). With
`backward="explicit"` its training-mode gradient is the paper's hand-written backprop (section 3,
the formulas reproduced in seeds/000_3440cd5a8894fd8a.txt); with `backward="autograd"` it is plain
tensor ops that autograd differentiates.

`recompute_population_statistics` replaces the moving averages of every BN layer of a model by the
population statistics of Algorithm 2: E[x] = E_B[mu_B], Var[x] = m/(m-1) E_B[sigma_B^2].
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable
from numbers import Real

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["BatchNorm", "batch_norm_layers", "recompute_population_statistics"]

BACKWARDS = ("autograd", "explicit")
_BLAS_SUM_DTYPES = (torch.float32, torch.float64)


def _channel_rows(x: Tensor) -> tuple[Tensor, bool | None]:
    """View x as (R, C) or (N, C, M) so that per-channel reductions need no copy.

    A 2-D input is used as is. A channels-last input (channel dim densest in memory) becomes
    (N*spatial, C), so statistics are reductions over dim 0, the fast case on CPU. Anything else
    becomes (N, C, M) with M the product of the spatial dims, reduced over dims (0, 2); that is a
    view for contiguous inputs. The flag says which of the two layouts to undo in `_restore`
    (None: x itself).
    """
    if x.dim() == 2:
        return x, None
    if not x.is_contiguous() and x.movedim(1, -1).is_contiguous():
        return x.movedim(1, -1).reshape(-1, x.shape[1]), True
    return x.reshape(x.shape[0], x.shape[1], -1), False


def _restore(y: Tensor, like: Tensor, channels_last: bool | None) -> Tensor:
    if channels_last is None:
        return y
    if channels_last:
        return y.view(like.shape[0], *like.shape[2:], like.shape[1]).movedim(-1, 1)
    return y.view(like.shape)


def _reduce_dims(rows: Tensor) -> tuple[int, ...]:
    return (0,) if rows.dim() == 2 else (0, 2)


def _channel_sum(t: Tensor, dims: tuple[int, ...], weights: Tensor | None = None) -> Tensor:
    """Per-channel sum of (R, C) or (N, C, M) rows: shape (C,), or (1, C, 1) to broadcast on (N, C, M).

    Measured on a 2-core EPYC (torch 2.14 CPU): at (256, 1024), sum over dim 0 takes 40 us and the
    same sum as a matrix-vector product with ones (BLAS) 20-26 us; at (32, 64, 1024), summing dim 2
    then dim 0 takes 96 us against 119 us for one reduction over (0, 2), and the product with
    ones is slower (150 us). var_mean, for comparison, is ~30x slower than sum on both.
    `weights` is the (R,) vector from `_blas_weights` when the BLAS form applies (each row summed
    with that weight), else None. (C,) rather than (1, C) for 2-D rows spares a view per use of
    every per-channel tensor: on this CPU each tensor op called from Python costs ~2 us.
    """
    if dims == (0, 2):
        return t.sum(2, keepdim=True).sum(0, keepdim=True)
    if weights is not None:
        return weights @ t
    return t.sum(0)


def _blas_weights(rows: Tensor, value: float = 1.0) -> Tensor | None:
    """A constant vector for `_channel_sum`'s BLAS form, or None where that form does not apply.

    It is kept to 2-D float32/float64 rows on CPU outside autocast (autocast would run the product
    in bfloat16) and outside autograd: its backward materialises an outer product where sum's
    backward is a free expand, which made the autograd version slower overall.
    """
    if (
        rows.dim() == 2
        and rows.device.type == "cpu"
        and rows.dtype in _BLAS_SUM_DTYPES
        and not (rows.requires_grad and torch.is_grad_enabled())
        and not torch.is_autocast_enabled("cpu")
    ):
        return _constant_vector(rows.shape[0], value, rows.dtype)
    return None


@functools.lru_cache(maxsize=64)
def _constant_vector(length: int, value: float, dtype: torch.dtype) -> Tensor:
    # Read-only, made once per key: creating it costs as much as a small op. Made outside inference
    # mode so that it stays usable by autograd-recorded code later.
    with torch.inference_mode(False):
        return torch.full((length,), value, dtype=dtype)


def _like_stat(param: Tensor, stat: Tensor) -> Tensor:
    """A (C,) parameter or buffer shaped to broadcast like the per-channel statistic `stat`."""
    return param if stat.dim() == 1 else param.view(stat.shape)


def _flat(stat: Tensor) -> Tensor:
    return stat if stat.dim() == 1 else stat.view(-1)


def _sum_over_ranks(t: Tensor, group) -> Tensor:
    """Sum a per-channel tensor over the ranks of `group` (None: this process alone).

    Where autograd records the graph the all-reduce must be differentiable: its backward sums the
    gradients over the ranks, which is what each rank's share of the batch contributes to the rest.
    """
    if group is None:
        return t
    if t.requires_grad and torch.is_grad_enabled():
        return _AllReduceSum.apply(t, group)
    torch.distributed.all_reduce(t, group=group)
    return t


class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over ranks (torch.distributed.nn.functional.all_reduce is deprecated).

    Every rank's output is the sum of all ranks' inputs, so the gradient of each input is the sum
    of all ranks' output gradients: backward all-reduces too.
    """

    @staticmethod
    def forward(ctx, t: Tensor, group) -> Tensor:
        ctx.group = group
        total = t.clone()
        torch.distributed.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad: Tensor):
        total = grad.clone(memory_format=torch.contiguous_format)
        torch.distributed.all_reduce(total, group=ctx.group)
        return total, None


def _global_count(count: int, device: torch.device, group) -> int:
    if group is None:
        return count
    total = torch.tensor([count], dtype=torch.int64, device=device)
    torch.distributed.all_reduce(total, group=group)
    return int(total.item())


def _batch_stats(
    rows: Tensor, dims: tuple[int, ...], group=None, scratch: Tensor | None = None
) -> tuple[Tensor, Tensor, int]:
    """Per-channel batch mean, biased batch variance and element count of `rows`.

    Both statistics are per-channel sums divided by the count: sum(x), then sum((x - mean)^2)
    around that mean (two passes, for the same rounding behaviour as torch rather than the
    cancellation-prone E[x^2] - E[x]^2). They broadcast against `rows` (see `_channel_sum`).
    With a process `group` the count and both sums are all-reduced, so the statistics are those
    of the global batch (synchronized BN).

    The squares come from mse_loss(reduction="none"): one fused pass for (x - mean)^2 where
    subtract-then-square takes two (30 us against 39 us at (256, 1024), 277 against 369 at
    (32, 64, 1024)). `scratch` (a tensor like `rows`, outside autograd) receives them, so that the
    caller can reuse it as its output: one input-sized allocation fewer.
    """
    count = _global_count(rows.numel() // rows.shape[1], rows.device, group)
    mean = _channel_mean(rows, dims, count, group)
    if scratch is None:
        squares = F.mse_loss(rows, mean.expand_as(rows), reduction="none")
    else:
        squares = torch.ops.aten.mse_loss.out(rows, mean.expand_as(rows), 0, out=scratch)
    return mean, _channel_mean(squares, dims, count, group), count


def _channel_mean(t: Tensor, dims: tuple[int, ...], count: int, group) -> Tensor:
    """Per-channel sum of t over the (global) batch, divided by `count`."""
    weights = _blas_weights(t, 1.0 / count if group is None else 1.0)
    total = _channel_sum(t, dims, weights)
    if group is None and weights is not None:
        return total  # the division is folded into the BLAS vector: one op fewer
    return _sum_over_ranks(total, group) / count


def _scale_shift(t: Tensor, scale: Tensor, shift: Tensor, out: Tensor | None = None) -> Tensor:
    """t * scale + shift for per-channel scale and shift (broadcastable, size 1 on reduced dims).

    One fused addcmul when the channel dim is the innermost one; when scale and shift are
    broadcast along the innermost dim instead, addcmul is ~3x slower than a mul and an in-place add.
    """
    if scale.dim() == 1 or scale.shape[-1] != 1:
        return torch.addcmul(shift, t, scale, out=out)
    return torch.mul(t, scale, out=out).add_(shift)


def _affine_coefficients(
    mean: Tensor, invstd: Tensor, weight: Tensor | None, bias: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Per-channel (scale, shift) with gamma * (x - mean) * invstd + beta = x * scale + shift.

    BN applied as one multiply-add on x, the way torch's CPU kernel evaluates it: x - mean and
    x_hat are never materialised. The extra rounding, |mean * scale| * eps, is of the order of
    the rounding already present in x itself (|x| * eps).
    """
    scale = invstd if weight is None else invstd * _like_stat(weight, invstd)
    if bias is None:
        return scale, -mean * scale
    return scale, torch.addcmul(_like_stat(bias, invstd), mean, scale, value=-1.0)


class _ExplicitBatchNorm(torch.autograd.Function):
    """Training-mode BN whose backward is the paper's backprop, written out by hand.

    Inputs are per-channel rows from `_channel_rows`; the output is y. `on_stats(mean, var, count)`,
    if given, receives the batch mean, biased variance and element count (the module folds them
    into its running statistics) without making them autograd outputs.
    Forward and backward each allocate one input-sized tensor (y, dl/dx) and use it as scratch
    first. Saved for backward: x (which torch's BN saves too), mu, invstd and gamma * invstd.
    """

    @staticmethod
    def forward(ctx, rows: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, group, on_stats):
        dims = _reduce_dims(rows)
        y = torch.empty_like(rows)
        mean, var, count = _batch_stats(rows, dims, group, scratch=y)
        invstd = var.add(eps).rsqrt_()
        scale, shift = _affine_coefficients(mean, invstd, weight, bias)
        _scale_shift(rows, scale, shift, out=y)
        ctx.save_for_backward(rows, mean, invstd, scale)
        ctx.dims, ctx.count, ctx.group = dims, count, group
        if on_stats is not None:
            on_stats(mean, var, count)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: Tensor):
        rows, mean, invstd, gamma_invstd = ctx.saved_tensors
        dims, m, group = ctx.dims, ctx.count, ctx.group
        grad_x = grad_weight = grad_bias = None

        # Paper, with g = dl/dy, invstd = (sigma_B^2 + eps)^(-1/2), sums over the m values of a channel:
        #   dl/dbeta   = sum g
        #   dl/dgamma  = sum g * x_hat = invstd * sum g * (x - mu)
        #   dl/dx_hat  = g * gamma
        #   dl/dvar    = sum dl/dx_hat * (x - mu) * (-1/2) * (sigma_B^2 + eps)^(-3/2)
        #              = -1/2 * gamma * invstd^3 * sum g * (x - mu)
        #   dl/dmu     = -invstd * sum dl/dx_hat  +  dl/dvar * (-2/m) * sum (x - mu)
        #              = -gamma * invstd * sum g        (sum (x - mu) = 0 exactly, as torch also drops it)
        #   dl/dx      = dl/dx_hat * invstd + dl/dvar * 2 (x - mu) / m + dl/dmu / m
        #              = (gamma * invstd) * g + k * (x - mu) + dl/dmu / m,   k = 2/m * dl/dvar
        # The seed's LaTeX prints the exponent as +3/2 and drops eps in dl/dmu; the -3/2 and eps
        # above are what differentiating Algorithm 1 gives.
        # With synchronized statistics, mu and sigma_B^2 depend on every rank's x, so dl/dvar and
        # dl/dmu take the sums over the global batch; dl/dgamma and dl/dbeta stay local, as in
        # nn.SyncBatchNorm, because DDP averages parameter gradients over the ranks.
        ones = _blas_weights(grad_y)
        sum_g = local_sum_g = _channel_sum(grad_y, dims, ones)
        # g * (x - mu) is formed in the tensor that then receives dl/dx: one allocation.
        scratch = torch.sub(rows, mean).mul_(grad_y)
        sum_g_centered = _channel_sum(scratch, dims, ones)
        grad_gamma = invstd * sum_g_centered
        if ctx.needs_input_grad[0]:
            if group is not None:
                sum_g = _sum_over_ranks(sum_g.clone(), group)
                grad_gamma_global = invstd * _sum_over_ranks(sum_g_centered, group)
            else:
                grad_gamma_global = grad_gamma
            # k = -(gamma * invstd) * invstd * (invstd * sum g (x - mu)) / m, dl/dmu / m as above.
            neg_scale_over_m = gamma_invstd * (-1.0 / m)
            k = torch.mul(neg_scale_over_m, invstd).mul_(grad_gamma_global)
            grad_mean_over_m = torch.mul(neg_scale_over_m, sum_g)
            # k * (x - mu) + dl/dmu / m evaluated as k * x + (dl/dmu / m - k * mu), as forward
            # evaluates y; then + (gamma * invstd) * g.
            shift = grad_mean_over_m.addcmul_(k, mean, value=-1.0)
            grad_x = _scale_shift(rows, k, shift, out=scratch)
            grad_x.addcmul_(grad_y, gamma_invstd)
        if ctx.needs_input_grad[1]:
            grad_weight = _flat(grad_gamma)
        if ctx.needs_input_grad[2]:
            grad_bias = _flat(local_sum_g)
        return grad_x, grad_weight, grad_bias, None, None, None


class BatchNorm(nn.Module):
    """Batch Normalization over dim 1 of a 2-D to 5-D input, the semantics of nn.BatchNorm1d/2d/3d.

    Training mode (`self.training`, never the grad mode) normalises with the batch mean and biased
    variance and, with track_running_stats, updates running_mean and the unbiased running_var by
    `running = (1 - momentum) * running + momentum * batch` (momentum=None: cumulative average).
    Eval mode uses the running statistics, i.e. the affine map of Algorithm 2; without running
    statistics (track_running_stats=False) it uses batch statistics too.

    backward: "autograd" (plain tensor ops) or "explicit" (the paper's backprop formulas in a
    torch.autograd.Function). Only the training-mode gradient differs; eval mode is plain ops.
    """

    num_features: int
    eps: float
    momentum: float | None
    affine: bool
    track_running_stats: bool

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        backward: str = "autograd",
        *,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if backward not in BACKWARDS:
            raise ValueError(f"unknown backward {backward!r}; valid choices: {', '.join(BACKWARDS)}")
        if momentum is not None and (
            isinstance(momentum, bool) or not isinstance(momentum, Real) or not 0.0 <= momentum <= 1.0
        ):
            raise ValueError(f"momentum must be None or a number in [0, 1], got {momentum!r}")
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        self.backward = backward
        # Set to a torch.distributed process group for synchronized BN (bn_repro.distributed); not
        # part of the state_dict, so checkpoints stay interchangeable with nn.BatchNorm.
        self.process_group = None
        factory = {"device": device, "dtype": dtype}
        if affine:
            self.weight = nn.Parameter(torch.empty(num_features, **factory))
            self.bias = nn.Parameter(torch.empty(num_features, **factory))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1.0)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"track_running_stats={self.track_running_stats}, backward={self.backward!r}"
        )

    def _check_input(self, x: Tensor, batch_stats: bool) -> None:
        if not 2 <= x.dim() <= 5:
            raise ValueError(
                f"expected a 2-D to 5-D input (N, C, ...), got a {x.dim()}-D input of shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"expected {self.num_features} channels (num_features) in dim 1, got {x.shape[1]} "
                f"in an input of shape {tuple(x.shape)}"
            )
        if batch_stats and x.numel() // x.shape[1] == 1:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {x.size()}"
            )

    def forward(self, x: Tensor) -> Tensor:
        # As torch: batch statistics in training, and in eval when there are no running statistics.
        batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        self._check_input(x, batch_stats)
        # Like torch's BN, a bfloat16/float16 input (autocast) with float32 parameters is normalised
        # in float32 and returned in its own dtype.
        compute_dtype = self._compute_dtype(x)
        xc = x if compute_dtype is None else x.to(compute_dtype)
        y = self._batch_forward(xc) if batch_stats else self._affine_eval(xc)
        return y if compute_dtype is None else y.to(x.dtype)

    def _compute_dtype(self, x: Tensor) -> torch.dtype | None:
        reference = self.weight if self.weight is not None else self.running_mean
        if reference is None or reference.dtype == x.dtype:
            return None
        return torch.promote_types(x.dtype, reference.dtype)

    def _batch_forward(self, x: Tensor) -> Tensor:
        rows, channels_last = _channel_rows(x)
        # Synchronized statistics only in training: eval-mode batch statistics stay per process.
        group = self.process_group if self.training else None
        tracking = self.training and self.track_running_stats and self.num_batches_tracked is not None
        if self.backward == "explicit":
            on_stats = self._update_running_stats if tracking else None
            y = _ExplicitBatchNorm.apply(rows, self.weight, self.bias, self.eps, group, on_stats)
        else:
            y, mean, var, count = self._autograd_train(rows, group)
            if tracking:
                self._update_running_stats(mean.detach(), var.detach(), count)
        return _restore(y, x, channels_last)

    def _autograd_train(self, rows: Tensor, group=None) -> tuple[Tensor, Tensor, Tensor, int]:
        mean, var, count = _batch_stats(rows, _reduce_dims(rows), group)
        scale, shift = _affine_coefficients(mean, torch.rsqrt(var + self.eps), self.weight, self.bias)
        return _scale_shift(rows, scale, shift), mean, var, count

    def _affine_eval(self, x: Tensor) -> Tensor:
        # Algorithm 2: y = gamma / sqrt(Var + eps) * x + (beta - gamma * E[x] / sqrt(Var + eps)).
        invstd = torch.rsqrt(self.running_var + self.eps)
        scale, shift = _affine_coefficients(self.running_mean, invstd, self.weight, self.bias)
        if x.dim() > 2:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            scale, shift = scale.view(shape), shift.view(shape)
        return _scale_shift(x, scale, shift)

    def _update_running_stats(self, mean: Tensor, var: Tensor, count: int) -> None:
        # mean and var do not require grad, nor do the buffers, so no graph is recorded.
        self.num_batches_tracked.add_(1)
        if self.momentum is None:
            factor = 1.0 / float(self.num_batches_tracked)
        else:
            factor = self.momentum
        # running = (1 - f) running + f batch; n/(n-1) makes the biased batch variance unbiased.
        self.running_mean.lerp_(_flat(mean), factor)
        self.running_var.lerp_(_flat(var).mul(count / (count - 1)), factor)


def batch_norm_layers(model: nn.Module) -> list[nn.Module]:
    """The BN layers of `model` that keep running statistics (this module's BatchNorm and torch's)."""
    return [
        module
        for module in model.modules()
        if isinstance(module, (BatchNorm, _BatchNorm)) and module.running_mean is not None
    ]


def recompute_population_statistics(model: nn.Module, batches: Iterable, num_batches: int) -> nn.Module:
    """Set every BN layer's running statistics to the population statistics of Algorithm 2.

    Runs `num_batches` items of `batches` (input tensors, or tuples/lists whose first element is the
    input, already on the model's device) through `model` in training mode under no_grad. For each
    BN layer with running statistics (this module's BatchNorm and torch's BatchNorm1d/2d/3d and
    SyncBatchNorm) a forward pre-hook records the batch mean mu_B and the biased batch variance
    sigma_B^2 of the layer's input; afterwards

        running_mean = E_B[mu_B],   running_var = E_B[m/(m-1) sigma_B^2]   (m values per channel),

    which is m/(m-1) E_B[sigma_B^2] when every batch has the same size, and num_batches_tracked is
    the number of batches the layer saw. The statistics are those of the local process: under DDP
    each rank sees only its shard. Parameters, momentum and every module's training flag are left as
    they were. Raises ValueError when the model has no BN layer with running statistics, when
    num_batches < 1, or when `batches` runs out before num_batches (the model is then unchanged).
    Returns the model.
    """
    layers = batch_norm_layers(model)
    if not layers:
        raise ValueError("model has no BatchNorm layer with running statistics (track_running_stats=True)")
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
        raise ValueError(f"num_batches must be a positive int, got {num_batches!r}")

    sums = {layer: [0.0, 0.0, 0] for layer in layers}

    def record(layer: nn.Module, inputs: tuple) -> None:
        rows, _ = _channel_rows(inputs[0])
        if rows.dtype in (torch.float16, torch.bfloat16):
            rows = rows.float()
        mean, var, count = _batch_stats(rows, _reduce_dims(rows))
        acc = sums[layer]
        acc[0] = acc[0] + mean.view(-1).double()
        acc[1] = acc[1] + var.view(-1).double() * (count / (count - 1))
        acc[2] += 1

    # The training-mode forwards also move the running averages; on failure they are put back.
    saved = {layer: [t.clone() for t in _layer_stats(layer)] for layer in layers}
    flags = {module: module.training for module in model.modules()}
    handles = [layer.register_forward_pre_hook(record) for layer in layers]
    try:
        model.train()
        seen = 0
        with torch.no_grad():
            for batch in batches:
                model(batch[0] if isinstance(batch, (tuple, list)) else batch)
                seen += 1
                if seen == num_batches:
                    break
        if seen < num_batches:
            raise ValueError(f"batches ran out after {seen} of num_batches={num_batches} batches")
    except BaseException:
        _put_back(saved)
        raise
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in flags.items():
            module.training = flag

    with torch.no_grad():
        for layer, (mean_sum, var_sum, forwards) in sums.items():
            if forwards == 0:
                warnings.warn(
                    f"{type(layer).__name__} layer saw no input; its running statistics are unchanged",
                    stacklevel=2,
                )
                _put_back({layer: saved[layer]})
                continue
            layer.running_mean.copy_(mean_sum / forwards)
            layer.running_var.copy_(var_sum / forwards)
            if layer.num_batches_tracked is not None:
                layer.num_batches_tracked.fill_(forwards)
    return model


def _put_back(saved: dict[nn.Module, list[Tensor]]) -> None:
    with torch.no_grad():
        for layer, stats in saved.items():
            for buffer, old in zip(_layer_stats(layer), stats, strict=True):
                buffer.copy_(old)


def _layer_stats(layer: nn.Module) -> list[Tensor]:
    return [t for t in (layer.running_mean, layer.running_var, layer.num_batches_tracked) if t is not None]
