"""norm=groupnorm (Wu & He 2018): each example's channels split into `groups`, normalised per group.

torch's nn.GroupNorm, for (N, C) and (N, C, ...) input alike. No batch statistics: training and eval
compute the same function, and DDP has nothing to share.
"""

from __future__ import annotations

from torch import nn

from bn_repro.norms.registry import EPS, NormConfigError, register_norm


@register_norm(
    "groupnorm", label="GroupNorm ({groups} groups)", synchronizes=False, population_stats=False,
    specs={"groups": "int >= 1", "eps": EPS},
)  # fmt: skip
def groupnorm(num_features: int, dim: int, *, groups: int = 32, eps: float = 1e-5) -> nn.Module:
    # Our choice of default: the paper's G = 32; a layer it does not divide is an error naming both.
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise NormConfigError(f"norm.groups={groups!r}: expected an integer >= 1")
    if num_features % groups:
        raise NormConfigError(
            f"norm.groups={groups}: does not divide a layer's {num_features} channels; expected a divisor "
            f"of every normalised layer's width (e.g. norm.groups=1 for LayerNorm-like, or {num_features})"
        )
    return nn.GroupNorm(groups, num_features, eps=float(eps))
