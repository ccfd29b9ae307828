"""Model registry: `model.name` picks a class; every model takes the data's shape, the class count and a
norm factory (`norm_layer(num_features, dim)`, bn_repro.norms.factory), never a config dict."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from bn_repro.models.inception import Inception
from bn_repro.models.linear_deep import DeepLinear
from bn_repro.models.mlp import MLP
from bn_repro.models.vgg import VGG
from bn_repro.norms import NormFactory

MODELS: dict[str, type[nn.Module]] = {
    "mlp": MLP, "inception": Inception, "linear_deep": DeepLinear, "vgg": VGG,
}  # fmt: skip


def build_model(
    model_cfg: Mapping[str, Any], norm_layer: NormFactory, input_shape: Sequence[int], num_classes: int
) -> nn.Module:
    options = dict(model_cfg)
    name = options.pop("name", None)
    if name not in MODELS:
        raise ValueError(f"unknown model.name {name!r}; valid choices: {', '.join(MODELS)}")
    return MODELS[name](
        input_shape=tuple(input_shape), num_classes=num_classes, norm_layer=norm_layer, **options
    )
