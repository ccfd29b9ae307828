"""A deep linear network (DLN), the second testbed of Santurkar et al. 2018 (arXiv 1805.11604,
section 2.2, Fig. 5): `depth` fully-connected layers with no nonlinearity, optionally a norm after
each hidden one. Without a norm the network computes a linear map of its input; it is the case where
the gradient-based ICS of BN and no-BN networks can be compared without nonlinearities in the way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from bn_repro.norms import NormFactory


class LinearLayer(nn.Module):
    """z = BN(Wu) with a norm, z = Wu + b without; `point` stands where a nonlinearity would be, so
    probes (the activation probe, ics_distribution) can hook the input it would see."""

    def __init__(self, in_features: int, out_features: int, norm_layer: NormFactory):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=norm_layer.identity)
        self.norm = norm_layer(out_features, 2)
        self.point = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point(self.norm(self.linear(x)))


class DeepLinear(nn.Module):
    """`depth` linear layers (depth - 1 hidden ones of `hidden_width` units, then the classifier).

    The hidden width is `hidden_width`, not `width`: in this package `model.width` multiplies channel
    counts of conv nets (0.25 in smoke tests), while a DLN's width is a unit count.
    init_std: std of the Gaussian weights; None, 1/sqrt(fan_in) (our choice: it keeps the variance of
    a linear map's output equal to its input's, so 25 layers neither explode nor vanish at the start).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        norm_layer: NormFactory,
        depth: int = 25,
        hidden_width: int = 100,
        init_std: float | None = None,
    ):
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"model.depth={depth!r} is not valid; expected an integer >= 1")
        if isinstance(hidden_width, bool) or not isinstance(hidden_width, int) or hidden_width < 1:
            raise ValueError(f"model.hidden_width={hidden_width!r} is not valid; expected an integer >= 1")
        widths = [math.prod(input_shape), *([hidden_width] * (depth - 1))]
        self.hidden = nn.ModuleList(
            LinearLayer(w_in, w_out, norm_layer) for w_in, w_out in zip(widths, widths[1:], strict=False)
        )
        self.out = nn.Linear(widths[-1], num_classes)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                std = init_std if init_std is not None else module.in_features**-0.5
                nn.init.normal_(module.weight, 0.0, std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.hidden:
            x = layer(x)
        return self.out(x)

    def probe_points(self) -> dict[str, nn.Module]:
        """Each hidden layer's output (after its norm), at the place a nonlinearity would take it."""
        return {f"layer{i + 1}": layer.point for i, layer in enumerate(self.hidden)}
