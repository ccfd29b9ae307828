"""The paper's section 4.1 network: fully-connected hidden layers, BN before each nonlinearity.

`dropout`: the rate of a Dropout after each hidden nonlinearity (section 3.4's "BN regularizes, reducing
the need for Dropout"; our placement). 0 (the default) builds no Dropout module at all, so the model, its
state_dict, its RNG draws and every run without dropout are those of the network before the option.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import nn

from bn_repro.models.activations import make_activation
from bn_repro.norms import NormFactory


class HiddenLayer(nn.Module):
    """z = g(BN(Wu)) with BN, z = g(Wu + b) without: beta subsumes the bias (paper section 3.2)."""

    def __init__(
        self, in_features: int, out_features: int, norm_layer: NormFactory, activation: str,
        dropout: float = 0.0,
    ):  # fmt: skip
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=norm_layer.identity)
        self.norm = norm_layer(out_features, 2)
        self.act = make_activation(activation)
        # At 0 no module (not a Dropout(0)): the same modules, state_dict and RNG draws as without it.
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.act(self.norm(self.linear(x)))
        return z if self.dropout is None else self.dropout(z)


class MLP(nn.Module):
    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        norm_layer: NormFactory,
        hidden: Sequence[int] = (100, 100, 100),
        activation: str = "sigmoid",
        init_std: float | None = 0.01,
        dropout: float = 0.0,
    ):
        super().__init__()
        if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
            raise ValueError(f"model.dropout={dropout!r} is not valid; expected a number in [0, 1)")
        widths = [math.prod(input_shape), *hidden]
        self.hidden = nn.ModuleList(
            HiddenLayer(w_in, w_out, norm_layer, activation, dropout)
            for w_in, w_out in itertools.pairwise(widths)
        )
        self.out = nn.Linear(widths[-1], num_classes)
        if init_std is not None:
            self._init_gaussian(init_std)

    def _init_gaussian(self, std: float) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.hidden:
            x = layer(x)
        return self.out(x)

    def probe_points(self) -> dict[str, nn.Module]:
        """The nonlinearity of each hidden layer; a probe records the input to it."""
        return {f"hidden{i + 1}": layer.act for i, layer in enumerate(self.hidden)}
