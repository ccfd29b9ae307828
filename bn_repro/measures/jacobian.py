"""The singular values of each hidden layer's input-output Jacobian (paper section 3.3's conjecture: "BN
may lead the layer Jacobians to have singular values close to 1, which is known to be beneficial for
training").

    rows: layer, min, p10, p50, p90, max, mean of the singular values

For hidden layer l of the MLPs (model.hidden: z = g(BN(Wu)), z = g(Wu + b) without a norm), on a fixed
probe set (the first `num_examples` test images): the Jacobian J_i = dz_i/du_i of each example's output
with respect to its own input, its singular values (min(fan_in, fan_out) per example, 100 on the Fig. 1
MLP), pooled over the examples; the row holds their quantiles and mean.

What BN's Jacobian means, our choice: in training mode BN couples the examples of a batch (the batch
statistics depend on every u_j), so the full Jacobian is (B x out) x (B x in). Its diagonal blocks
dz_i/du_i differ from the Jacobian with the statistics held fixed by terms of order 1/B, and the paper's
argument is about a layer as a fixed linear map between normalized vectors. So each layer is taken with
its statistics held fixed, per example:

    mode=train (default): each BN layer normalizes with the probe set's own batch mean and (biased)
        variance of its input, as a training step on that batch would, held fixed; no noise or dropout.
        The map the gradient flows through during training (up to the 1/B terms).
    mode=eval: with the running statistics (the map at inference). At step 0 these are mean 0, variance
        1 and say little about the layer.

Norms without running statistics (layernorm, groupnorm) are per-example maps already: mode changes
nothing for them or for the network without BN. Dropout is off (eval) in both modes.

`output`: activation (default) measures u -> z = g(BN(Wu)), the layer as the paper writes it; with the
sigmoid, g' <= 1/4 bounds the singular values by 1/4 of those of the pre-activation map.
pre_activation measures u -> BN(Wu), the input of the nonlinearity (the paper's conjecture is literally
about the map between consecutive normalized vectors: that is g's Jacobian of one layer times this map
of the next).

Computed with torch.func.jacrev on a copy of the model (per layer one reverse pass per output unit,
vectorized) and torch.linalg.svdvals: cost in bn_repro/measures/README.md.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from bn_repro.measures.base import MeasureConfigError, MeasureContext, Measurement, register_measurement

QUANTILES = {"p10": 0.1, "p50": 0.5, "p90": 0.9}
JACOBIAN_MODES = ("train", "eval")
OUTPUTS = ("activation", "pre_activation")


def hidden_layers(model: nn.Module) -> list[nn.Module]:
    """The hidden layers of an MLP-like model (model.hidden, each with .linear, .norm, .act); for any other
    model a MeasureConfigError (a ValueError the app reports as one line)."""
    layers = list(getattr(model, "hidden", None) or [])
    if not layers or not all(all(hasattr(m, a) for a in ("linear", "norm", "act")) for m in layers):
        raise MeasureConfigError(
            f"measure.jacobian: {type(model).__name__} has no hidden layers z = g(norm(Wu)) (model.hidden); "
            f"the measurement takes the MLPs (model=mlp, linear_deep)"
        )
    return layers


def per_example_singular_values(fn: Callable[[Tensor], Tensor], u: Tensor) -> Tensor:
    """(N, min(in, out)): the singular values of d fn(u)_i / d u_i for each row i of u (N, in), for a
    map `fn` that treats the rows independently (then the Jacobian of the row sum is the per-example
    Jacobians side by side)."""
    jac = torch.func.jacrev(lambda v: fn(v).sum(0))(u).transpose(0, 1).double()  # (N, out, in)
    # The square roots of the eigenvalues of the smaller Gram matrix, in float64: 4x faster than svdvals
    # on the Fig. 1 MLP's 100 x 784 first layer, and as accurate as the float32 Jacobian it starts from.
    gram = jac @ jac.transpose(1, 2) if jac.shape[1] <= jac.shape[2] else jac.transpose(1, 2) @ jac
    return torch.linalg.eigvalsh(gram).clamp_min(0).sqrt().flip(-1).to(u.dtype)  # descending, as svdvals


@torch.no_grad()
def layer_inputs(model: nn.Module, x: Tensor, mode: str) -> list[Tensor]:
    """Each hidden layer's input on the probe set `x`; `model` (a copy: this changes it) is left in eval
    mode, and with mode=train each BN layer's running statistics are replaced by the batch statistics of
    its input here, so that eval-mode forwards normalize as a training-mode forward on `x` would."""
    model.eval()
    u, inputs = x.flatten(1), []
    for layer in hidden_layers(model):
        inputs.append(u)
        norm = layer.norm
        if mode == "train" and getattr(norm, "running_mean", None) is not None:
            pre = layer.linear(u)
            norm.running_mean.copy_(pre.mean(0))
            norm.running_var.copy_(pre.var(0, unbiased=False))
        u = layer(u)
    return inputs


def singular_values(model: nn.Module, x: Tensor, mode: str = "train", output: str = "activation") -> dict:
    """{"hidden<l>": (N, k) singular values of each example's layer Jacobian} on a copy of `model`."""
    from bn_repro.engine.evaluate import copy_model

    copy = copy_model(model)
    inputs = layer_inputs(copy, x, mode)
    out = {}
    for i, (layer, u) in enumerate(zip(hidden_layers(copy), inputs, strict=True)):
        fn = layer if output == "activation" else (lambda v, layer=layer: layer.norm(layer.linear(v)))
        out[f"hidden{i + 1}"] = per_example_singular_values(fn, u).detach()
    return out


def summarize(values: Tensor) -> dict[str, float]:
    """min, p10, p50, p90, max and mean of the pooled singular values."""
    flat = values.detach().double().reshape(-1).cpu()
    q = torch.quantile(flat, torch.tensor(list(QUANTILES.values()), dtype=flat.dtype))
    return {
        "min": flat.min().item(), **{k: v.item() for k, v in zip(QUANTILES, q, strict=True)},
        "max": flat.max().item(), "mean": flat.mean().item(),
    }  # fmt: skip


@register_measurement(
    "jacobian",
    specs={"num_examples": "int >= 1", "mode": "train | eval", "output": "activation | pre_activation"},
)
class Jacobian(Measurement):
    """Per hidden layer, the singular values of dz_i/du_i over the first `num_examples` test images."""

    columns = ("layer", "min", *QUANTILES, "max", "mean")
    index = ("layer",)

    def __init__(self, num_examples: int = 100, mode: str = "train", output: str = "activation"):
        if mode not in JACOBIAN_MODES:
            raise ValueError(f"measure.jacobian.mode={mode!r}; valid choices: {', '.join(JACOBIAN_MODES)}")
        if output not in OUTPUTS:
            raise ValueError(f"measure.jacobian.output={output!r}; valid choices: {', '.join(OUTPUTS)}")
        self.num_examples, self.mode, self.output = num_examples, mode, output
        self._x: Tensor | None = None

    def setup(self, ctx: MeasureContext) -> None:
        hidden_layers(ctx.model)  # refuse another model before the first step
        self._x = ctx.data.normalize(ctx.data.test_x[: self.num_examples])

    def measure(self, ctx: MeasureContext) -> list[dict]:
        values = singular_values(ctx.model, self._x, self.mode, self.output)
        return [{"layer": name, **summarize(v)} for name, v in values.items()]
