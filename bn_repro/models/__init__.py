"""Model registry: `model.name` picks a class; every model takes the data's shape, the class count and a
norm factory (`norm_layer(num_features, dim)`, bn_repro.norms.factory), never a config dict.

MODELS maps each name to where its class lives; the class is imported when a model is built, so that
checking a config (bn_repro/config.py) needs no torch. OPTIONS says what each model's options (the keys
under `model` besides `name`) take, in bn_repro/schema.py's spec syntax; tests/test_config_schema.py holds
them equal to the classes' keyword parameters.
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

OPTIONS: dict[str, dict[str, str]] = {
    "mlp": {
        "hidden": "list of int >= 1",
        "activation": "sigmoid | relu | identity",
        "init_std": "number > 0 | null  # null: torch's default initialisation",
        "dropout": "number in [0, 1)  # after each hidden nonlinearity; 0: no Dropout module",
    },
    "inception": {
        "activation": "relu | sigmoid",  # the He initialisation needs the nonlinearity's gain
        "width": "number > 0",
        "dropout": "number in [0, 1)",
        "lrn": "bool",
    },
    "linear_deep": {
        "depth": "int >= 1",
        "hidden_width": "int >= 1",
        "init_std": "number > 0 | null  # null: 1/sqrt(fan_in)",
    },
    "vgg": {
        "config": "vgg11 | vgg13 | vgg16 | vgg19",
        "width": "number > 0",
        "head": "list of int >= 1",
    },
}


def model_class(name: str):
    if name not in MODELS:
        raise ValueError(f"model.name={name!r}: valid choices: {', '.join(MODELS)}")
    module, cls = MODELS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_model(model_cfg: Mapping[str, Any], norm_layer, input_shape: Sequence[int], num_classes: int):
    """The model `model_cfg` names, with layers normalised by `norm_layer` (a bn_repro.norms.NormFactory)."""
    options = dict(model_cfg)
    name = options.pop("name", None)
    cls = model_class(name)
    unknown = sorted(set(options) - set(OPTIONS[name]))
    if unknown:  # not a TypeError from __init__: one line naming the key
        raise ValueError(
            f"model.{unknown[0]}={options[unknown[0]]!r}: model={name} takes no option {unknown[0]!r}; its "
            f"options: {', '.join(OPTIONS[name])}"
        )
    return cls(input_shape=tuple(input_shape), num_classes=num_classes, norm_layer=norm_layer, **options)
