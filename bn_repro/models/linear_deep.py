"""A deep linear network (DLN), the second testbed of Santurkar et al. 2018 (arXiv 1805.11604,
section 2.2, Fig. 5): `depth` fully-connected layers with no nonlinearity, optionally a norm after
each hidden one. Without a norm the network computes a linear map of its input; it is the case where
the gradient-based ICS of BN and no-BN networks can be compared without nonlinearities in the way.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from bn_repro.models.mlp import MLP
from bn_repro.norms import NormFactory


class DeepLinear(MLP):
    """`depth` linear layers (depth - 1 hidden ones of `hidden_width` units, then the classifier): the
    Fig. 1 MLP with the identity as its nonlinearity, so each hidden layer is z = BN(Wu) with a norm and
    z = Wu + b without, and the probes hook the place where a nonlinearity would take z.

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
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"model.depth={depth!r} is not valid; expected an integer >= 1")
        if isinstance(hidden_width, bool) or not isinstance(hidden_width, int) or hidden_width < 1:
            raise ValueError(f"model.hidden_width={hidden_width!r} is not valid; expected an integer >= 1")
        hidden = [hidden_width] * (depth - 1)
        super().__init__(
            input_shape, num_classes, norm_layer, hidden, activation="identity", init_std=init_std
        )
        if init_std is None:
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, 0.0, module.in_features**-0.5)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
