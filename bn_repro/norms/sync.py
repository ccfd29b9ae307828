"""Norm statistics under DDP: the differentiable sums over ranks, and one rule per registry entry.

`synchronize(model, device)` applies each norm layer's registry rule (`synchronizes`): layers that
all-reduce their statistics themselves get the world process group; layers with a converter are
replaced by what it returns (torch's BN -> nn.SyncBatchNorm on CUDA); the others keep per-replica
statistics.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from bn_repro.norms import registry


def sum_over_ranks(t: Tensor, group) -> Tensor:
    """Sum a per-channel tensor over the ranks of `group` (None: this process alone).

    Where autograd records the graph the all-reduce must be differentiable: its backward sums the
    gradients over the ranks, which is what each rank's share of the batch contributes to the rest.
    """
    if group is None:
        return t
    if t.requires_grad and torch.is_grad_enabled():
        return _AllReduceSum.apply(t, group)
    dist.all_reduce(t, group=group)
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
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad: Tensor):
        # The backward is itself a differentiable sum over ranks, so a double backward is exact too.
        return _AllReduceSum.apply(grad.contiguous(), ctx.group), None


def global_count(count: int, device: torch.device, group) -> int:
    """The number of values per channel over every rank of `group`."""
    if group is None:
        return count
    total = torch.tensor([count], dtype=torch.int64, device=device)
    dist.all_reduce(total, group=group)
    return int(total.item())


def synchronize(model: nn.Module, device: torch.device) -> nn.Module:
    """Apply every norm layer's registry rule for DDP; returns the model (layers replaced in place)."""
    for parent in list(model.modules()):
        for child_name, layer in list(parent.named_children()):
            kind = registry.kind_of(layer)
            if kind is None:
                continue
            rule = registry.get(kind).synchronizes
            if rule is True:
                layer.process_group = dist.group.WORLD
            elif callable(rule):
                replacement = rule(layer, device)
                if replacement is not layer:
                    setattr(parent, child_name, registry.tag(replacement, kind))
    return model
