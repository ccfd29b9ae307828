"""The seed notebook's BatchNorm (the D2L "dive into deep learning" code), kept as a reference baseline.

This is the implementation from seeds/000_3440cd5a8894fd8a.txt, rewritten with the same behaviour,
defects included on purpose. It exists for the benchmark (scripts/bench_norm.py) and for the tests
that document how it differs from torch.nn.BatchNorm; use bn_repro.norms.batchnorm.BatchNorm in models.

Its defects, none of them fixed here:
- Train/eval is picked by torch.is_grad_enabled(), not by module.training: model.eval() without
  no_grad still normalises with batch statistics and updates the moving ones, and a no_grad forward
  in training mode (an activation probe, say) silently normalises with the moving statistics.
- moving_mean / moving_var are plain tensor attributes, not buffers: they are missing from
  state_dict and are moved to the input's device by hand in forward (module.to() ignores them).
- The moving variance is the biased batch variance (torch tracks the unbiased one).
- momentum=0.9 weights the OLD value: moving = 0.9 * moving + 0.1 * batch (torch's momentum=0.1
  weights the new batch value, which is the same update spelled the other way round).
- Only 2-D (N, C) and 4-D (N, C, H, W) inputs; others fail an assert in training mode.
- Parameters are named gamma/beta and shaped (1, C) or (1, C, 1, 1), so state_dicts do not
  interchange with torch's.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def seed_batch_norm(
    x: Tensor,
    gamma: Tensor,
    beta: Tensor,
    moving_mean: Tensor,
    moving_var: Tensor,
    eps: float,
    momentum: float,
) -> tuple[Tensor, Tensor, Tensor]:
    if not torch.is_grad_enabled():
        x_hat = (x - moving_mean) / torch.sqrt(moving_var + eps)
    else:
        assert len(x.shape) in (2, 4)
        if len(x.shape) == 2:
            mean = x.mean(dim=0)
            var = ((x - mean) ** 2).mean(dim=0)
        else:
            mean = x.mean(dim=(0, 2, 3), keepdim=True)
            var = ((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
        x_hat = (x - mean) / torch.sqrt(var + eps)
        moving_mean = momentum * moving_mean + (1.0 - momentum) * mean
        moving_var = momentum * moving_var + (1.0 - momentum) * var
    y = gamma * x_hat + beta
    return y, moving_mean.data, moving_var.data


class SeedBatchNorm(nn.Module):
    """The notebook's `BatchNorm(num_features, num_dims)`; num_dims is 2 for (N, C), else (N, C, H, W)."""

    def __init__(self, num_features: int, num_dims: int) -> None:
        super().__init__()
        shape = (1, num_features) if num_dims == 2 else (1, num_features, 1, 1)
        self.gamma = nn.Parameter(torch.ones(shape))
        self.beta = nn.Parameter(torch.zeros(shape))
        self.moving_mean = torch.zeros(shape)
        self.moving_var = torch.ones(shape)

    def forward(self, x: Tensor) -> Tensor:
        if self.moving_mean.device != x.device:
            self.moving_mean = self.moving_mean.to(x.device)
            self.moving_var = self.moving_var.to(x.device)
        y, self.moving_mean, self.moving_var = seed_batch_norm(
            x, self.gamma, self.beta, self.moving_mean, self.moving_var, eps=1e-5, momentum=0.9
        )
        return y
