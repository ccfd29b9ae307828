"""The activation probe, the seam's first measurement: the distribution of the input to each hidden
nonlinearity on a fixed probe set.

This is what the paper's Fig. 1(b,c) draws: for a unit of the last hidden layer, the {15, 50, 85}th
percentiles of its sigmoid input over training. `measure.activations` takes its options from the
`probe.*` keys (units, num_examples, mode) and its cadence from trainer.eval_every (configs/measure/).
Rows go to activations.csv; wandb keys are `act/<layer>/<unit>/<stat>`, `act/<layer>/layer_mean|
layer_std` and a histogram of each layer's values, `act_hist/<layer>`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from bn_repro.measures.base import MeasureContext, Measurement, natural_order, register_measurement

PERCENTILES = (15, 50, 85)
PROBE_MODES = ("eval", "train")
ROW_KEYS = ("layer", "unit")
UNIT_STATS = (*(f"p{p}" for p in PERCENTILES), "mean", "std")
LAYER_STATS = ("layer_mean", "layer_std")
# The wandb config key of the probed layers in depth order (see Activations.wandb_config).
PROBE_LAYERS_KEY = "_probe_layers"


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
        return self.summarise(captured)

    def summarise(self, captured: Mapping[str, torch.Tensor]) -> ProbeResult:
        """The rows and values of the probe points' inputs `captured` ((N, C, ...) per point)."""
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


@register_measurement(
    "activations",
    specs={"units": "non-empty list of int >= 0", "num_examples": "int >= 1", "mode": "eval | train"},
)
class Activations(Measurement):
    """ActivationProbe on the model's probe points (model.probe_points()), on the first `num_examples`
    test images, in eval mode (running statistics) or train mode (batch statistics of the probe set)."""

    columns = (*ROW_KEYS, *UNIT_STATS, *LAYER_STATS)
    index = ROW_KEYS
    wandb_prefix = "act"
    hist_prefix = "act_hist/"

    def __init__(self, units: Sequence[int] = (0, 1, 2, 3, 4), num_examples: int = 1000, mode: str = "eval"):
        if mode not in PROBE_MODES:
            raise ValueError(f"probe.mode={mode!r} is not valid; valid choices: {', '.join(PROBE_MODES)}")
        self.units = list(units)
        self.num_examples = num_examples
        self.mode = mode
        self._probe: ActivationProbe | None = None
        self._x: torch.Tensor | None = None
        self.layer_values: dict[str, torch.Tensor] = {}

    def setup(self, ctx: MeasureContext) -> None:
        self._probe = ActivationProbe(ctx.model.probe_points(), self.units)
        self._x = ctx.data.normalize(ctx.data.test_x[: self.num_examples])

    def measure(self, ctx: MeasureContext) -> list[dict]:
        def forward():
            ctx.model.train(self.mode == "train")
            ctx.model(self._x)

        given = self._given(ctx)
        result = self._probe.summarise(given) if given is not None else self._probe.measure(forward)
        self.layer_values = result.layer_values
        return result.rows

    def _given(self, ctx: MeasureContext) -> dict[str, torch.Tensor] | None:
        """The probe set's inputs at every probe point from ctx.probe_inputs (eval mode only: in train
        mode BN normalises the probe set by its own statistics); None where they do not cover it."""
        given, points = ctx.probe_inputs, self._probe.points
        if self.mode != "eval" or given is None or not set(points) <= set(given):
            return None
        if any(given[name].shape[0] < self.num_examples for name in points):
            return None
        return {name: given[name][: self.num_examples] for name in points}

    def wandb_payload(self, rows: list[dict]) -> dict:
        payload = {}
        for row in rows:
            for stat in UNIT_STATS:
                payload[f"act/{row['layer']}/{row['unit']}/{stat}"] = row[stat]
            for stat in LAYER_STATS:
                payload[f"act/{row['layer']}/{stat}"] = row[stat]
        payload.update({self.hist_prefix + layer: values for layer, values in self.layer_values.items()})
        return payload

    def wandb_config(self, rows: list[dict]) -> dict:
        # wandb keeps no key order: the export puts the layers back in depth order from this list.
        return {PROBE_LAYERS_KEY: list(dict.fromkeys(r["layer"] for r in rows))}

    @classmethod
    def order_key(cls, row: Mapping, config: Mapping) -> tuple:
        """Layers in depth order, units in probe.units order, as train() writes them; others after, in
        natural order (hidden2 < hidden10)."""
        layers = list(config.get(PROBE_LAYERS_KEY) or [])
        units = list(config.get("probe", {}).get("units") or [])
        layer, unit = row["layer"], row["unit"]
        return (
            layers.index(layer) if layer in layers else len(layers), natural_order(layer),
            units.index(unit) if unit in units else len(units), unit,
        )  # fmt: skip

    @classmethod
    def rows_from_wandb(cls, step: int, entry: Mapping) -> list[dict]:
        units: dict[tuple[str, str], dict] = {}  # (layer, unit) -> its statistics
        layers: dict[str, dict] = {}
        for key, value in entry.items():
            if not key.startswith("act/"):
                continue
            head, stat = key[len("act/") :].rsplit("/", 1)
            if stat in LAYER_STATS:
                layers.setdefault(head, {})[stat] = value
            elif stat in UNIT_STATS:
                layer, unit = head.rsplit("/", 1)
                units.setdefault((layer, unit), {})[stat] = value
        rows = []
        for (layer, unit), stats in units.items():
            values = {**stats, **layers.get(layer, {})}
            row = {"step": step, "layer": layer, "unit": int(unit)}
            row.update(
                {
                    c: math.nan if values.get(c) is None else float(values[c])
                    for c in (*UNIT_STATS, *LAYER_STATS)
                }
            )
            rows.append(row)
        return rows


ACTIVATIONS_COLUMNS = ("step", *Activations.columns)
