"""Activation probes: the distribution of the input to each hidden nonlinearity on a fixed probe set.

This is what the paper's Fig. 1(b,c) draws: for a unit of the last hidden layer, the {15, 50, 85}th
percentiles of its sigmoid input over training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

PERCENTILES = (15, 50, 85)


@dataclass
class ProbeResult:
    rows: list[dict]  # one per (layer, unit): the columns of activations.csv, without `step`
    layer_values: dict[str, torch.Tensor]  # every recorded value of each layer, flattened, on the CPU


def _per_unit(x: torch.Tensor) -> torch.Tensor:
    """(N, C, ...) -> (C, N * ...): a unit is a feature (or a channel of a feature map)."""
    return x.detach().float().transpose(0, 1).reshape(x.shape[1], -1)


class ActivationProbe:
    """Records the input of the given modules (forward pre-hooks) during `measure`."""

    def __init__(self, points: dict[str, nn.Module], units: Sequence[int]):
        if not points:
            raise ValueError("the model exposes no probe points (model.probe_points() is empty)")
        self.points = points
        self.units = list(units)
        self._captured: dict[str, torch.Tensor] = {}

    def _hook(self, name: str) -> Callable:
        def record(_module, inputs):
            self._captured[name] = inputs[0]

        return record

    @torch.no_grad()
    def measure(self, forward: Callable[[], object]) -> ProbeResult:
        """Run `forward` (the caller decides train or eval mode) and summarise what the hooks saw."""
        handles = [m.register_forward_pre_hook(self._hook(n)) for n, m in self.points.items()]
        try:
            forward()
        finally:
            for handle in handles:
                handle.remove()
        captured, self._captured = self._captured, {}
        rows, layer_values = [], {}
        q = torch.tensor([p / 100 for p in PERCENTILES])
        for layer, x in captured.items():
            per_unit = _per_unit(x)
            units = [u for u in self.units if u < per_unit.shape[0]]
            if not units:
                raise ValueError(
                    f"probe units {self.units} are all out of range for {layer} ({per_unit.shape[0]} units)"
                )
            chosen = per_unit[units].cpu()
            pct = torch.quantile(chosen, q.to(chosen.dtype), dim=1).T
            mean, std = chosen.mean(dim=1), chosen.std(dim=1)
            layer_mean, layer_std = per_unit.mean().item(), per_unit.std().item()
            for i, unit in enumerate(units):
                row = {"layer": layer, "unit": unit}
                row.update({f"p{p}": pct[i, j].item() for j, p in enumerate(PERCENTILES)})
                row.update(mean=mean[i].item(), std=std[i].item(), layer_mean=layer_mean, layer_std=layer_std)
                rows.append(row)
            layer_values[layer] = per_unit.flatten().cpu()
        return ProbeResult(rows=rows, layer_values=layer_values)
