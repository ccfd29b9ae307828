"""A VGG-style convnet (Simonyan & Zisserman 2015), the main testbed of Santurkar et al. 2018 (arXiv
1805.11604, section 2: "standard" VGG against VGG with BN): stacks of 3x3 convolutions, each followed by
the norm and a ReLU, max-pooling between stacks, and a small fully-connected head.

For 28x28x1 (MNIST, Fashion-MNIST) and 32x32x3 (CIFAR-10) inputs: pooling rounds up (ceil_mode), so
five pools take 32 to 1 and 28 to 1 alike. `width` multiplies every channel and head unit count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from bn_repro.norms import NormFactory

POOL = "M"
# Channel counts per 3x3 conv and "M" for a 2x2 max-pool: the VGG-11/13/16/19 of the VGG paper (A, B, D, E).
CONFIGS: dict[str, tuple] = {
    "vgg11": (64, POOL, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL),
    "vgg13": (64, 64, POOL, 128, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL),
    "vgg16": (64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512, POOL, 512, 512, 512, POOL),
    "vgg19": (64, 64, POOL, 128, 128, POOL, 256, 256, 256, 256, POOL, 512, 512, 512, 512, POOL,
              512, 512, 512, 512, POOL),
}  # fmt: skip


def _scaled(count: int, width: float) -> int:
    return max(1, round(count * width))


class ConvNormReLU(nn.Module):
    """relu(BN(conv(x))) with a norm, relu(conv(x) + b) without: BN's beta replaces the bias."""

    def __init__(self, c_in: int, c_out: int, norm_layer: NormFactory):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=norm_layer.identity)
        self.norm = norm_layer(c_out, 4)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class LinearNormReLU(nn.Module):
    """The head's hidden layers: relu(BN(Wu)), or relu(Wu + b) without a norm."""

    def __init__(self, in_features: int, out_features: int, norm_layer: NormFactory):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=norm_layer.identity)
        self.norm = norm_layer(out_features, 2)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.linear(x)))


class VGG(nn.Module):
    """config: one of CONFIGS (vgg11 by default, our choice: the cheapest); width: multiplies channel
    and head unit counts (1.0 is the VGG paper's); head: the hidden units of the fully-connected head
    before the classifier (our choice: one layer of 512, as common CIFAR VGGs; [] for none)."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        norm_layer: NormFactory,
        config: str = "vgg11",
        width: float = 1.0,
        head: Sequence[int] = (512,),
    ):
        super().__init__()
        if config not in CONFIGS:
            raise ValueError(f"unknown model.config {config!r}; valid choices: {', '.join(CONFIGS)}")
        if isinstance(width, bool) or not isinstance(width, int | float) or not width > 0:
            raise ValueError(f"model.width={width!r} is not valid; expected a number > 0")
        if len(input_shape) != 3:
            raise ValueError(f"VGG takes (C, H, W) images, got input_shape={tuple(input_shape)}")
        channels, height, width_px = input_shape
        layers: list[nn.Module] = []
        for item in CONFIGS[config]:
            if item == POOL:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
                height, width_px = math.ceil(height / 2), math.ceil(width_px / 2)
            else:
                layers.append(ConvNormReLU(channels, _scaled(item, width), norm_layer))
                channels = layers[-1].conv.out_channels
        self.features = nn.Sequential(*layers)
        widths = [channels * height * width_px, *(_scaled(units, width) for units in head)]
        self.head = nn.ModuleList(
            LinearNormReLU(w_in, w_out, norm_layer) for w_in, w_out in zip(widths, widths[1:], strict=False)
        )
        self.out = nn.Linear(widths[-1], num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's VGG initialisation (He for the ReLU convolutions, small Gaussian for the head).
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
            else:
                continue
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).flatten(1)
        for layer in self.head:
            x = layer(x)
        return self.out(x)

    def probe_points(self) -> dict[str, nn.Module]:
        """The ReLU of each conv layer (conv1, conv2, ...) and each head layer (fc1, ...), in depth order."""
        convs = [m for m in self.features if isinstance(m, ConvNormReLU)]
        points = {f"conv{i + 1}": layer.act for i, layer in enumerate(convs)}
        points.update({f"fc{i + 1}": layer.act for i, layer in enumerate(self.head)})
        return points
