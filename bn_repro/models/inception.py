"""A small BN-Inception-like convnet for 32x32 images: the network of the paper's Fig. 2 and 3, scaled down.

The paper's network (section 4.2) is GoogLeNet with BN before every nonlinearity, 5x5 convolutions
replaced by two 3x3 ones ("double 3x3"), and stride-2 "reduction" modules between the stages. This one
keeps those module types with about half the channels of BN-Inception's stages 3 to 5 and a one-conv
stem (CIFAR images are 32x32, not 224x224): about 1.9M parameters at width 1.

    stem      3x3 conv, max pool /2 (+ LRN for the no-BN "Inception" baseline)     32 -> 16
    inc3a/b   1x1 | 1x1>3x3 | 1x1>3x3>3x3 | avg pool>1x1                          16
    inc3c     1x1>3x3/2 | 1x1>3x3>3x3/2 | max pool/2 (reduction)                   16 -> 8
    inc4a/b, inc4c (reduction)                                                    8 -> 4
    inc5a/b   (inc5b projects a max pool, as BN-Inception's 5b)                   4
    global average pool, dropout, linear

Every conv is z = g(BN(Wu)) with BN (the conv bias is dropped: beta subsumes it, paper section 3.2) and
z = g(Wu + b) without. The spatial sizes follow the input (28x28 MNIST gives 14, 7, 4), and the
channel count of the input is taken from the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from bn_repro.models.activations import make_activation
from bn_repro.norms import NormFactory

# Channel counts per module; the branch reductions ("r") are the 1x1 convs that feed a 3x3 conv.
# Our choice: about half of BN-Inception's (Ioffe & Szegedy 2015, appendix table) at each stage.
STEM_CHANNELS = 64


class InceptionSpec(NamedTuple):
    n1x1: int  # 0: no 1x1 branch (the reduction modules)
    n3x3r: int
    n3x3: int
    nd3x3r: int
    nd3x3: int
    pool: str  # "avg" | "max": pool then a 1x1 projection; "pass": stride-2 max pool passed through
    npool: int  # channels of the pool projection (unused for "pass")
    stride: int


MODULES: dict[str, InceptionSpec] = {
    "inc3a": InceptionSpec(32, 32, 32, 32, 48, "avg", 16, 1),
    "inc3b": InceptionSpec(32, 32, 48, 32, 48, "avg", 32, 1),
    "inc3c": InceptionSpec(0, 64, 80, 32, 48, "pass", 0, 2),
    "inc4a": InceptionSpec(112, 32, 48, 48, 64, "avg", 64, 1),
    "inc4b": InceptionSpec(96, 48, 64, 48, 64, "avg", 64, 1),
    "inc4c": InceptionSpec(0, 64, 96, 64, 96, "pass", 0, 2),
    "inc5a": InceptionSpec(176, 96, 160, 80, 112, "avg", 64, 1),
    "inc5b": InceptionSpec(176, 96, 160, 96, 112, "max", 64, 1),
}


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width)) if channels else 0


class ConvNorm(nn.Module):
    """Conv then BN (or conv with bias when norm.kind is none): the pre-activation Wu (+ b)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, norm_layer: NormFactory):
        super().__init__()
        self.conv = nn.Conv2d(
            c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=norm_layer.identity
        )
        self.norm = norm_layer(c_out, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


def _branch(widths: Sequence[int], kernels: Sequence[int], stride: int, norm_layer, activation: str):
    """ConvNorm layers with a nonlinearity between them; the last one's is the module's shared `act`."""
    layers: list[nn.Module] = []
    for i, kernel in enumerate(kernels):
        last = i == len(kernels) - 1
        layers.append(ConvNorm(widths[i], widths[i + 1], kernel, stride if last else 1, norm_layer))
        if not last:
            layers.append(make_activation(activation))
    return nn.Sequential(*layers)


class InceptionModule(nn.Module):
    """Parallel branches concatenated along channels.

    The branches end in pre-activations; one `act` is applied to their concatenation (the same as one
    nonlinearity per branch, since it is elementwise), so the probe on `act` sees every output unit of
    the module. A reduction module's max-pool branch carries already activated values and joins after.
    """

    def __init__(self, c_in: int, spec: InceptionSpec, norm_layer, activation: str, width: float):
        super().__init__()
        n = {key: _scaled(getattr(spec, key), width) for key in ("n1x1", "n3x3r", "n3x3", "nd3x3r", "nd3x3")}
        s = spec.stride
        branches = []
        if n["n1x1"]:
            branches.append(_branch([c_in, n["n1x1"]], [1], 1, norm_layer, activation))
        branches.append(_branch([c_in, n["n3x3r"], n["n3x3"]], [1, 3], s, norm_layer, activation))
        double = [c_in, n["nd3x3r"], n["nd3x3"], n["nd3x3"]]
        branches.append(_branch(double, [1, 3, 3], s, norm_layer, activation))
        if spec.pool == "pass":
            self.passthrough: nn.Module | None = nn.MaxPool2d(3, stride=s, padding=1)
            pool_out = c_in
        else:
            self.passthrough = None
            pool = (
                nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
                if spec.pool == "avg"
                else nn.MaxPool2d(3, stride=1, padding=1)
            )
            npool = _scaled(spec.npool, width)
            branches.append(nn.Sequential(pool, ConvNorm(c_in, npool, 1, 1, norm_layer)))
            pool_out = npool
        self.branches = nn.ModuleList(branches)
        self.act = make_activation(activation)
        self.out_channels = n["n1x1"] + n["n3x3"] + n["nd3x3"] + pool_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(torch.cat([branch(x) for branch in self.branches], dim=1))
        if self.passthrough is not None:
            out = torch.cat([out, self.passthrough(x)], dim=1)
        return out


class Stem(nn.Module):
    def __init__(self, c_in: int, c_out: int, norm_layer, activation: str, lrn: bool):
        super().__init__()
        self.conv = ConvNorm(c_in, c_out, 3, 1, norm_layer)
        self.act = make_activation(activation)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        # GoogLeNet normalises after its first pool with LRN (size 5, alpha 1e-4, beta 0.75, Caffe's k=1);
        # the BN paper removes it from the accelerated BN networks (section 4.2.1).
        self.lrn = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0) if lrn else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lrn(self.pool(self.act(self.conv(x))))


class Inception(nn.Module):
    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        norm_layer: NormFactory,
        activation: str = "relu",
        width: float = 1.0,
        dropout: float = 0.0,
        lrn: bool = False,
    ):
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, (int, float)) or width <= 0:
            raise ValueError(f"model.width={width!r} is not valid; expected a number > 0")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"model.dropout={dropout!r} is not valid; expected a number in [0, 1)")
        if not isinstance(lrn, bool):
            raise ValueError(f"model.lrn={lrn!r} is not valid; expected true or false")
        if len(input_shape) != 3:
            raise ValueError(f"the inception model takes (C, H, W) images, got shape {tuple(input_shape)}")
        channels = _scaled(STEM_CHANNELS, width)
        self.stem = Stem(input_shape[0], channels, norm_layer, activation, lrn)
        self.blocks = nn.ModuleDict()
        for name, spec in MODULES.items():
            block = InceptionModule(channels, spec, norm_layer, activation, width)
            self.blocks[name] = block
            channels = block.out_channels
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(channels, num_classes)
        self._init_weights(activation)

    def _init_weights(self, activation: str) -> None:
        # Our choice (the paper gives no init): He/Kaiming normal, fan-in, with the gain of the network's
        # nonlinearity, so a ReLU network without BN starts with unit-scale activations at every depth.
        gain = nn.init.calculate_gain(activation)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
                nn.init.normal_(module.weight, 0.0, gain / fan_in**0.5)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks.values():
            x = block(x)
        return self.out(self.dropout(self.pool(x).flatten(1)))

    def probe_points(self) -> dict[str, nn.Module]:
        """The stem's nonlinearity and each module's shared one, in depth order (last hidden layer last)."""
        return {"stem": self.stem.act, **{name: block.act for name, block in self.blocks.items()}}
