"""The command line checked before Hydra runs it: one line for each kind of mistake, exit code 2.

    preflight(sys.argv[1:])      # raises ConfigError; returns when Hydra may go ahead

bn_repro/train.py's main() calls it before Hydra. It composes the config the way Hydra will (the same
config dir, overrides and run mode) and checks the values of every job the command would start
(bn_repro/config.check_values, no torch): a run's config, or each job of a multirun under the basic
sweeper (`-m norm=none,builtin seed=0,1,2`, the presets' hydra.sweeper.params), whose models are also
built on the meta device (check_components, without the device check: a sweep may be submitted from a
machine without the jobs' GPUs). Other sweepers (Optuna) get their base config checked; each trial is
checked by the job itself. Hydra's own errors become one line here too:

    model.hidnen=3        error: model.hidnen=3: model has no key hidnen; did you mean model.hidden?
    experiment=fig1_mnst  error: experiment=fig1_mnst: no such preset; did you mean experiment=fig1_mnist? ...
    norm=nope             error: norm=nope: no such option; valid choices: batch_renorm, builtin, ...
    optim.lr=[1,          error: optim.lr=[1,: not a valid override (...); see ...

Hydra would compose the same config again, so a valid command pays one extra composition (about 0.1 s;
a multirun one per job). --cfg gets Hydra's errors as one line but no value checks (it shows the config
as composed); --help, --info, --shell-completion and commands that point Hydra at another config dir
(-cp, -cd) are Hydra's alone. HYDRA_FULL_ERROR=1 shows the traceback of any of these errors
(bn_repro/errors.reported).
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from bn_repro.config import CONFIG_DIR, ConfigError, check_components, check_values, components_key
from bn_repro.errors import UserError, reported
from bn_repro.schema import near

__all__ = ["check_command_line", "preflight"]

GRAMMAR = "https://hydra.cc/docs/advanced/override_grammar/basic/"
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def check_command_line(argv: list[str]) -> None:
    """preflight, its problem reported as `error: ...` on stderr and exit code 2. A failure of the check
    itself (not a problem of the command) is left to Hydra, which reports what it finds its own way."""
    with reported():
        try:
            preflight(argv)
        except UserError:
            raise
        except Exception:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise


def preflight(argv: list[str], config_name: str = "train") -> None:
    """Raise ConfigError for the first problem of the jobs `argv` would start (None: none found, or a
    command that is Hydra's alone)."""
    from hydra._internal.utils import get_args_parser
    from hydra.types import RunMode

    args = get_args_parser().parse_args(argv)
    if (args.help or args.hydra_help or args.info or args.shell_completion or args.config_path
            or args.config_dir or getattr(args, "experimental_rerun", None)):  # fmt: skip
        return
    if args.multirun and args.cfg:  # Hydra raises this as a traceback
        raise ConfigError(
            f"-m/--multirun with --cfg {args.cfg}: --cfg prints one job's config; leave out -m (and give "
            f"one value per key), or run the sweep without --cfg"
        )
    overrides = list(args.overrides)
    with _hydra() as loader:
        parsed = _parse(overrides, loader)
        compose = _composer(loader, args.config_name or config_name)
        base = compose(overrides, parsed)
        if args.cfg:  # --cfg prints the config it composes, bad values and all
            return
        if args.multirun or base.hydra.mode == RunMode.MULTIRUN:
            # Every job's values first (no torch: a typo answers at once), then the models on meta.
            checked = [(_check_job(job, label), label) for job, label in _jobs(base, parsed, loader, compose)]
            built: set[str] = set()
            for config, label in checked:
                key = components_key(config)
                if key not in built:
                    built.add(key)
                    _labelled(lambda config=config: check_components(config, device=False), label)
            return
        sweep = next((o for o in parsed if o.is_sweep_override()), None)
        if sweep is not None:
            raise ConfigError(
                f"{sweep.input_line}: a sweep over several values; add -m (--multirun) for one job per "
                f"value, or write [a,b] for a list"
            )
        _check_job(base, "")


@contextlib.contextmanager
def _hydra() -> Iterator[Any]:
    """Hydra's config loader for the app's config dir (and the plugins' configs: hydra/launcher=...)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
            yield GlobalHydra.instance().config_loader()
    finally:
        GlobalHydra.instance().clear()


def _parse(overrides: list[str], loader) -> list:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create(config_loader=loader)
    try:
        parsed = parser.parse_overrides(overrides)
        for override in parsed:
            if not override.key_or_group:
                raise ConfigError(f"{override.input_line}: not a valid override (no key); see {GRAMMAR}")
        return parsed
    except HydraException:
        for line in overrides:
            try:
                parser.parse_override(line)
            except HydraException as error:
                reason = _first_line(error)
                raise ConfigError(f"{line}: not a valid override ({reason}); see {GRAMMAR}") from error
        raise


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _composer(loader, config_name: str) -> Callable:
    """compose(overrides, parsed) -> the config as Hydra's multirun composes it (sweeps left out), or a
    ConfigError saying which override Hydra refused."""
    from hydra.types import RunMode

    def load(overrides: list[str]):
        return loader.load_configuration(
            config_name=config_name, overrides=overrides, run_mode=RunMode.MULTIRUN,
            validate_sweep_overrides=False,
        )  # fmt: skip

    def compose(overrides: list[str], parsed: list):
        try:
            return load(overrides)
        except ConfigError:
            raise
        except Exception as error:  # noqa: BLE001 - Hydra's and OmegaConf's errors, diagnosed
            raise _diagnosed(error, parsed, load) from error

    return compose


def _diagnosed(error: Exception, parsed: list, load: Callable) -> ConfigError:
    """One line for an error Hydra raised while composing: which override, what instead."""
    from hydra.errors import ConfigCompositionException, MissingConfigException

    text = str(error)
    if isinstance(error, MissingConfigException) and error.missing_cfg_file:
        return _missing_option(error, parsed)
    if isinstance(error, ConfigCompositionException):
        override = _named(text, parsed)
        if override is not None:
            line, key = override.input_line, override.key_or_group
            if text.startswith("Could not override") or text.startswith("Could not delete"):
                return ConfigError(f"{line}: {_no_such_key(key, parsed, override, load)}")
            if text.startswith("Could not append"):
                return ConfigError(
                    f"{line}: {key} is already in the config; set it without the +: {line[1:]}"
                )
            if "looks like a config group override" in text:
                return ConfigError(f"{line}: {_first_line(error).split(', but ')[-1]}")
            cause = error.__cause__
            return ConfigError(f"{line}: {_first_line(cause if cause is not None else error)}")
    return ConfigError(_first_line(error) + (f" ({_first_line(error.__cause__)})" if error.__cause__ else ""))


def _named(text: str, parsed: list):
    """The override an error message names."""
    for override in reversed(parsed):
        if f"'{override.key_or_group}'" in text or (override.input_line and override.input_line in text):
            return override
    return None


def _public(option: str) -> bool:
    return not any(part.startswith("_") for part in option.split("/"))


def _missing_option(error, parsed: list) -> ConfigError:
    group, _, option = error.missing_cfg_file.rpartition("/")
    options = [o for o in (error.options or []) if _public(o)]
    noun = "preset" if group == "experiment" else "option"
    hint = near(option, options)
    asked = any(o.key_or_group == group for o in parsed)
    head = f"{group}={option}" if asked else f"{group}={option} (named in a config's defaults list)"
    return ConfigError(
        f"{head}: no such {noun}"
        + (f"; valid choices: {', '.join(options)}" if options else "")
        + (f"; did you mean {group}={hint}?" if hint else "")
    )


def _no_such_key(key: str, parsed: list, culprit, load: Callable) -> str:
    """ "model has no key hidnen; did you mean model.hidden?" from the config composed without it."""
    others = [o.input_line for o in parsed if o is not culprit and not o.is_sweep_override()]
    groups = [o.input_line for o in parsed if o is not culprit and o.value_type is not None
              and "/" not in o.key_or_group and "." not in o.key_or_group]  # fmt: skip
    config = None
    for attempt in (others, groups, []):
        try:
            config = load(attempt)
            break
        except Exception:  # noqa: BLE001 - another override's error: try with fewer
            continue
    parent, _, leaf = key.rpartition(".")
    if config is None:
        return f"no such key {key}"
    keys = list(_flat_keys({k: v for k, v in config.items() if k != "hydra"}))
    node = config
    for part in parent.split(".") if parent else []:
        node = node.get(part) if hasattr(node, "get") else None
        if node is None:
            break
    if node is None or not hasattr(node, "keys"):  # a typo in a node's name: match the whole key
        hint = near(key, keys)
        return f"no such key {key}" + (f"; did you mean {hint}?" if hint else "")
    siblings = [str(k) for k in node.keys() if node is not config or k != "hydra"]
    hint = near(leaf, siblings)
    owner = parent or "the top level"
    if hint:
        return f"{owner} has no key {leaf}; did you mean {parent + '.' if parent else ''}{hint}?"
    return f"{owner} has no key {leaf}; its keys: {', '.join(siblings) or 'none'}"


def _flat_keys(node: Mapping, prefix: str = "") -> Iterator[str]:
    for key, value in node.items():
        path = f"{prefix}{key}"
        yield path
        if hasattr(value, "items"):
            yield from _flat_keys(value, path + ".")


def _jobs(base, parsed: list, loader, compose: Callable) -> Iterator[tuple[Any, str]]:
    """Each job of a multirun (its config and how to name it), as the basic sweeper will launch them;
    just the base config under another sweeper."""
    if str(base.hydra.sweeper.get("_target_")) != BASIC_SWEEPER:
        yield base, ""
        return
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    params = [f"{k}={v}" for k, v in (base.hydra.sweeper.get("params") or {}).items()]
    arguments = [*params, *(o.input_line for o in parsed)]
    try:
        sweep_parsed = OverridesParser.create(config_loader=loader).parse_overrides(arguments)
        (batch,) = BasicSweeper.split_arguments(sweep_parsed, None)
    except HydraException as error:
        line = next((o.input_line for o in parsed if o.is_sweep_override()
                     and not o.is_discrete_sweep()), "")  # fmt: skip
        if line:
            raise ConfigError(
                f"{line}: the basic sweeper takes lists of values (a,b,c, range(...), glob(...)), not "
                f"intervals; hydra/sweeper=optuna samples them"
            ) from error
        raise ConfigError(_first_line(error)) from error
    swept = {o.get_key_element() for o in sweep_parsed if o.is_sweep_override()}
    parser = OverridesParser.create(config_loader=loader)
    composed: dict[tuple[str, ...], Any] = {}
    for num, job_overrides in enumerate(batch):
        label = " ".join(o for o in job_overrides if o.partition("=")[0] in swept)
        try:
            config = _job_config(loader, parser, base, list(job_overrides), composed)
        except Exception as error:  # noqa: BLE001 - Hydra's errors, diagnosed as for a run
            job_parsed = OverridesParser.create(config_loader=loader).parse_overrides(list(job_overrides))
            diagnosed = _diagnosed(error, job_parsed, lambda o, parsed=job_parsed: compose(o, parsed))
            raise ConfigError(f"{diagnosed} (job {num} of the sweep: {label})") from error
        yield config, f"job {num} of the sweep: {label}"


def _job_config(loader, parser, base, overrides: list[str], composed: dict) -> Any:
    """A job's config as the launcher composes it (load_sweep_config), composed once per distinct choice of
    config groups: the jobs' plain `key=value` changes are then set on a copy, as Hydra sets them after
    composing (a full composition per job costs ~0.3 s: minutes for a grid of hundreds of jobs)."""
    from hydra.core.override_parser.types import OverrideType
    from omegaconf import OmegaConf, open_dict, read_write

    parsed = parser.parse_overrides(overrides)
    plain = [
        o for o in parsed
        if o.type == OverrideType.CHANGE and o.package is None and not o.is_hydra_override()
        and not loader.repository.group_exists(o.key_or_group)
    ]  # fmt: skip
    if not plain:
        return loader.load_sweep_config(base, overrides)
    rest = tuple(o.input_line for o in parsed if o not in plain)
    if rest not in composed:
        composed[rest] = loader.load_sweep_config(base, list(rest))
    config = copy.deepcopy(composed[rest])
    try:
        for override in plain:
            OmegaConf.update(config, override.key_or_group, override.value(), merge=True)
    except Exception:  # noqa: BLE001 - a key Hydra would refuse: its own composition says how
        return loader.load_sweep_config(base, overrides)
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra.overrides.task = [*config.hydra.overrides.task, *(o.input_line for o in plain)]
    return config


def _check_job(config, label: str) -> dict[str, Any]:
    """check_values on a job's config (without its hydra node), with HydraConfig set as in the job; the
    job's resolved config."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    hydra = HydraConfig.instance()
    previous = copy.copy(hydra.cfg)
    try:
        hydra.set_config(config)
        task = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        _labelled(lambda: check_values(task), label)
        return OmegaConf.to_container(task, resolve=True)
    finally:
        hydra.cfg = previous


def _labelled(check: Callable[[], None], label: str) -> None:
    """Run a check; a ConfigError says which job of a sweep it is about."""
    try:
        check()
    except ConfigError as error:
        if label:
            raise ConfigError(f"{error} ({label})") from error
        raise
