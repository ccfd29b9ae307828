"""The loss landscape along the gradient, Santurkar et al. 2018 (arXiv 1805.11604, section 3.1, Fig. 4):
at the measured step, on the step's batch, move the parameters along the gradient and record

    loss_min, loss_max     the loss-variation band: the least and largest loss over the step sizes
    grad_diff_min, _max    gradient predictiveness: ||grad L(theta - eta g) - g||_2 over the step sizes
    beta_smoothness        the effective beta-smoothness: max over the step sizes of
                           ||grad L(theta - eta g) - g|| / ||eta g||
    loss                   the loss at the current parameters (theta), for reference

with g = grad L(theta), the plain gradient (not the optimizer's momentum update). step_sizes are
multiples of each parameter's current learning rate (relative: true) or absolute step sizes. Our
default: 7 evenly spaced multiples in [0.5, 2.5], the range of a public course implementation (the
paper's range is not in our notes: check). Forwards are training-mode on a copy of the model, each
with the same batch statistics, noisy-BN noise and dropout masks (bn_repro/measures/replay.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bn_repro.measures.base import MeasureContext, Measurement, register_measurement
from bn_repro.measures.replay import Replay, flat

DEFAULT_STEP_SIZES = (0.5, 0.8333, 1.1667, 1.5, 1.8333, 2.1667, 2.5)


@dataclass
class AlongGradient:
    """What the model's loss does along -g, one entry per step size."""

    loss: float  # at theta
    losses: list[float]
    grad_diffs: list[float]  # ||grad L(theta - eta g) - g||
    param_diffs: list[float]  # ||eta g|| (per-parameter learning rates included)


def along_gradient(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    steps: Sequence[Sequence[float]],
) -> AlongGradient:
    """Loss and gradient at theta - eta_p g_p for each entry of `steps` (one step size per parameter)."""
    replay = Replay(model)
    loss, grads = replay.loss_and_grads(x, y, loss_fn)
    g = flat(grads, replay.params)
    theta = [p.detach().clone() for p in replay.params]
    result = AlongGradient(loss.item(), [], [], [])
    for etas in steps:
        replay.set_params(
            [t if grad is None else t - eta * grad for t, grad, eta in zip(theta, grads, etas, strict=True)]
        )
        moved_loss, moved_grads = replay.loss_and_grads(x, y, loss_fn)
        step = flat(
            [None if gr is None else eta * gr for gr, eta in zip(grads, etas, strict=True)], replay.params
        )
        result.losses.append(moved_loss.item())
        result.grad_diffs.append((flat(moved_grads, replay.params) - g).norm().item())
        result.param_diffs.append(step.norm().item())
    return result


@register_measurement("landscape", specs={"step_sizes": "non-empty list of number > 0", "relative": "bool"})
class Landscape(Measurement):
    """Loss variation, gradient predictiveness and effective beta-smoothness along the gradient."""

    phase = "before_step"
    columns = ("loss", "loss_min", "loss_max", "grad_diff_min", "grad_diff_max", "beta_smoothness")

    def __init__(self, step_sizes: Sequence[float] = DEFAULT_STEP_SIZES, relative: bool = True):
        sizes = list(step_sizes)
        if not sizes or any(
            isinstance(s, bool) or not isinstance(s, int | float) or not s > 0 for s in sizes
        ):
            raise ValueError(f"measure.landscape.step_sizes={sizes!r} is not valid; expected numbers > 0")
        if not isinstance(relative, bool):
            raise ValueError(
                f"measure.landscape.relative={relative!r} is not valid; valid choices: true, false"
            )
        self.step_sizes, self.relative = [float(s) for s in sizes], relative

    def steps(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> list[list[float]]:
        """One step size per parameter for each entry of step_sizes (times its group's lr when relative)."""
        lr = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
        params = list(model.parameters())
        return [[s * (lr.get(id(p), 0.0) if self.relative else 1.0) for p in params] for s in self.step_sizes]

    def measure(self, ctx: MeasureContext) -> list[dict]:
        x, y = ctx.batch
        probe = along_gradient(ctx.model, x, y, ctx.loss_fn, self.steps(ctx.model, ctx.optimizer))
        # A zero step (lr 0, or a zero gradient) has no smoothness to measure: NaN, not a division by 0.
        betas = [
            d / p if p > 0 else math.nan for d, p in zip(probe.grad_diffs, probe.param_diffs, strict=True)
        ]
        finite = [b for b in betas if not math.isnan(b)]
        return [
            {
                "loss": probe.loss,
                "loss_min": min(probe.losses),
                "loss_max": max(probe.losses),
                "grad_diff_min": min(probe.grad_diffs),
                "grad_diff_max": max(probe.grad_diffs),
                "beta_smoothness": max(finite) if finite else math.nan,
            }
        ]
