"""The nonlinearity switch shared by the models (`model.activation`)."""

from __future__ import annotations

# name -> the torch.nn class (imported when a layer is made: checking a config needs no torch).
# identity: no nonlinearity (the deep linear net, bn_repro/models/linear_deep.py).
ACTIVATIONS = {"sigmoid": "Sigmoid", "relu": "ReLU", "identity": "Identity"}


def make_activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown model.activation {name!r}; valid choices: {', '.join(ACTIVATIONS)}")
    from torch import nn

    return getattr(nn, ACTIVATIONS[name])()
