"""The app's config: composing it (the one Hydra compose helper), resolving it, and the checks on the
resolved values that fail at once, before any data is loaded, naming the valid choices.

Hydra already rejects unknown config groups/options and unknown keys (the config is in struct mode);
these checks cover the values inside the groups. Choices come from their owners: norms and
measurements from their registries, datasets, models, precisions and loggers from their modules.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import bn_repro.resolvers  # noqa: F401  (the presets' ${bn.div:...} and ${bn.mul:...})
from bn_repro.errors import UserError

DEVICES = ("auto", "cpu", "cuda")
OPTIMIZERS = ("sgd",)
SCHEDULES = ("constant", "exponential")
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


class ConfigError(UserError, ValueError):
    """A config value the app cannot run with (exit code 2)."""


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


def compose(
    overrides: list[str] | None = None, config_name: str = "train", return_hydra_config: bool = False
):
    """The app's config for `overrides`, as `python -m bn_repro.train OVERRIDES` composes it (with the
    `hydra` node too when `return_hydra_config`)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
            return hydra_compose(
                config_name=config_name,
                overrides=list(overrides or []),
                return_hydra_config=return_hydra_config,
            )
    finally:
        GlobalHydra.instance().clear()


def resolve_config(cfg) -> dict[str, Any]:
    """A plain, fully resolved copy of a DictConfig (or dict), validated."""
    import copy

    from omegaconf import DictConfig, OmegaConf

    config = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else copy.deepcopy(cfg)
    validate_config(config)
    return config


def _registry_check(check) -> None:
    try:
        check()
    except ValueError as error:  # the registries' own errors name the bad value and the choices
        raise ConfigError(str(error)) from error


def _build_on_meta(cfg: Mapping[str, Any]) -> None:
    """Build the model on the meta device (no memory, no data): model options and norm options that
    depend on the layer widths (e.g. norm.groups) fail here, before any data is loaded."""
    import torch

    from bn_repro import norms
    from bn_repro.data.catalog import dataset_shape
    from bn_repro.models import build_model

    shape, classes = dataset_shape(cfg["data"]["name"], cfg["data"].get("synthetic"))
    with torch.device("meta"):
        build_model(cfg["model"], norms.factory(cfg["norm"]), shape, classes)


def validate_config(cfg: Mapping[str, Any]) -> None:
    """Every check: the values (no torch needed), then the registries' choices and the model on meta."""
    check_values(cfg)
    check_components(cfg)


def check_values(cfg: Mapping[str, Any]) -> None:
    """The checks that need no torch, so that the app reports them within a second or two."""
    from bn_repro.data.catalog import DATASETS
    from bn_repro.engine.fast_path import PRECISIONS
    from bn_repro.models import MODELS
    from bn_repro.models.activations import ACTIVATIONS
    from bn_repro.records.tracking import LOGGERS, WANDB_MODES

    _choice(cfg, "data.name", DATASETS)
    _choice(cfg, "model.name", MODELS)
    if "activation" in cfg["model"]:
        _choice(cfg, "model.activation", ACTIVATIONS)
    _choice(cfg, "optim.name", OPTIMIZERS)
    _choice(cfg, "optim.schedule.name", SCHEDULES)
    _choice(cfg, "trainer.device", DEVICES)
    threads = _get(cfg, "trainer.threads")
    if threads != "auto" and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"trainer.threads={threads!r} is not valid; expected auto or an integer >= 1")
    if "logger" in cfg:
        _choice(cfg, "logger.name", LOGGERS)
        if cfg["logger"]["name"] == "wandb":
            _choice(cfg, "logger.mode", WANDB_MODES)  # its default comes from WANDB_MODE
            _positive(cfg, "logger.init_timeout_s")
    _choice(cfg, "trainer.precision", PRECISIONS)
    _flag(cfg, "trainer.channels_last", also=("auto",))
    _flag(cfg, "trainer.compile")
    _flag(cfg, "data.augment")
    _check_sampler(cfg)
    for key in ("data.batch_size", "trainer.max_steps", "trainer.eval_every", "trainer.log_every",
                "trainer.eval_batch_size", "probe.num_examples", "optim.schedule.decay_steps"):  # fmt: skip
        _positive(cfg, key)
    if cfg["trainer"].get("eval_examples") is not None:
        _positive(cfg, "trainer.eval_examples")
    _positive(cfg, "trainer.population_stats_batches", allow_zero=True)
    _positive(cfg, "trainer.checkpoint_every", allow_zero=True)
    if not cfg["optim"]["lr"] > 0:
        raise ConfigError(f"optim.lr={cfg['optim']['lr']!r} is not valid; expected a number > 0")
    _check_registered(cfg)


def _check_registered(cfg: Mapping[str, Any]) -> None:
    """norm.kind, the norm's options and the measurements' names and options, from the registries'
    source files (bn_repro/registry_index.py) while the registries themselves (torch modules) are not
    imported; once they are, check_components asks them."""
    import sys

    from bn_repro import registry_index as index

    norm = cfg.get("norm")
    if "bn_repro.norms" not in sys.modules and isinstance(norm, Mapping) and "kind" in norm:
        entries = index.norm_index()
        _choice(cfg, "norm.kind", tuple(entries))
        entry = entries[norm["kind"]]
        given = {k: v for k, v in norm.items() if k != "kind"}
        problem = index.option_problem(
            f"norm.kind={entry.name}", "norm", entry.options, entry.open, entry.choices, given
        )
        if problem:
            raise ConfigError(problem)
    if "bn_repro.measures" not in sys.modules:
        measures = index.measure_index()
        for name, given in (cfg.get("measure") or {}).items():
            if name not in measures:
                raise ConfigError(f"unknown measurement {name!r}; valid choices: {', '.join(measures)}")
            given = given if isinstance(given, Mapping) else {}
            problem = index.every_problem(name, given.get("every"))
            entry = measures[name]
            if problem is None and entry is not None:
                problem = index.option_problem(
                    f"measure.{name}", f"measure.{name}", entry.options, entry.open, None, given,
                    extra=("every",),
                )  # fmt: skip
            if problem:
                raise ConfigError(problem)


def _check_sampler(cfg: Mapping[str, Any]) -> None:
    from bn_repro.data.catalog import SAMPLERS, dataset_shape

    data = cfg["data"]
    if "sampler" not in data:  # configs written before data.sampler: the i.i.d. order
        return
    _choice(cfg, "data.sampler", SAMPLERS)
    if data["sampler"] != "few_classes":
        return
    _positive(cfg, "data.classes_per_batch")
    k, batch = data["classes_per_batch"], data["batch_size"]
    _, num_classes = dataset_shape(data["name"], data.get("synthetic"))
    if k > num_classes:
        raise ConfigError(
            f"data.classes_per_batch={k} is more than the {num_classes} classes of data={data['name']}"
        )
    if isinstance(batch, int) and batch % k:
        raise ConfigError(
            f"data.batch_size={batch} is not a multiple of data.classes_per_batch={k} (data.sampler="
            f"few_classes puts batch_size / classes_per_batch examples of each class in a batch)"
        )


def check_components(cfg: Mapping[str, Any]) -> None:
    """The norm and measurement registries' checks and the model built on the meta device (these import
    torch: the registries are its modules)."""
    from bn_repro import measures, norms

    _choice(cfg, "norm.kind", norms.names())
    _registry_check(lambda: norms.factory(cfg["norm"]))
    _registry_check(lambda: measures.build(cfg.get("measure") or {}))
    _registry_check(lambda: _build_on_meta(cfg))
