"""norm=ghost_bn: Ghost Batch Normalization (Hoffer, Hubara & Soudry 2017, "Train longer, generalize
better", arXiv 1705.08741): in training, each virtual ("ghost") batch of `virtual_batch_size` examples of
a batch is normalised with its own statistics.

Each ghost batch is one call of torch's BatchNorm (the same kernel as norm=builtin) and updates the
running statistics in turn, as torch would if the ghost batches came one after another; so with
`virtual_batch_size` equal to the batch, norm=ghost_bn is norm=builtin exactly (outputs, gradients,
running statistics). Eval mode uses the running statistics, as BN does.
A batch that is not a multiple of `virtual_batch_size` is an error naming both numbers (our choice: a
ragged last ghost batch would have other statistics than the rest).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from bn_repro.norms.registry import EPS, MOMENTUM, NormConfigError, register_norm

__all__ = ["GhostBatchNorm", "ghost_bn"]


class GhostBatchNorm(_BatchNorm):
    """torch's BatchNorm over dim 1 of a 2-D to 5-D input, applied per ghost batch in training."""

    def __init__(self, num_features: int, virtual_batch_size: int, eps: float = 1e-5, momentum=0.1):
        if (
            isinstance(virtual_batch_size, bool)
            or not isinstance(virtual_batch_size, int)
            or virtual_batch_size < 1
        ):
            raise NormConfigError(f"norm.virtual_batch_size={virtual_batch_size!r}: expected an integer >= 1")
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.virtual_batch_size = virtual_batch_size

    def _check_input_dim(self, x: Tensor) -> None:
        if not 2 <= x.dim() <= 5:
            raise ValueError(f"expected a 2-D to 5-D input (N, C, ...), got shape {tuple(x.shape)}")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, virtual_batch_size={self.virtual_batch_size}"

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        n, size = x.shape[0], self.virtual_batch_size
        if n % size:
            raise ValueError(
                f"a batch of {n} examples is not a multiple of norm.virtual_batch_size={size}; choose a "
                f"virtual batch size that divides the batch (per replica under DDP)"
            )
        ghosts = [super(GhostBatchNorm, self).forward(chunk) for chunk in x.split(size)]
        return ghosts[0] if len(ghosts) == 1 else torch.cat(ghosts)


# synchronizes=False: Hoffer et al.'s ghost batches are per replica by construction (each replica
# normalises its own virtual batches; nothing is all-reduced).
@register_norm(
    "ghost_bn", label="Ghost BN ({virtual_batch_size})", synchronizes=False, population_stats=True,
    specs={"virtual_batch_size": "int >= 1", "eps": EPS, "momentum": MOMENTUM},
)  # fmt: skip
def ghost_bn(
    num_features: int,
    dim: int,
    *,
    virtual_batch_size: int = 128,
    eps: float = 1e-5,
    momentum: float | None = 0.1,
) -> GhostBatchNorm:
    return GhostBatchNorm(num_features, virtual_batch_size, eps=float(eps), momentum=momentum)
