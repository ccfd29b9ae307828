"""Internal covariate shift in Ioffe & Szegedy's sense (2015, section 2): how much the distribution of
each layer's input to its nonlinearity has moved since the previous measurement. Santurkar et al. 2018
(arXiv 1805.11604, section 2.1, Fig. 2) look at the same distributions to show that noisy BN makes
them less stable while training about as well as BN.

For each probed layer (model.probe_points()) and each of `units` (a feature, or a channel of a
feature map with its spatial positions pooled), on a fixed probe set (the first `num_examples` test
images), per unit:

    mean_shift   mean now - mean at the previous measurement
    std_ratio    std now / std at the previous measurement
    wasserstein  the 1-D Wasserstein-1 distance between the two samples (same probe set, same size:
                 the mean absolute difference of the sorted values)

Identical samples give exactly 0, 1, 0. The first measurement of a run has no previous sample and
writes no rows; a resumed run takes its previous sample from the restored model at setup, so its rows
equal the uninterrupted run's when the checkpoint step is a measured step.

mode: train (our default) runs the probe set as one training-mode batch on a copy of the model: BN
uses the probe set's batch statistics and noisy BN adds the noise of the run's next step, which is what
the next layer sees during training; eval uses the running statistics (and no noise).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from bn_repro.measures.base import MeasureContext, Measurement, register_measurement
from bn_repro.measures.replay import Replay

MODES = ("train", "eval")


def per_unit(x: Tensor) -> Tensor:
    """(N, C, ...) -> (C, N * ...) float64 on the CPU: a unit is a feature or a channel."""
    return x.detach().double().transpose(0, 1).reshape(x.shape[1], -1).cpu()


def shift_statistics(before: Tensor, after: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(mean_shift, std_ratio, wasserstein) per row of two (units, values) samples of equal size."""
    if before.shape != after.shape:
        raise ValueError(f"samples of different shapes {tuple(before.shape)} and {tuple(after.shape)}")
    mean_shift = after.mean(dim=1) - before.mean(dim=1)
    std_before, std_after = before.std(dim=1), after.std(dim=1)
    # 0/0 (a dead unit both times) is no change: ratio 1.
    std_ratio = torch.where((std_before == 0) & (std_after == 0), 1.0, std_after / std_before)
    wasserstein = (after.sort(dim=1).values - before.sort(dim=1).values).abs().mean(dim=1)
    return mean_shift, std_ratio, wasserstein


@register_measurement(
    "ics_distribution",
    specs={"units": "non-empty list of int >= 0 | null  # null: every unit", "num_examples": "int >= 2",
           "mode": "train | eval"},
)  # fmt: skip
class ICSDistribution(Measurement):
    """Per probed unit, the change of its input distribution since the previous measurement."""

    columns = ("layer", "unit", "mean_shift", "std_ratio", "wasserstein")
    index = ("layer", "unit")

    def __init__(
        self, units: Sequence[int] | None = (0, 1, 2, 3, 4), num_examples: int = 1000, mode: str = "train"
    ):
        if mode not in MODES:
            raise ValueError(
                f"measure.ics_distribution.mode={mode!r} is not valid; valid choices: {', '.join(MODES)}"
            )
        if units is not None and (
            not list(units) or any(isinstance(u, bool) or not isinstance(u, int) or u < 0 for u in units)
        ):
            raise ValueError(
                f"measure.ics_distribution.units={units!r} is not valid; expected indices >= 0, or null (all)"
            )
        if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 2:
            raise ValueError(
                f"measure.ics_distribution.num_examples={num_examples!r}; expected an integer >= 2"
            )
        self.units = None if units is None else list(units)
        self.num_examples, self.mode = num_examples, mode
        self._x: Tensor | None = None
        self._previous: dict[str, tuple[list[int], Tensor]] | None = None

    def setup(self, ctx: MeasureContext) -> None:
        self._x = ctx.data.normalize(ctx.data.test_x[: self.num_examples])
        if ctx.step > 0:  # resumed: the restored model stands for the last measured one
            self._previous = self.sample(ctx)

    def sample(self, ctx: MeasureContext) -> dict[str, tuple[list[int], Tensor]]:
        """{layer: (units, (units, values) sample)} of the probe set's inputs to each nonlinearity."""
        replay = Replay(ctx.model)
        replay.model.train(self.mode == "train")
        points = replay.model.probe_points()
        if not points:
            raise ValueError(
                "ics_distribution: the model exposes no probe points (model.probe_points() is empty)"
            )
        captured: dict[str, Tensor] = {}
        handles = [
            module.register_forward_pre_hook(
                lambda _m, inputs, name=name: captured.__setitem__(name, inputs[0])
            )
            for name, module in points.items()
        ]
        try:
            with torch.no_grad():
                replay.forward(self._x)
        finally:
            for handle in handles:
                handle.remove()
        samples = {}
        for layer, x in captured.items():
            values = per_unit(x)
            units = (
                list(range(values.shape[0]))
                if self.units is None
                else [u for u in self.units if u < len(values)]
            )
            if not units:
                raise ValueError(
                    f"measure.ics_distribution.units={self.units} are all out of range for {layer} "
                    f"({values.shape[0]} units)"
                )
            samples[layer] = (units, values[units])
        return samples

    def measure(self, ctx: MeasureContext) -> list[dict]:
        current = self.sample(ctx)
        previous, self._previous = self._previous, current
        if previous is None:
            return []
        rows = []
        for layer, (units, after) in current.items():
            mean_shift, std_ratio, wasserstein = shift_statistics(previous[layer][1], after)
            for k, unit in enumerate(units):
                rows.append(
                    {
                        "layer": layer,
                        "unit": unit,
                        "mean_shift": mean_shift[k].item(),
                        "std_ratio": std_ratio[k].item(),
                        "wasserstein": wasserstein[k].item(),
                    }
                )
        return rows
