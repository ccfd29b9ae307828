"""norm=layernorm (Ba, Kiros & Hinton 2016): each example normalised over all of its features.

For (N, C) input this is torch's nn.LayerNorm(C); for feature maps, statistics over (C, H, W) with a
per-channel gamma and beta, as in Wu & He 2018 (GroupNorm with one group), not nn.LayerNorm over
(H, W) alone. No batch statistics: training and eval compute the same function, and DDP has nothing
to share.
"""

from __future__ import annotations

from torch import nn

from bn_repro.norms.registry import EPS, register_norm


@register_norm("layernorm", label="LayerNorm", synchronizes=False, population_stats=False, specs={"eps": EPS})
def layernorm(num_features: int, dim: int, *, eps: float = 1e-5) -> nn.Module:
    if dim == 2:
        return nn.LayerNorm(num_features, eps=float(eps))
    return nn.GroupNorm(1, num_features, eps=float(eps))
