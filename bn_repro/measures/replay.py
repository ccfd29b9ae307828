"""Replays of a training step on a copy of the model, for the measurements that must evaluate the loss
and its gradient at parameters other than the run's (ics_gradient, landscape) or run training-mode
forwards (ics_distribution) without moving anything of the run's.

    replay = Replay(ctx.model, ctx.optimizer)      # deep copies, in training mode
    loss, grads = replay.loss_and_grads(x, y, ctx.loss_fn)

Every forward of a replay starts from the same state: the copy's buffers (BN running statistics, noisy
BN's forward count) and the global RNGs are put back first, so each forward sees the same batch
statistics, the same noisy-BN noise and the same dropout masks as the run's own next step would; only
the parameters differ, which is what these measurements compare. The run's model and optimizer are
never touched (the seam's `isolated` restores them anyway).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from bn_repro.engine.evaluate import copy_model


def clone_optimizer(
    optimizer: torch.optim.Optimizer, model: nn.Module, copied: nn.Module
) -> torch.optim.Optimizer:
    """The same optimizer (class, hyper-parameters, state such as momentum buffers) over `copied`'s
    parameters. A deep copy of the optimizer itself would not do: it keeps the LR scheduler's wrapper
    of the original's `step`."""
    index = {id(p): i for i, p in enumerate(model.parameters())}
    params = list(copied.parameters())
    groups = []
    for group in optimizer.param_groups:
        missing = [p for p in group["params"] if id(p) not in index]
        if missing:
            raise ValueError(
                "the optimizer holds parameters that are not the model's; cannot replay its step"
            )
        options = {k: v for k, v in group.items() if k != "params"}
        groups.append({**options, "params": [params[index[id(p)]] for p in group["params"]]})
    clone = type(optimizer)(groups, **optimizer.defaults)
    clone.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    return clone


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(module path, weight) of each module with a weight of 2 or more dims, in parameter order."""
    order = {id(p): i for i, p in enumerate(model.parameters())}
    layers = [
        (name, module.weight)
        for name, module in model.named_modules()
        if isinstance(getattr(module, "weight", None), nn.Parameter) and module.weight.dim() >= 2
    ]
    return sorted(layers, key=lambda layer: order[id(layer[1])])


class Replay:
    """A training-mode copy of `model` (and of `optimizer`, when given) whose forwards all start from
    the state the copy was made in."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None):
        # Without process groups (they cannot be copied): under DDP a replay's BN statistics are those
        # of this replica's share of the batch.
        self.model = copy_model(model)
        self.model.train()
        self.params = list(self.model.parameters())
        self.optimizer = None if optimizer is None else clone_optimizer(optimizer, model, self.model)
        self._buffers = [(b, b.detach().clone()) for b in self.model.buffers()]
        device = self.params[0].device if self.params else torch.device("cpu")
        self._cuda = device if device.type == "cuda" else None
        self._rng = torch.get_rng_state()
        self._cuda_rng = torch.cuda.get_rng_state(device) if self._cuda is not None else None

    def weight_layers(self, measurement: str) -> list[tuple[str, nn.Parameter]]:
        """weight_layers of the copy; a model without any is an error of `measurement`'s config."""
        layers = weight_layers(self.model)
        if not layers:
            raise ValueError(f"{measurement}: the model has no layer with a weight of 2 or more dims")
        return layers

    def rewind(self) -> None:
        """Put back the buffers and the global RNGs as they were when the copy was made."""
        with torch.no_grad():
            for buffer, value in self._buffers:
                buffer.copy_(value)
        torch.set_rng_state(self._rng)
        if self._cuda is not None:
            torch.cuda.set_rng_state(self._cuda_rng, self._cuda)

    def forward(self, x: Tensor) -> Tensor:
        self.rewind()
        return self.model(x)

    def loss_and_grads(
        self, x: Tensor, y: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor]
    ) -> tuple[Tensor, list[Tensor | None]]:
        """The loss on (x, y) at the copy's current parameters and its gradient per parameter (None for
        a parameter the loss does not depend on, as .grad after a training step's backward)."""
        loss = loss_fn(self.forward(x), y)
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        return loss.detach(), list(grads)

    def set_params(self, values: Sequence[Tensor]) -> None:
        with torch.no_grad():
            for param, value in zip(self.params, values, strict=True):
                param.copy_(value)


def flat(tensors: Sequence[Tensor | None], like: Sequence[Tensor]) -> Tensor:
    """One float64 vector of `tensors` (zeros for None), for norms and dot products."""
    return torch.cat(
        [
            (torch.zeros_like(p) if t is None else t).detach().reshape(-1).double()
            for t, p in zip(tensors, like, strict=True)
        ]
    )
