"""One training step, the same for the app and the benchmarks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bn_repro.engine.fast_path import FastPath

loss_fn = F.cross_entropy


def train_step(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    x: torch.Tensor,
    y: torch.Tensor,
    fast: FastPath,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward (under the fast path's autocast), backward, optimizer and schedule step.

    Returns the detached loss and logits; nothing is read back to the host, so no device sync.
    """
    with fast.autocast():
        logits = net(x)
        loss = loss_fn(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return loss.detach(), logits.detach()
