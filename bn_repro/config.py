"""Checks on a resolved config that fail at once, before any data is loaded, naming the valid choices.

Hydra already rejects unknown config groups/options and unknown keys (the config is in struct mode);
these checks cover the values inside the groups.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DEVICES = ("auto", "cpu", "cuda")
PROBE_MODES = ("eval", "train")
OPTIMIZERS = ("sgd",)
SCHEDULES = ("constant", "exponential")
BACKWARDS = ("autograd", "explicit")


class ConfigError(ValueError):
    pass


def _get(cfg: Mapping[str, Any], dotted: str) -> Any:
    value: Any = cfg
    for key in dotted.split("."):
        value = value[key]
    return value


def _choice(cfg: Mapping[str, Any], dotted: str, choices) -> None:
    value = _get(cfg, dotted)
    if value not in choices:
        raise ConfigError(f"{dotted}={value!r} is not valid; valid choices: {', '.join(map(str, choices))}")


def _positive(cfg: Mapping[str, Any], dotted: str, allow_zero: bool = False) -> None:
    value = _get(cfg, dotted)
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{dotted}={value!r} is not valid; expected an integer >= {low}")


def _flag(cfg: Mapping[str, Any], dotted: str, also: tuple[str, ...] = ()) -> None:
    """true or false (YAML booleans, not 0/1), or one of the strings in `also`."""
    value = _get(cfg, dotted)
    if not isinstance(value, bool) and value not in also:
        choices = ", ".join(("true", "false", *also))
        raise ConfigError(f"{dotted}={value!r} is not valid; valid choices: {choices}")


def validate_config(cfg: Mapping[str, Any]) -> None:
    from bn_repro.accel import PRECISIONS
    from bn_repro.data import DATASETS
    from bn_repro.models import MODELS
    from bn_repro.models.layers import ACTIVATIONS, NORM_KINDS
    from bn_repro.tracking import LOGGERS, WANDB_MODES

    _choice(cfg, "data.name", DATASETS)
    _choice(cfg, "model.name", MODELS)
    if "activation" in cfg["model"]:
        _choice(cfg, "model.activation", ACTIVATIONS)
    _choice(cfg, "norm.kind", NORM_KINDS)
    if cfg["norm"]["kind"] == "custom":
        _choice(cfg, "norm.backward", BACKWARDS)
    _choice(cfg, "optim.name", OPTIMIZERS)
    _choice(cfg, "optim.schedule.name", SCHEDULES)
    _choice(cfg, "trainer.device", DEVICES)
    _choice(cfg, "probe.mode", PROBE_MODES)
    if "logger" in cfg:
        _choice(cfg, "logger.name", LOGGERS)
        if cfg["logger"]["name"] == "wandb":
            _choice(cfg, "logger.mode", WANDB_MODES)  # its default comes from WANDB_MODE
            _positive(cfg, "logger.init_timeout_s")
    _choice(cfg, "trainer.precision", PRECISIONS)
    _flag(cfg, "trainer.channels_last", also=("auto",))
    _flag(cfg, "trainer.compile")
    _flag(cfg, "data.augment")
    for key in ("data.batch_size", "trainer.max_steps", "trainer.eval_every", "trainer.log_every",
                "trainer.eval_batch_size", "probe.num_examples", "optim.schedule.decay_steps"):  # fmt: skip
        _positive(cfg, key)
    _positive(cfg, "trainer.population_stats_batches", allow_zero=True)
    _positive(cfg, "trainer.checkpoint_every", allow_zero=True)
    if not cfg["optim"]["lr"] > 0:
        raise ConfigError(f"optim.lr={cfg['optim']['lr']!r} is not valid; expected a number > 0")
