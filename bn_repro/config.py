"""The app's config: composing it (the one Hydra compose helper), resolving it, and the checks on its
values that fail at once, before any data is loaded, with one line naming the key:
`<key>=<value>: <what is expected>` (bn_repro/errors.py prints it as `error: ...`, exit code 2).

    check_values(cfg)       # no torch: every key's type and range (bn_repro/schema.py), then combinations
    check_components(cfg)   # torch: the registries' own checks, the model built on meta, the device

The keys, their types and ranges are declared in bn_repro/schema.py (the fixed part) and by their owners
(model options in bn_repro/models, norm and measurement options in their registries); what depends on
several keys at once is checked here. bn_repro/cli.py runs check_values on every job of a command line
before Hydra starts it; Hydra's own errors (unknown keys, presets, options) become one line there too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import bn_repro.resolvers  # noqa: F401  (the presets' ${bn.div:...} and ${bn.mul:...})
from bn_repro.errors import UserError
from bn_repro.schema import bad_choice, first_problem, show

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
# Training examples of the datasets with files (the generated one says its own: data.synthetic.num_train).
TRAIN_EXAMPLES = {"mnist": 60_000, "fashion_mnist": 60_000, "cifar10": 50_000}


class ConfigError(UserError, ValueError):
    """A config value the app cannot run with (exit code 2); the message is `<key>=<value>: <expected>`."""


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
    return resolve_configs([cfg])[0]


def resolve_configs(cfgs) -> list[dict[str, Any]]:
    """resolve_config of several jobs' configs (a batched group's members), the component checks (the
    model built on meta, ~0.1 s) once per distinct set of the sections they depend on (components_key)."""
    import copy

    from omegaconf import DictConfig, OmegaConf

    configs, checked = [], set()
    for cfg in cfgs:
        check_values(cfg)  # a DictConfig key by key: a value that does not resolve is named
        composed = isinstance(cfg, DictConfig)
        config = OmegaConf.to_container(cfg, resolve=True) if composed else copy.deepcopy(cfg)
        key = components_key(config)
        if key in checked:
            _check_device(config["trainer"]["device"])
        else:
            check_components(config)
            checked.add(key)
        configs.append(config)
    return configs


def components_key(cfg: Mapping[str, Any]) -> str:
    """What check_components depends on besides the device: jobs equal in these sections build the same
    norm, measurements and model, so one check covers them (a 560-job grid over lr, seed and init std
    builds a handful of models, not 560)."""
    import json

    return json.dumps([cfg.get(k) for k in ("data", "model", "norm", "measure")], default=str, sort_keys=True)


def validate_config(cfg: Mapping[str, Any]) -> None:
    """Every check: the values (no torch needed), then the registries and the model on meta."""
    check_values(cfg)
    check_components(cfg)


def check_values(cfg: Mapping[str, Any]) -> None:
    """The checks that need no torch, so that the app reports them within a second or two: every key's
    type and range (bn_repro/schema.py; `cfg` may be a DictConfig, resolved key by key), then what
    depends on several keys."""
    problem = first_problem(cfg)
    if problem:
        raise ConfigError(problem)
    if hasattr(cfg, "_get_node"):  # a DictConfig: every key resolves now
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(cfg, resolve=True)
    _check_combinations(cfg)


def _replicas() -> int:
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def _check_combinations(cfg: Mapping[str, Any]) -> None:
    """What no single key's spec can say: values that must agree with each other."""
    from bn_repro.data.catalog import dataset_shape

    data, optim, norm = cfg["data"], cfg["optim"], cfg["norm"]
    batch = data["batch_size"]
    train = data.get("synthetic", {}).get("num_train", 2000) if data["name"] == "synthetic" else (
        TRAIN_EXAMPLES.get(data["name"]))  # fmt: skip
    if train is not None and batch > train:
        raise ConfigError(
            f"data.batch_size={batch}: more than the {train} training examples of data.name={data['name']}; "
            f"expected at most {train}"
        )
    if data.get("sampler") == "few_classes":
        k = data.get("classes_per_batch")
        if k is None:
            raise ConfigError("data.classes_per_batch: missing; data.sampler=few_classes needs it")
        _, num_classes = dataset_shape(data["name"], data.get("synthetic"))
        if k > num_classes:
            raise ConfigError(
                f"data.classes_per_batch={k}: more than the {num_classes} classes of data.name={data['name']}"
            )
        if batch % k:
            raise ConfigError(
                f"data.batch_size={batch}: not a multiple of data.classes_per_batch={k} (data.sampler="
                f"few_classes puts batch_size / classes_per_batch examples of each class in a batch)"
            )
    if optim["nesterov"] and not optim["momentum"] > 0:
        raise ConfigError(
            f"optim.nesterov=true: needs optim.momentum > 0 (it is {show(optim['momentum'])}); "
            f"expected optim.nesterov=false or a momentum"
        )
    if norm.get("kind") == "ghost_bn":
        size, share = norm.get("virtual_batch_size", 128), batch // _replicas()
        if share % size:
            raise ConfigError(
                f"norm.virtual_batch_size={size}: does not divide the batch of {share} examples "
                f"(data.batch_size={batch}"
                + (f" over {_replicas()} processes" if _replicas() > 1 else "")
                + "); expected a divisor of it"
            )


def _registry_check(check, where: str) -> None:
    """Run a check of the registries or the model; their errors become ConfigErrors (one line)."""
    try:
        check()
    except ConfigError:
        raise
    except ValueError as error:  # the registries' and models' own errors name the bad value
        message = " ".join(str(error).split())
        raise ConfigError(message if "=" in message.partition(":")[0] else f"{where}: {message}") from error


def _no_init_on_meta():
    """A torch function mode under which torch.nn.init's initialisers and normal_ do nothing to a meta
    tensor (there are no values to draw): normal_ of a meta tensor runs through torch's Python
    reference, whose first use imports torch._dynamo: 1-1.6 s of the start of a process that trains
    nothing (a sweep's launcher checking its jobs; a training process imports it anyway, with its first
    torch.optim optimizer)."""
    import torch
    from torch.overrides import TorchFunctionMode

    class NoInitOnMeta(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            tensor = args[0] if args else kwargs.get("tensor")  # torch.nn.init passes it by name
            initialiser = func is torch.Tensor.normal_ or getattr(func, "__module__", None) == "torch.nn.init"
            if initialiser and isinstance(tensor, torch.Tensor) and tensor.is_meta:
                return tensor
            return func(*args, **kwargs)

    return NoInitOnMeta()


def _build_on_meta(cfg: Mapping[str, Any]) -> None:
    """Build the model on the meta device (no memory, no data): model options and norm options that
    depend on the layer widths (e.g. norm.groups) fail here, before any data is loaded, and so does a
    model too large for this machine's memory."""
    import torch

    from bn_repro import norms
    from bn_repro.data.catalog import dataset_shape
    from bn_repro.models import build_model

    shape, classes = dataset_shape(cfg["data"]["name"], cfg["data"].get("synthetic"))
    with torch.device("meta"), _no_init_on_meta():
        model = build_model(cfg["model"], norms.factory(cfg["norm"]), shape, classes)
    parameters = sum(p.numel() for p in model.parameters())
    # Weights, gradients, the momentum buffer and as much again for activations and copies: a floor.
    need = parameters * 4 * 4
    have = _memory_bytes(cfg["trainer"]["device"])
    if have and need > have:
        options = ", ".join(f"model.{k}={show(v)}" for k, v in cfg["model"].items() if k != "name")
        raise ConfigError(
            f"model.name={cfg['model']['name']} ({options}): {parameters:,} parameters need at least "
            f"{need / 2**30:.0f} GiB, more than the {have / 2**30:.0f} GiB of memory here; expected a "
            f"smaller model"
        )


def _memory_bytes(device: str) -> int | None:
    """Memory of the device a run would use (None: unknown)."""
    import torch

    if device in ("cuda", "auto") and torch.cuda.is_available():
        return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_components(cfg: Mapping[str, Any], device: bool = True) -> None:
    """The norm and measurement registries' checks, the model built on the meta device and (`device`)
    the device (these import torch: the registries are its modules)."""
    from bn_repro import measures, norms

    kind = cfg["norm"].get("kind")
    if kind not in norms.names():
        raise ConfigError(bad_choice("norm.kind", kind, norms.names()))
    _registry_check(lambda: norms.factory(cfg["norm"]), f"norm.kind={kind}")
    _registry_check(lambda: measures.build(cfg.get("measure") or {}), "measure")
    for name, entry in (cfg.get("measure") or {}).items():  # those switched off too: their own checks
        options = {k: v for k, v in entry.items() if k != "every"}
        _registry_check(lambda name=name, options=options: measures.get(name)(**options), f"measure.{name}")
    _registry_check(lambda: _build_on_meta(cfg), f"model.name={cfg['model']['name']}")
    if device:
        _check_device(cfg["trainer"]["device"])


def _check_device(name: str) -> None:
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "trainer.device='cuda': CUDA is not available here (torch.cuda.is_available() is false); "
            "expected auto or cpu"
        )
