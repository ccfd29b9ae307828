"""The training step's fast path: bf16 autocast, channels_last, torch.compile and cudnn.benchmark.

    fast = FastPath.from_config(config["trainer"], device, model)
    fast.prepare(model)          # channels_last weights; cudnn.benchmark on CUDA
    net = fast.compiled(net)     # torch.compile when trainer.compile is true
    with fast.autocast():
        loss = F.cross_entropy(net(fast.input(x)), y)

trainer.precision and trainer.channels_last accept "auto": bf16 and channels_last on CUDA (channels_last
only for models with 2-D convolutions), plain fp32 NCHW on the CPU, where bf16 autocast is mostly slower
and channels_last gains little. Under bf16 autocast the parameters, the optimizer state and BN (its
statistics, and its arithmetic: torch's BN takes bf16 input and computes in float32; bn_repro.norm's
BatchNorm does the same) stay float32; the convolutions and the classifier run in bf16.
Only the training steps take this path: evaluation, probes and the population statistics run the
uncompiled model in float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

# torch is imported inside the methods: config checks read PRECISIONS without waiting for torch.

PRECISIONS = ("auto", "fp32", "bf16")


def has_conv2d(model: nn.Module) -> bool:
    from torch import nn

    return any(isinstance(m, nn.Conv2d) for m in model.modules())


@dataclass(frozen=True)
class FastPath:
    device: torch.device
    precision: str  # "fp32" | "bf16", after resolving "auto"
    channels_last: bool
    compile: bool
    cudnn_benchmark: bool

    @classmethod
    def from_config(cls, trainer: Mapping[str, Any], device: torch.device, model: nn.Module) -> FastPath:
        """Resolve the trainer's settings for this device and model."""
        import torch

        cuda = device.type == "cuda"
        precision = trainer["precision"]  # validated against PRECISIONS by bn_repro.config
        bf16_ok = not cuda or torch.cuda.is_bf16_supported()
        if precision == "auto":
            precision = "bf16" if cuda and bf16_ok else "fp32"
        elif precision == "bf16" and not bf16_ok:
            raise ValueError(
                f"trainer.precision=bf16 but {torch.cuda.get_device_name(device)} has no bf16 support; "
                f"valid choices here: fp32, auto"
            )
        channels_last = trainer["channels_last"]
        if channels_last == "auto":
            channels_last = cuda and has_conv2d(model)
        # cudnn.benchmark times the convolution algorithms and keeps the fastest, which may differ from
        # run to run, so it is on only when the run need not be bitwise reproducible.
        benchmark = cuda and not trainer["deterministic"]
        return cls(device, precision, bool(channels_last), bool(trainer["compile"]), benchmark)

    def prepare(self, model: nn.Module) -> nn.Module:
        """Put the weights in channels_last (in place) and set the cudnn flag; returns the model."""
        import torch

        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = self.cudnn_benchmark
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def compiled(self, net: nn.Module) -> nn.Module:
        """torch.compile(net) when trainer.compile is true (it shares the parameters of `net`)."""
        import torch

        return torch.compile(net) if self.compile else net

    def autocast(self) -> contextlib.AbstractContextManager:
        import torch

        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def input(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def describe(self) -> dict[str, Any]:
        """The resolved settings, for summary.json."""
        return {
            "precision": self.precision,
            "channels_last": self.channels_last,
            "compile": self.compile,
            "cudnn_benchmark": self.cudnn_benchmark,
        }
