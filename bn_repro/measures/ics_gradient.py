"""Santurkar et al.'s gradient-based internal covariate shift (2018, arXiv 1805.11604, section 2.2,
Definition 2.1): for each layer i, how much its gradient changes when the layers before it take their
update first.

    G  = the gradient of layer i's weights at the current parameters, on the step's batch
    G' = the same after layers 1..i-1 have taken this step's optimizer update (same batch)
    rows: layer, l2_diff = ||G - G'||_2, cosine = <G, G'> / (||G|| ||G'||)

A layer is a module with a weight of 2 or more dims (Linear, Conv), named by its path in the model, in
parameter registration order (the depth order of the models here). A layer's parameters are its
weight and every parameter after it up to the next layer's weight (its bias, its norm's gamma and
beta): "layers 1..i-1 updated" moves all parameters before layer i's weight.

The update is the run's own optimizer (class, learning rate, momentum buffers, weight decay) on a copy,
applied to every parameter at once; the earlier layers' share of it is then swapped in for each layer
i. That equals stepping only layers 1..i-1 because torch's SGD-family updates are per parameter.
Forwards are training-mode on the copy, with the same batch statistics, noisy-BN noise and dropout
masks as the run's step (bn_repro/measures/replay.py); with lr 0, G' is G exactly.
"""

from __future__ import annotations

import torch
from torch import nn

from bn_repro.measures.base import MeasureContext, Measurement, register_measurement
from bn_repro.measures.replay import Replay


def layer_of_each_param(model: nn.Module, weights: list[nn.Parameter]) -> list[int]:
    """The layer index of each parameter: that of the last layer weight at or before it (0 before any)."""
    starts = {id(w): i for i, w in enumerate(weights)}
    owners, current = [], 0
    for param in model.parameters():
        current = starts.get(id(param), current)
        owners.append(current)
    return owners


def compare(g: torch.Tensor, g_after: torch.Tensor) -> tuple[float, float]:
    """(||G - G'||_2, cos(G, G')) in float64; identical gradients give exactly (0, 1)."""
    if torch.equal(g, g_after):
        return 0.0, 1.0
    g, g_after = g.double().reshape(-1), g_after.double().reshape(-1)
    norms = torch.sqrt(g.dot(g) * g_after.dot(g_after))
    cosine = (g.dot(g_after) / norms).clamp(-1.0, 1.0).item() if norms > 0 else float("nan")
    return (g - g_after).norm().item(), cosine


@register_measurement("ics_gradient")
class ICSGradient(Measurement):
    """Per layer, ||G - G'|| and cos(G, G') at the measured step (Santurkar et al. 2018, Def. 2.1)."""

    phase = "before_step"
    columns = ("layer", "l2_diff", "cosine")
    index = ("layer",)

    def measure(self, ctx: MeasureContext) -> list[dict]:
        x, y = ctx.batch
        replay = Replay(ctx.model, ctx.optimizer)
        layers = replay.weight_layers("ics_gradient")
        owners = layer_of_each_param(replay.model, [w for _, w in layers])
        position = {id(p): k for k, p in enumerate(replay.params)}
        _, grads = replay.loss_and_grads(x, y, ctx.loss_fn)

        before = [p.detach().clone() for p in replay.params]
        for param, grad in zip(replay.params, grads, strict=True):
            param.grad = grad  # None where training's backward leaves None: the optimizer skips those
        replay.optimizer.step()
        after = [p.detach().clone() for p in replay.params]

        rows = []
        for i, (name, weight) in enumerate(layers):
            g = grads[position[id(weight)]]
            if i == 0:
                g_after = g  # no earlier layer: G' is G by definition
            else:
                replay.set_params(
                    [a if owner < i else b for a, b, owner in zip(after, before, owners, strict=True)]
                )
                g_after = replay.loss_and_grads(x, y, ctx.loss_fn)[1][position[id(weight)]]
            l2_diff, cosine = compare(g, g_after)
            rows.append({"layer": name, "l2_diff": l2_diff, "cosine": cosine})
        return rows
