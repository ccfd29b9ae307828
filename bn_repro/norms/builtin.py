"""norm=builtin: torch.nn.BatchNorm1d/2d/3d, picked by the input rank; SyncBatchNorm under DDP on CUDA."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from bn_repro.norms.registry import EPS, MOMENTUM, register_norm

_TORCH_BN = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}


def to_sync_batchnorm(layer: nn.Module, device: torch.device) -> nn.Module:
    """nn.SyncBatchNorm needs CUDA; on the CPU the layer keeps per-replica statistics (with a warning)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(layer)
    warnings.warn(
        "nn.SyncBatchNorm needs CUDA: on the CPU built-in BN normalises each replica's share of the "
        "batch on its own. Use norm=custom for synchronized statistics on the CPU.",
        stacklevel=2,
    )
    return layer


@register_norm(
    "builtin", label="BN (builtin)", synchronizes=to_sync_batchnorm, population_stats=True,
    specs={"eps": EPS, "momentum": MOMENTUM},
)  # fmt: skip
def builtin(num_features: int, dim: int, *, eps: float = 1e-5, momentum: float | None = 0.1) -> nn.Module:
    if dim not in _TORCH_BN:
        raise ValueError(f"norm=builtin takes 2-D to 5-D inputs, got dim={dim}")
    return _TORCH_BN[dim](num_features, eps=float(eps), momentum=momentum)
