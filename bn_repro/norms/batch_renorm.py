"""norm=batch_renorm: Batch Renormalization (Ioffe 2017, arXiv 1702.03275).

In training, BN's output is corrected towards what the moving averages would give:

    r = clip(sigma_B / sigma, 1/r_max, r_max),   d = clip((mu_B - mu) / sigma, -d_max, d_max)
    y = gamma * (x_hat * r + d) + beta,          sigma = sqrt(running_var + eps), sigma_B likewise

with r and d treated as constants in the backward (the paper's stop-gradient). mu and sigma are the
moving averages (torch's convention: running = (1 - momentum) running + momentum batch); inference
uses them, as BN does. The bounds relax over training as in the paper: plain BN (r_max = 1, d_max = 0)
for the first `start_steps` training steps, then linearly to `r_max` at step `r_max_at` and to `d_max`
at step `d_max_at`. The paper's ImageNet schedule is 5k / 40k / 25k steps (r_max 3, d_max 5); our
defaults are a tenth of it (500 / 4000 / 2500), for CPU-sized runs.

gamma * (x_hat * r + d) + beta is computed as torch's BN with weight gamma * r and bias gamma * d +
beta: one call of torch's kernel, which also updates the running statistics. With r_max = 1 and
d_max = 0 the weight and bias are gamma and beta exactly, so the layer is norm=builtin exactly
(outputs, gradients, running statistics). The step counter is num_batches_tracked, so checkpoints
carry the schedule's position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from bn_repro.norms.registry import EPS, MOMENTUM, NormConfigError, register_norm

__all__ = ["BatchRenorm", "batch_renorm"]


def _check(name: str, value, low: float, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value < low:
        expected = f"an integer >= {low}" if integer else f"a number >= {low}"
        raise NormConfigError(f"norm.{name}={value!r}: expected {expected}")


class BatchRenorm(_BatchNorm):
    """Batch Renormalization over dim 1 of a 2-D to 5-D input; needs running statistics."""

    def __init__(
        self,
        num_features: int,
        *,
        r_max: float = 3.0,
        d_max: float = 5.0,
        start_steps: int = 500,
        r_max_at: int = 4000,
        d_max_at: int = 2500,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
    ):
        _check("r_max", r_max, 1)
        _check("d_max", d_max, 0)
        for name, value in (("start_steps", start_steps), ("r_max_at", r_max_at), ("d_max_at", d_max_at)):
            _check(name, value, 0, integer=True)
        for name, value in (("r_max_at", r_max_at), ("d_max_at", d_max_at)):
            if value < start_steps:
                raise NormConfigError(
                    f"norm.{name}={value}: is before norm.start_steps={start_steps}; expected a step >= it "
                    f"(the bounds relax after it)"
                )
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.r_max, self.d_max = float(r_max), float(d_max)
        self.start_steps, self.r_max_at, self.d_max_at = start_steps, r_max_at, d_max_at

    def _check_input_dim(self, x: Tensor) -> None:
        if not 2 <= x.dim() <= 5:
            raise ValueError(f"expected a 2-D to 5-D input (N, C, ...), got shape {tuple(x.shape)}")

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, r_max={self.r_max}, d_max={self.d_max}, "
            f"start_steps={self.start_steps}, r_max_at={self.r_max_at}, d_max_at={self.d_max_at}"
        )

    def bounds(self, step: int) -> tuple[float, float]:
        """(r_max, d_max) in force at training step `step` (1 for the first)."""

        def relaxed(final: float, plain: float, at: int) -> float:
            if step <= self.start_steps:
                return plain
            if step >= at:
                return final
            return plain + (final - plain) * (step - self.start_steps) / (at - self.start_steps)

        return relaxed(self.r_max, 1.0, self.r_max_at), relaxed(self.d_max, 0.0, self.d_max_at)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        self._check_input_dim(x)
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        r_max, d_max = self.bounds(int(self.num_batches_tracked))
        with torch.no_grad():  # r and d are constants for the backward (the paper's stop-gradient)
            dims = [0, *range(2, x.dim())]
            var_b, mu_b = torch.var_mean(x.float(), dim=dims, unbiased=False)
            sigma = torch.sqrt(self.running_var.float() + self.eps)
            r = (torch.sqrt(var_b + self.eps) / sigma).clamp(1.0 / r_max, r_max).to(self.running_var.dtype)
            d = ((mu_b - self.running_mean.float()) / sigma).clamp(-d_max, d_max).to(self.running_var.dtype)
        gamma = self.weight if self.weight is not None else torch.ones_like(r)
        beta = self.bias if self.bias is not None else torch.zeros_like(d)
        return F.batch_norm(
            x, self.running_mean, self.running_var, gamma * r, gamma * d + beta, True, factor, self.eps
        )


# Under DDP the batch statistics would have to be all-reduced before r and d are formed; this layer
# does not do that, so DDP runs refuse it rather than renormalise with per-replica statistics silently.
def _refuse_under_ddp(layer, device):
    raise RuntimeError(
        "norm=batch_renorm does not synchronize its batch statistics across processes; run it in one "
        "process, or use norm=custom (synchronized BN) or norm=ghost_bn (per-replica by design) under DDP"
    )


@register_norm(
    "batch_renorm", label="Batch Renorm", synchronizes=_refuse_under_ddp, population_stats=True,
    specs={"r_max": "number >= 1", "d_max": "number >= 0", "start_steps": "int >= 0", "r_max_at": "int >= 0",
           "d_max_at": "int >= 0", "eps": EPS, "momentum": MOMENTUM},
)  # fmt: skip
def batch_renorm(
    num_features: int,
    dim: int,
    *,
    r_max: float = 3.0,
    d_max: float = 5.0,
    start_steps: int = 500,
    r_max_at: int = 4000,
    d_max_at: int = 2500,
    eps: float = 1e-5,
    momentum: float | None = 0.1,
) -> BatchRenorm:
    return BatchRenorm(
        num_features, r_max=r_max, d_max=d_max, start_steps=start_steps, r_max_at=r_max_at,
        d_max_at=d_max_at, eps=float(eps), momentum=momentum,
    )  # fmt: skip
