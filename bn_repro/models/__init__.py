"""Model registry: `model.name` picks a class; every model takes the data's shape, the class count and a
norm factory (`norm_layer(num_features, dim)`, bn_repro.norms.factory), never a config dict.

MODELS maps each name to where its class lives; the class is imported when a model is built, so that
checking a config (bn_repro/config.py) needs no torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

MODELS: dict[str, str] = {
    "mlp": "bn_repro.models.mlp:MLP",
    "inception": "bn_repro.models.inception:Inception",
    "linear_deep": "bn_repro.models.linear_deep:DeepLinear",
    "vgg": "bn_repro.models.vgg:VGG",
}


def model_class(name: str):
    if name not in MODELS:
        raise ValueError(f"unknown model.name {name!r}; valid choices: {', '.join(MODELS)}")
    module, cls = MODELS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_model(model_cfg: Mapping[str, Any], norm_layer, input_shape: Sequence[int], num_classes: int):
    """The model `model_cfg` names, with layers normalised by `norm_layer` (a bn_repro.norms.NormFactory)."""
    options = dict(model_cfg)
    cls = model_class(options.pop("name", None))
    return cls(input_shape=tuple(input_shape), num_classes=num_classes, norm_layer=norm_layer, **options)
