"""Batch Normalization (Ioffe & Szegedy 2015, Algorithm 1) with torch.nn.BatchNorm semantics.

`BatchNorm` is one module for (N, C), (N, C, L), (N, C, H, W) and (N, C, D, H, W) inputs that matches
nn.BatchNorm1d/2d/3d (outputs, gradients, running statistics, state_dict names). With
`backward="explicit"` its training-mode gradient is the paper's hand-written backprop (section 3, the
formulas of seeds/000_3440cd5a8894fd8a.txt); with `backward="autograd"` it is tensor ops that autograd
differentiates.

This file is the paper, readable line by line: `batch_statistics`, `reference_train` (Algorithm 1) and
`PaperBackward` (its backward). The module runs the same formulas through the fast kernels of
bn_repro/norms/fast_batchnorm.py by default (`impl="fast"`); `impl="reference"` runs the code here.
Algorithm 2 (population statistics) is bn_repro/norms/population.py.
"""

from __future__ import annotations

from numbers import Real

import torch
from torch import Tensor, nn
from torch.autograd import forward_ad

from bn_repro.norms import fast_batchnorm as fast
from bn_repro.norms.registry import EPS, MOMENTUM, register_norm
from bn_repro.norms.sync import global_count, sum_over_ranks

__all__ = ["BACKWARDS", "IMPLS", "BatchNorm", "PaperBackward", "batch_statistics", "reference_train"]

BACKWARDS = ("autograd", "explicit")
IMPLS = ("fast", "reference")


# ---------------------------------------------------------------- the paper's formulas, as written


def _reduced_dims(x: Tensor) -> list[int]:
    """Every dim but the channel dim: a channel's statistics pool the batch and spatial positions
    (section 3.2: the effective mini-batch of a feature map is m' = m * p * q)."""
    return [0, *range(2, x.dim())]


def _per_channel(param: Tensor | None, x: Tensor, default: float) -> Tensor | float:
    """gamma or beta shaped (1, C, 1, ...) to broadcast against x; without affine, 1 or 0."""
    if param is None:
        return default
    return param.view(1, -1, *([1] * (x.dim() - 2)))


def _batch_sum(t: Tensor, group) -> Tensor:
    """sum_{i=1..m} over the mini-batch (every rank's share of it under synchronized BN)."""
    return sum_over_ranks(t.sum(dim=_reduced_dims(t), keepdim=True), group)


def batch_statistics(x: Tensor, group=None) -> tuple[Tensor, Tensor, int]:
    """mu_B = 1/m sum x_i and sigma_B^2 = 1/m sum (x_i - mu_B)^2 per channel, and m."""
    m = global_count(fast.values_per_channel(x), x.device, group)
    mu = _batch_sum(x, group) / m
    var = _batch_sum((x - mu) ** 2, group) / m
    return mu, var, m


def reference_train(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, group=None
) -> tuple[Tensor, Tensor, Tensor, int]:
    """Algorithm 1: (y, mu_B, sigma_B^2, m); autograd differentiates it."""
    mu, var, m = batch_statistics(x, group)
    x_hat = (x - mu) / torch.sqrt(var + eps)
    y = _per_channel(weight, x, 1.0) * x_hat + _per_channel(bias, x, 0.0)
    return y, mu, var, m


class PaperBackward(torch.autograd.Function):
    """Algorithm 1 forward, and the gradient by the paper's chain rule (section 3), term by term.

    The backward is made of differentiable tensor ops on the saved input, so a second derivative
    (double backward) differentiates these formulas exactly; no op works in place, so
    torch.func.vmap can batch it (`generate_vmap_rule`). `jvp` is the forward-mode derivative of
    Algorithm 1, written the same way.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, group) -> Tensor:
        return reference_train(x, weight, bias, eps, group)[0]

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, weight, _bias, eps, group = inputs
        ctx.save_for_backward(x, weight)
        ctx.save_for_forward(x, weight)
        ctx.eps, ctx.group = eps, group

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        x, weight = ctx.saved_tensors
        eps, group = ctx.eps, ctx.group
        mu, var, m = batch_statistics(x, group)
        gamma = _per_channel(weight, x, 1.0)
        x_mu = x - mu
        inv_std = (var + eps) ** -0.5
        # The paper, with l the loss and sums over the m values of a channel:
        dl_dx_hat = grad_y * gamma
        dl_dvar = _batch_sum(dl_dx_hat * x_mu, group) * -0.5 * (var + eps) ** -1.5
        dl_dmu = _batch_sum(dl_dx_hat * -inv_std, group) + dl_dvar * _batch_sum(-2.0 * x_mu, group) / m
        dl_dx = dl_dx_hat * inv_std + dl_dvar * 2.0 * x_mu / m + dl_dmu / m
        # dl/dgamma = sum dl/dy * x_hat and dl/dbeta = sum dl/dy over this rank's share only: DDP
        # averages parameter gradients over the ranks itself (as with nn.SyncBatchNorm).
        dims = _reduced_dims(x)
        dl_dgamma = (grad_y * x_mu * inv_std).sum(dims) if ctx.needs_input_grad[1] else None
        dl_dbeta = grad_y.sum(dims) if ctx.needs_input_grad[2] else None
        return dl_dx, dl_dgamma, dl_dbeta, None, None

    @staticmethod
    def jvp(ctx, x_t: Tensor | None, weight_t: Tensor | None, bias_t: Tensor | None, _eps_t, _group_t):
        """Forward mode: Algorithm 1 differentiated along (dx, dgamma, dbeta), line by line."""
        x, weight = ctx.saved_tensors
        eps, group = ctx.eps, ctx.group
        mu, var, m = batch_statistics(x, group)
        x_mu = x - mu
        x_hat = x_mu * (var + eps) ** -0.5
        dx = torch.zeros_like(x) if x_t is None else x_t
        d_mu = _batch_sum(dx, group) / m
        d_var = _batch_sum(2.0 * x_mu * (dx - d_mu), group) / m
        d_x_hat = (dx - d_mu) * (var + eps) ** -0.5 - 0.5 * x_mu * (var + eps) ** -1.5 * d_var
        dy = _per_channel(weight, x, 1.0) * d_x_hat
        if weight_t is not None:
            dy = dy + _per_channel(weight_t, x, 0.0) * x_hat
        if bias_t is not None:
            dy = dy + _per_channel(bias_t, x, 0.0)
        return dy


def reference_explicit_train(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, group=None
) -> tuple[Tensor, Tensor, Tensor, int]:
    """Algorithm 1 with the paper's backward: (y, mu_B, sigma_B^2, m)."""
    with torch.no_grad():
        mu, var, m = batch_statistics(x, group)
    return PaperBackward.apply(x, weight, bias, eps, group), mu, var, m


def reference_eval(
    x: Tensor, mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> Tensor:
    """Inference with fixed statistics: gamma * (x - E[x]) / sqrt(Var[x] + eps) + beta."""
    shape = (1, -1, *([1] * (x.dim() - 2)))
    x_hat = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + eps)
    return _per_channel(weight, x, 1.0) * x_hat + _per_channel(bias, x, 0.0)


_TRAIN = {
    ("fast", "autograd"): fast.autograd_train,
    ("fast", "explicit"): fast.explicit_train,
    ("reference", "autograd"): reference_train,
    ("reference", "explicit"): reference_explicit_train,
}


# ---------------------------------------------------------------- the module

_HALF = (torch.float16, torch.bfloat16)
_DUAL_RUNNING_STATS = (
    "batch_norm is not differentiable wrt running_mean and running_var, they cannot have forward grad defined"
)


# torch's message for the same case (vmap over a training-mode forward that would update unbatched buffers).
_UNBATCHED_RUNNING_STATS = (
    "Batch norm got a batched tensor as input while the running_mean or running_var, which will be "
    "updated in place, were not batched."
)
_in_transform = torch._C._functorch.peek_interpreter_stack
_is_batched = torch._C._functorch.is_batchedtensor


def plain_eager() -> bool:
    return _in_transform() is None and forward_ad._current_level < 0


def _cast(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return t if t is None or t.dtype == dtype else t.to(dtype)


def _has_tangent(t: Tensor | None) -> bool:
    return t is not None and forward_ad.unpack_dual(t).tangent is not None


class _KeepStrides(torch.autograd.Function):
    """The identity on an empty tensor, whose gradient takes the tensor's strides.

    An empty tensor has no values, only a layout, and ops on empty tensors do not keep it: torch counts
    every empty tensor as contiguous (adding two empty channels_last tensors gives a contiguous one) and
    reshapes infer strides of their own for size-0 dims. torch's BatchNorm gives an empty batch's
    output and dl/dx the input's strides (channels_last included); `BatchNorm._batch_forward` gets
    the same from this, whichever backward and impl computes them.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.geometry = x.shape, x.stride()
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad.as_strided(*ctx.geometry)


def _fold_into(buffer: Tensor, stat: Tensor, factor: float) -> None:
    """buffer = (1 - factor) buffer + factor stat, evaluated in stat's (compute) dtype and stored in
    the buffer's own dtype (float16 running statistics are updated from float32 statistics)."""
    # Like torch's kernel, the update is not part of forward-mode AD: a dual buffer keeps its tangent.
    # (Out of place, then copied: under vmap, copy_ has a batching rule and lerp_ has none.)
    target = buffer.detach() if forward_ad._current_level >= 0 else buffer
    target.copy_(torch.lerp(buffer.to(stat.dtype), stat, factor))


class BatchNorm(nn.Module):
    """Batch Normalization over dim 1 of a 2-D to 5-D input, the semantics of nn.BatchNorm1d/2d/3d.

    Training mode (`self.training`, never the grad mode) normalises with the batch mean and biased
    variance and, with track_running_stats, updates running_mean and the unbiased running_var by
    `running = (1 - momentum) * running + momentum * batch` (momentum=None: cumulative average).
    Eval mode uses the running statistics, i.e. the affine map of Algorithm 2; without running
    statistics (track_running_stats=False) it uses batch statistics too.

    backward: "autograd" (tensor ops) or "explicit" (the paper's backprop formulas in a
    torch.autograd.Function). Only the training-mode gradient differs; eval mode is plain ops.
    Both give exact second derivatives, forward-mode AD, and work under torch.func (vmap, grad,
    functional_call).
    impl: "fast" (bn_repro/norms/fast_batchnorm.py) or "reference" (the readable code of this file).
    bias=False (keyword, as in torch 2.x): affine with gamma only.

    As torch's BatchNorm (2.x):
    - float16/bfloat16 input or parameters: statistics and normalisation are computed in float32 and
      the output is returned in the input's dtype; the running statistics keep the module's dtype.
      (The reference impl computes in float64.)
    - a batch with no values (N = 0 or a spatial size 0) gives an empty output, zero gradients for
      weight and bias, and leaves the running statistics as they are; num_batches_tracked still
      counts it, as torch's does. The output and dl/dx keep the input's memory format (channels_last
      and channels_last_3d included), as torch's do.
    - eps is checked at forward time: batch statistics need eps > 0 ("batch_norm eps must be
      positive during training"), running statistics eps >= 0; both ValueError.
    - forward-mode AD through eval mode refuses dual running statistics (RuntimeError).
    - state_dict version 2: a state_dict from before num_batches_tracked existed (version 1, or
      no version metadata) loads with num_batches_tracked kept (0 for a fresh module).

    Refused on purpose where torch accepts: a wrong channel count is a ValueError naming both counts
    (torch raises RuntimeError), and momentum outside [0, 1] (other than None) is a ValueError
    (torch takes any float, e.g. a negative momentum, and extrapolates).
    """

    _version = 2  # version 2 added num_batches_tracked (torch's _NormBase)

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
        impl: str = "fast",
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if backward not in BACKWARDS:
            raise ValueError(f"unknown backward {backward!r}; valid choices: {', '.join(BACKWARDS)}")
        if impl not in IMPLS:
            raise ValueError(f"unknown impl {impl!r}; valid choices: {', '.join(IMPLS)}")
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
        self.impl = impl
        # Set to a torch.distributed process group for synchronized BN (bn_repro.norms.sync); not
        # part of the state_dict, so checkpoints stay interchangeable with nn.BatchNorm.
        self.process_group = None
        factory = {"device": device, "dtype": dtype}
        if affine:
            self.weight = nn.Parameter(torch.empty(num_features, **factory))
            if bias:
                self.bias = nn.Parameter(torch.empty(num_features, **factory))
            else:
                self.register_parameter("bias", None)
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
            if self.bias is not None:
                nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"track_running_stats={self.track_running_stats}, backward={self.backward!r}"
            + (f", impl={self.impl!r}" if self.impl != "fast" else "")
            + (", bias=False" if self.affine and self.bias is None else "")
        )

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        # As torch's _NormBase: a state_dict from before version 2 has no num_batches_tracked; keep
        # the module's own count (0 for a module still on the meta device).
        version = local_metadata.get("version", None)
        if (version is None or version < 2) and self.track_running_stats:
            key = prefix + "num_batches_tracked"
            if key not in state_dict:
                state_dict[key] = (
                    self.num_batches_tracked
                    if self.num_batches_tracked is not None and self.num_batches_tracked.device.type != "meta"
                    else torch.tensor(0, dtype=torch.long)
                )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
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
        if batch_stats and fast.values_per_channel(x) == 1:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {x.size()}"
            )
        # As torch.nn.functional.batch_norm, at forward time: eps <= 0 would divide by a zero
        # variance with batch statistics.
        if batch_stats and not self.eps > 0:
            raise ValueError(f"batch_norm eps must be positive during training, but got {self.eps}")
        if self.eps < 0:
            raise ValueError(f"batch_norm eps must be non-negative, but got {self.eps}")

    def forward(self, x: Tensor) -> Tensor:
        # As torch: batch statistics in training, and in eval when there are no running statistics.
        batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        self._check_input(x, batch_stats)
        dtype = self._compute_dtype(x)
        weight, bias = _cast(self.weight, dtype), _cast(self.bias, dtype)
        xc = _cast(x, dtype)
        y = self._batch_forward(xc, weight, bias) if batch_stats else self._eval_forward(xc, weight, bias)
        return _cast(y, x.dtype)

    def _compute_dtype(self, x: Tensor) -> torch.dtype:
        """float32 for float16/bfloat16 (as torch's kernels accumulate), else the promoted dtype of the
        input and the parameters (an autocast bfloat16 input with float32 parameters runs in float32).
        The reference impl runs in float64: it is the yardstick the fast path is held to."""
        reference = self.weight if self.weight is not None else self.running_mean
        dtype = x.dtype if reference is None else torch.promote_types(x.dtype, reference.dtype)
        if self.impl == "reference":
            return torch.promote_types(dtype, torch.float64)
        return torch.float32 if dtype in _HALF else dtype

    def _batch_forward(self, x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        # Synchronized statistics only in training: eval-mode batch statistics stay per process.
        group = self.process_group if self.training else None
        # An empty batch: y and dl/dx get x's strides, i.e. its memory format, as torch's (_KeepStrides;
        # in plain eager mode, where strides are what a caller sees).
        empty = x.numel() == 0 and plain_eager()
        if empty:
            x = _KeepStrides.apply(x)
        train = _TRAIN[self.impl, self.backward]
        if self.impl == "fast":
            rows, channels_last = fast.channel_rows(x)
            y, mean, var, count = train(rows, weight, bias, self.eps, group)
            y = fast.restore(y, x, channels_last)
        else:
            y, mean, var, count = train(x, weight, bias, self.eps, group)
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self._update_running_stats(mean.detach(), var.detach(), count)
        return y.as_strided(x.shape, x.stride()) if empty else y

    def _eval_forward(self, x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        if forward_ad._current_level >= 0 and (
            _has_tangent(self.running_mean) or _has_tangent(self.running_var)
        ):
            if _has_tangent(x) or _has_tangent(weight) or _has_tangent(bias):
                raise RuntimeError(_DUAL_RUNNING_STATS)
        mean, var = _cast(self.running_mean, x.dtype), _cast(self.running_var, x.dtype)
        evaluate = fast.eval_affine if self.impl == "fast" else reference_eval
        return evaluate(x, mean, var, weight, bias, self.eps)

    def _update_running_stats(self, mean: Tensor, var: Tensor, count: int) -> None:
        # mean and var do not require grad, nor do the buffers, so no graph is recorded.
        self.num_batches_tracked.add_(1)  # torch counts an empty batch too
        if count == 0:
            return  # no values, no statistics: torch leaves the running ones as they are
        if self.momentum is None:
            factor = 1.0 / float(self.num_batches_tracked)
        else:
            factor = self.momentum
        # running = (1 - f) running + f batch; n/(n-1) makes the biased batch variance unbiased.
        mean, var = mean.reshape(-1), var.reshape(-1) * (count / max(count - 1, 1))
        buffers = [self.running_mean, self.running_var]
        if (
            _in_transform()
            and _is_batched(mean)
            and not (_is_batched(buffers[0]) and _is_batched(buffers[1]))
        ):
            raise RuntimeError(_UNBATCHED_RUNNING_STATS)
        if plain_eager() and buffers[0].dtype == mean.dtype == buffers[1].dtype:
            torch._foreach_lerp_(buffers, [mean, var], factor)  # one op for both
        else:
            _fold_into(buffers[0], mean, factor)
            _fold_into(buffers[1], var, factor)


@register_norm(
    "custom", label="BN (custom, {backward})", synchronizes=True, population_stats=True,
    choices={"backward": BACKWARDS, "impl": IMPLS}, specs={"eps": EPS, "momentum": MOMENTUM},
)  # fmt: skip
def custom(
    num_features: int,
    dim: int,
    *,
    eps: float = 1e-5,
    momentum: float | None = 0.1,
    backward: str = "autograd",
    impl: str = "fast",
) -> nn.Module:
    """This module's BatchNorm, for every input rank."""
    return BatchNorm(num_features, eps=float(eps), momentum=momentum, backward=backward, impl=impl)
