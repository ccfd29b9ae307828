"""The measurement seam: what a measurement is, when the loop runs it, and what it may not touch.

    @register_measurement("my_measure")
    class MyMeasure(Measurement):
        columns = ("layer", "value")          # besides `step`, which always comes first
        index = ("layer",)                    # the columns that tell a step's rows apart (wandb key path)
        def measure(self, ctx) -> list[dict]: ...

`measure.my_measure.every: N` (0: off) runs it every N steps; its other keys under `measure.my_measure`
are the class's keyword options. Its rows go to `my_measure.csv` in the run dir and to wandb under
`my_measure/<index values>/<column>`, come back from wandb with scripts/export_wandb.py, and are read by
the figure tools (bn_repro/records/run_files.read_measurement); none of that code names a measurement.

A measurement never perturbs training: the loop runs it under `isolated`, which restores every
parameter, gradient, buffer (BN running statistics), training flag, the optimizer state and the global
RNGs afterwards, so a run with and without it gives identical metrics.
"""

from __future__ import annotations

import abc
import copy
import inspect
import math
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from bn_repro.errors import UserError
from bn_repro.registry_index import EVERY, REQUIRED, Entry, every_problem, option_problem
from bn_repro.schema import show, spec, unknown_measurement

# before_step: at step s, before its update (the parameters of step s - 1, the batch of step s).
# after_step: after step s's update, with the batch it used; also at step 0 (no batch) and at the last step.
PHASES = ("before_step", "after_step")


class MeasureConfigError(UserError, ValueError):
    """An unknown measurement, option or cadence (the app reports it as one line, exit code 2)."""


@dataclass
class MeasureContext:
    """What a measurement sees. `model` is the plain model (not DDP-wrapped, not compiled)."""

    step: int
    model: nn.Module
    batch: tuple[Tensor, Tensor] | None  # (inputs, targets) as the loss saw them; None at step 0
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    optimizer: torch.optim.Optimizer
    data: Any  # bn_repro.data.DeviceDataset
    device: torch.device
    config: Mapping[str, Any] = field(default_factory=dict)  # the resolved run config
    # The inputs of the model's probe points (model.probe_points()) on the first test images, in eval mode,
    # (N, ...) per point, where the caller computed them already (a batched group's evaluation forward
    # of all its members); a measurement may read them in place of running that forward itself.
    probe_inputs: Mapping[str, Tensor] | None = None


class Measurement(abc.ABC):
    """Base class; subclasses set `columns` and implement `measure`. Keyword options of `__init__` are
    the config keys under `measure.<name>` (besides `every`)."""

    name: ClassVar[str] = ""
    columns: ClassVar[tuple[str, ...]] = ()
    # The columns that tell a step's rows apart (the wandb key path); empty: the leading string columns.
    index: ClassVar[tuple[str, ...]] = ()
    phase: ClassVar[str] = "after_step"
    # The wandb key prefix; the name unless a measurement keeps older keys (the probe's `act/`).
    wandb_prefix: ClassVar[str | None] = None

    def setup(self, ctx: MeasureContext) -> None:  # noqa: B027 - an optional hook, empty by default
        """Called once before the first measurement (e.g. to fix a probe set)."""

    @abc.abstractmethod
    def measure(self, ctx: MeasureContext) -> list[dict]:
        """The rows of this step: dicts with the `columns` (without `step`)."""

    # -- wandb: one key per (row, value column); tensors in the payload are logged as histograms.
    @classmethod
    def prefix(cls) -> str:
        return cls.wandb_prefix or cls.name

    @classmethod
    def index_columns(cls, rows: list[dict] | None = None) -> tuple[str, ...]:
        """`index`, or where a class leaves it empty, the leading columns that hold strings in `rows`
        (("layer", "value") with layer names: ("layer",)); the export reads as many leading columns
        from a key's path as it has parts."""
        if cls.index or not rows:
            return cls.index
        leading = []
        for column in cls.columns:
            if not all(isinstance(row.get(column), str) for row in rows):
                break
            leading.append(column)
        return tuple(leading)

    def wandb_payload(self, rows: list[dict]) -> dict[str, Any]:
        index = self.index_columns(rows)
        payload = {}
        for row in rows:
            path = "/".join([self.prefix(), *(str(row[c]) for c in index)])
            for column in self.columns:
                if column not in index:
                    payload[f"{path}/{column}"] = row[column]
        return payload

    def wandb_config(self, rows: list[dict]) -> dict[str, Any]:
        """Keys added to the wandb run's config at the first logged step (e.g. the order of its rows)."""
        return {}

    @classmethod
    def order_key(cls, row: Mapping[str, Any], config: Mapping[str, Any]) -> tuple:
        """The order of a step's rows in the run file when they come back from wandb (which keeps no
        key order); `config` is the wandb run's config. By default, natural order of the index values."""
        return tuple(natural_order(str(row[c])) for c in cls.index or cls.columns if isinstance(row[c], str))

    @classmethod
    def rows_from_wandb(cls, step: int, entry: Mapping[str, Any]) -> list[dict]:
        """The rows of one step back from a wandb history entry (the inverse of `wandb_payload`)."""
        head = cls.prefix() + "/"
        rows: dict[tuple[str, ...], dict] = {}
        for key, value in entry.items():
            if not key.startswith(head):
                continue
            parts = key[len(head) :].split("/")
            index_columns = cls.index or cls.columns[: len(parts) - 1]
            if len(parts) != len(index_columns) + 1 or parts[-1] not in cls.columns[len(index_columns) :]:
                continue
            index = tuple(parts[:-1])
            row = rows.setdefault(index, {"step": step, **dict(zip(index_columns, index, strict=True))})
            row[parts[-1]] = math.nan if value is None else value
        return [{c: row.get(c, math.nan) for c in ("step", *cls.columns)} for row in rows.values()]


def natural_order(text: str) -> list:
    """ "hidden2" before "hidden10"."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text) if t]


_REGISTRY: dict[str, type[Measurement]] = {}


def register_measurement(
    name: str, specs: Mapping[str, str] | None = None
) -> Callable[[type[Measurement]], type[Measurement]]:
    """Register a Measurement subclass as measure.<name>. `specs`: what its options take (bn_repro/
    schema.py, e.g. {"num_examples": "int >= 2"}), literals so that bn_repro/registry_index.py reads them
    before torch; an option without one takes what its annotation says."""

    def decorate(cls: type[Measurement]) -> type[Measurement]:
        if not (isinstance(cls, type) and issubclass(cls, Measurement)):
            raise TypeError(f"{cls!r} is not a Measurement subclass")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"a measurement named {name!r} is already registered ({_REGISTRY[name]})")
        if cls.phase not in PHASES:
            raise ValueError(f"{cls.__name__}.phase={cls.phase!r}; valid choices: {', '.join(PHASES)}")
        if "step" in cls.columns or not cls.columns:
            raise ValueError(
                f"{cls.__name__}.columns must be non-empty and must not hold `step` (it comes first)"
            )
        for option, text in (specs or {}).items():
            if option not in options_of(cls):
                raise TypeError(f"{cls.__name__}: specs names {option!r}, not one of its options")
            spec(text)  # raises ValueError for a spec that does not parse
        cls.name = name
        cls.option_specs = dict(specs or {})
        _REGISTRY[name] = cls
        return cls

    return decorate


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get(name: str) -> type[Measurement]:
    if name not in _REGISTRY:
        raise MeasureConfigError(unknown_measurement(name, {}, tuple(_REGISTRY)))
    return _REGISTRY[name]


def options_of(cls: type[Measurement]) -> dict[str, Any]:
    """The measurement's options and their defaults (the keyword parameters of its __init__)."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]  # without self
    return {p.name: p.default for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def _takes_any_option(cls: type[Measurement]) -> bool:
    return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(cls.__init__).parameters.values())


def declared(name: str) -> Entry:
    """The measurement as bn_repro/registry_index.py reads it from the source (what the checks use)."""
    cls = get(name)
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]  # without self
    params = [p for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    return Entry(
        name,
        {p.name: REQUIRED if p.default is p.empty else p.default for p in params},
        cls.__init__ is not object.__init__ and _takes_any_option(cls),
        {},
        dict(getattr(cls, "option_specs", {})),
        {p.name: _annotation(p.annotation) for p in params},
    )


def _annotation(annotation: Any) -> str | None:
    if annotation is inspect.Parameter.empty:
        return None
    return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)


def check_config(measure_cfg: Mapping[str, Any]) -> None:
    """Every `measure.<name>` entry: a registered name, `every` an integer >= 0, known options, each
    option's value (its spec or annotation, bn_repro/schema.py)."""
    for name, entry in (measure_cfg or {}).items():
        if name not in _REGISTRY:
            raise MeasureConfigError(unknown_measurement(name, entry, tuple(_REGISTRY)))
        if not isinstance(entry, Mapping):
            raise MeasureConfigError(
                f"measure.{name}={show(entry)}: expected a mapping (e.g. measure.{name}.every=100)"
            )
        problem = every_problem(name, entry.get("every")) or option_problem(
            f"measure.{name}", f"measure.{name}", declared(name), entry, extra={"every": EVERY}
        )
        if problem:
            raise MeasureConfigError(problem)


@dataclass
class Scheduled:
    measurement: Measurement
    every: int

    def due(self, step: int, phase: str, last_step: bool) -> bool:
        if self.measurement.phase != phase:
            return False
        if phase == "after_step" and (step == 0 or last_step):
            return True
        return step > 0 and step % self.every == 0


def build(measure_cfg: Mapping[str, Any]) -> list[Scheduled]:
    """The measurements switched on (every > 0) in `measure_cfg`, in config order."""
    check_config(measure_cfg)
    active = []
    for name, entry in (measure_cfg or {}).items():
        options = {k: v for k, v in entry.items() if k != "every"}
        if entry["every"] > 0:
            active.append(Scheduled(get(name)(**options), entry["every"]))
    return active


@contextmanager
def isolated(model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device) -> Iterator[None]:
    """Run a measurement so that training goes on exactly as without it: everything it could change
    (parameters, gradients, buffers, module modes, optimizer state, the global RNGs) is put back."""
    params = [(p, p.detach().clone(), None if p.grad is None else p.grad.clone()) for p in model.parameters()]
    buffers = [(b, b.clone()) for b in model.buffers()]
    modes = [(m, m.training) for m in model.modules()]
    optimizer_state = copy.deepcopy(optimizer.state_dict())
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
            yield
    finally:
        with torch.no_grad():
            for param, value, grad in params:
                param.copy_(value)
                param.grad = grad
            for buffer, value in buffers:
                buffer.copy_(value)
        for module, mode in modes:
            module.training = mode
        optimizer.load_state_dict(optimizer_state)
