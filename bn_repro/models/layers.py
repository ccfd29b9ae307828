"""Building blocks shared by the models: the norm switch and the activation switch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

NORM_KINDS = ("none", "builtin", "custom")
ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU}

_BUILTIN_BN = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}


def _choice_error(what: str, value: Any, choices) -> ValueError:
    return ValueError(f"unknown {what} {value!r}; valid choices: {', '.join(map(str, choices))}")


def check_norm_config(norm_cfg: Mapping[str, Any]) -> None:
    kind = norm_cfg.get("kind")
    if kind not in NORM_KINDS:
        raise _choice_error("norm.kind", kind, NORM_KINDS)


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise _choice_error("model.activation", name, ACTIVATIONS)
    return ACTIVATIONS[name]()


def uses_norm(norm_cfg: Mapping[str, Any]) -> bool:
    check_norm_config(norm_cfg)
    return norm_cfg["kind"] != "none"


def make_norm(norm_cfg: Mapping[str, Any], num_features: int, input_dims: int) -> nn.Module:
    """BN for an input of `input_dims` dims ((N,C) is 2), or Identity when norm.kind is none.

    The built-in class depends on the input rank; the custom BatchNorm takes every rank.
    """
    if not uses_norm(norm_cfg):
        return nn.Identity()
    # momentum may be null (cumulative average), as in torch.
    options = {"eps": float(norm_cfg.get("eps", 1e-5)), "momentum": norm_cfg.get("momentum", 0.1)}
    if norm_cfg["kind"] == "builtin":
        return _BUILTIN_BN[input_dims](num_features, **options)
    from bn_repro.norm import BatchNorm

    return BatchNorm(num_features, backward=norm_cfg.get("backward", "autograd"), **options)
