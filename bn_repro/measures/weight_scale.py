"""Scale invariance (paper section 3.3): per weight layer, how large its weights, their gradient and the
step it takes are, over training.

    rows: layer, weight_norm = ||W||, grad_norm = ||dL/dW||, update_norm = ||dW||,
          effective_step = ||dW|| / ||W||, cos_weight_grad = <W, dL/dW> / (||W|| ||dL/dW||)

The paper: with BN, BN((aW)u) = BN(Wu), so dL/d(aW) = (1/a) dL/dW; larger weights get smaller
gradients, which stabilises their growth. For SGD on such a layer the effective step ||dW||/||W|| goes
as lr ||G|| / ||W|| ~ 1/||W||^2, and <W, G> = d/da L(aW) at a = 1 is 0: cos_weight_grad is 0 for a layer
whose output only feeds a norm (up to the norm's eps and rounding), while a layer that feeds no norm
has no reason to be orthogonal to its gradient.

The measurement runs before the step's update (phase before_step), on the step's batch: the weights W
are those the step starts from, G is the step's gradient, and dW is the update the run's own optimizer
(class, learning rate of this step, momentum buffers, weight decay) makes from them, replayed on a copy
with the same batch statistics, noise and dropout masks (bn_repro/measures/replay.py): one extra
forward/backward and optimizer step per measured step. A layer is a module with a weight of 2 or more
dims (Linear, Conv), named by its path in the model (as ics_gradient's rows).

`rescaled` checks the 1/a law on a model directly: the norm's output and the loss are unchanged when a
normalized layer's weights are multiplied by a, and a ||G(aW)|| = ||G(W)||. With the norm's eps > 0 the
exact law is BN_eps((aW)u) = BN_{eps/a^2}(Wu) (so a G(aW; eps) = G(W; eps/a^2) to rounding); the plain
ratio departs from 1 by about the share eps/(a^2 Var[Wu]) (scripts/scale_invariance.py reports both).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bn_repro.measures.base import MeasureContext, Measurement, register_measurement
from bn_repro.measures.replay import Replay, weight_layers


def _norms(a: Tensor, b: Tensor) -> tuple[float, float, float]:
    """(||a||, ||b||, cos(a, b)) in float64; the cosine is nan where either is 0."""
    a, b = a.detach().double().reshape(-1), b.detach().double().reshape(-1)
    na, nb = a.norm().item(), b.norm().item()
    if not (na > 0 and nb > 0):
        return na, nb, math.nan
    return na, nb, max(-1.0, min(1.0, a.dot(b).item() / (na * nb)))


@register_measurement("scale")
class Scale(Measurement):
    """Per weight layer, at the measured step: ||W||, ||dL/dW||, the optimizer's ||dW||, ||dW||/||W||
    and cos(W, dL/dW) (section 3.3's scale invariance)."""

    phase = "before_step"
    columns = ("layer", "weight_norm", "grad_norm", "update_norm", "effective_step", "cos_weight_grad")
    index = ("layer",)

    def measure(self, ctx: MeasureContext) -> list[dict]:
        x, y = ctx.batch
        replay = Replay(ctx.model, ctx.optimizer)
        layers = replay.weight_layers("scale")
        _, grads = replay.loss_and_grads(x, y, ctx.loss_fn)
        position = {id(p): k for k, p in enumerate(replay.params)}
        before = {id(w): w.detach().clone() for _, w in layers}
        for param, grad in zip(replay.params, grads, strict=True):
            param.grad = grad  # None where training's backward leaves None: the optimizer skips those
        replay.optimizer.step()
        rows = []
        for name, weight in layers:
            w = before[id(weight)]
            grad = grads[position[id(weight)]]
            grad = torch.zeros_like(w) if grad is None else grad
            weight_norm, grad_norm, cosine = _norms(w, grad)
            update_norm = (weight.detach().double() - w.double()).norm().item()
            rows.append({
                "layer": name, "weight_norm": weight_norm, "grad_norm": grad_norm, "update_norm": update_norm,
                "effective_step": update_norm / weight_norm if weight_norm > 0 else math.nan,
                "cos_weight_grad": cosine,
            })  # fmt: skip
        return rows


# ------------------------------------------------------------------------------ the 1/a law, checked


def norm_modules(model: nn.Module) -> dict[str, str]:
    """{module path: kind} of the normalization layers of `model`: those the norm registry built (but
    `none`), and torch's BatchNorm, LayerNorm and GroupNorm elsewhere."""
    from bn_repro import norms

    found = {}
    for name, module in model.named_modules():
        kind = norms.kind_of(module)
        if kind is not None:
            if not norms.get(kind).identity:
                found[name] = kind
        elif isinstance(module, nn.modules.batchnorm._NormBase | nn.LayerNorm | nn.GroupNorm):
            found[name] = type(module).__name__
    return found


@torch.no_grad()
def normalized_layers(model: nn.Module, x: Tensor) -> dict[str, str]:
    """{weight layer path: norm module path} for each weight layer whose output is the input of a norm
    (read from one eval-mode forward of a copy of `model` on `x`)."""
    from bn_repro.engine.evaluate import copy_model

    copy = copy_model(model).eval()
    outputs: dict[int, tuple[str, Tensor]] = {}  # the tensors kept alive so that their ids stay theirs
    pairs: dict[str, str] = {}
    modules = dict(copy.named_modules())
    handles = []

    def record(name: str) -> Callable:
        def hook(_module, _inputs, output):
            outputs[id(output)] = (name, output)

        return hook

    def match(name: str) -> Callable:
        def hook(_module, inputs):
            source = outputs.get(id(inputs[0]))
            if source is not None and source[0] not in pairs:
                pairs[source[0]] = name

        return hook

    try:
        for name, _ in weight_layers(copy):
            handles.append(modules[name].register_forward_hook(record(name)))
        for name in norm_modules(copy):
            handles.append(modules[name].register_forward_pre_hook(match(name)))
        copy(x)
    finally:
        for handle in handles:
            handle.remove()
    return pairs


@dataclass
class Rescaled:
    """What multiplying one layer's weights by `a` does (training mode, the same batch)."""

    a: float
    output_change: float  # max |norm output at aW - at W|, relative to max |norm output at W|
    loss_change: float  # |L(aW) - L(W)|
    ratio: float  # a ||G(aW)|| / ||G(W)||: 1 is the 1/a law
    cosine: float  # cos(G(aW), G(W))
    ratio_eps: float  # a ||G(aW)|| / ||G(W)|| with the norm's eps / a^2 at W: 1 to rounding (nan: no eps)


def rescaled(
    model: nn.Module,
    layer: str,
    norm: str | None,
    scales: Sequence[float],
    x: Tensor,
    y: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
) -> list[Rescaled]:
    """The 1/a law for weight layer `layer` (a module path) followed by norm module `norm` (None: a layer
    that feeds no norm, for contrast; then output_change and ratio_eps are nan): for each a in `scales`,
    its weights times a, on a training-mode copy (the same noise and dropout masks in every forward;
    `model` is not touched)."""
    replay = Replay(model)
    modules = dict(replay.model.named_modules())
    weight = modules[layer].weight
    norm_module = modules[norm] if norm is not None else modules[layer]  # without a norm: its own output
    index = next(i for i, p in enumerate(replay.params) if p is weight)
    captured: list[Tensor] = []
    handle = norm_module.register_forward_hook(lambda _m, _i, out: captured.append(out.detach()))
    try:
        w = weight.detach().clone()
        loss, grads = replay.loss_and_grads(x, y, loss_fn)
        out, g = captured.pop(), grads[index]
        eps = getattr(norm_module, "eps", None) if norm is not None else None
        results = []
        for a in scales:
            with torch.no_grad():
                weight.copy_(a * w)
            loss_a, grads_a = replay.loss_and_grads(x, y, loss_fn)
            out_a, g_a = captured.pop(), grads_a[index]
            _, _, cosine = _norms(g_a, g)
            g_norm, g_a_norm = g.double().norm().item(), g_a.double().norm().item()
            ratio_eps = math.nan
            if isinstance(eps, float) and eps > 0:
                with torch.no_grad():
                    weight.copy_(w)
                norm_module.eps = eps / a**2
                try:
                    g_eps = replay.loss_and_grads(x, y, loss_fn)[1][index]
                    captured.pop()
                finally:
                    norm_module.eps = eps
                ratio_eps = a * g_a_norm / g_eps.double().norm().item()
            scale = out.abs().max().item() or 1.0
            output_change = (out_a - out).abs().max().item() / scale if norm is not None else math.nan
            results.append(Rescaled(
                a=a, output_change=output_change,
                loss_change=abs(loss_a.item() - loss.item()), ratio=a * g_a_norm / g_norm, cosine=cosine,
                ratio_eps=ratio_eps,
            ))  # fmt: skip
        with torch.no_grad():
            weight.copy_(w)
    finally:
        handle.remove()
    return results


def rescaling_rows(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    scales: Sequence[float] = (0.1, 0.5, 2.0, 10.0),
) -> list[dict]:
    """`rescaled` for every weight layer of `model` on the batch (x, y): one row per layer and a, with the
    norm its output feeds ("" for none: the law is not expected there)."""
    pairs = normalized_layers(model, x)
    kinds = norm_modules(model)
    rows = []
    for layer, _ in weight_layers(model):
        norm = pairs.get(layer)
        for r in rescaled(model, layer, norm, scales, x, y, loss_fn):
            rows.append({
                "layer": layer, "norm": "" if norm is None else f"{norm} ({kinds[norm]})", "a": r.a,
                "ratio": r.ratio, "ratio_eps": r.ratio_eps, "cosine": r.cosine, "loss_change": r.loss_change,
                "output_change": r.output_change,
            })  # fmt: skip
    return rows
