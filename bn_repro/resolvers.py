"""OmegaConf resolvers the presets use for values that follow from others (registered on import):

    trainer.max_steps: ${bn.div:${train_examples},${data.batch_size}}   # a fixed number of examples
    optim.lr: ${bn.mul:0.003125,${data.batch_size}}                      # lr scaled linearly with the batch

`bn.div` is an integer division when both sides are integers (at least 1), `bn.mul` a product. Torch-free,
so the app registers them before Hydra composes a config.

Two more write the app's --help (configs/hydra/help/bn_repro.yaml) from the config files themselves:

    ${bn.help_presets:experiment}                  # one line per preset: its name and first comment line
    ${bn.help_groups:${hydra.runtime.choices}}     # each config group, its options, the chosen one starred

Files and folders whose name starts with `_` are internal (shared parts of presets) and left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from omegaconf import OmegaConf

__all__ = ["CONFIG_DIR", "group_options", "help_groups", "help_presets", "preset_summary", "register"]

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
ENTRY_CONFIG = "train.yaml"


def _number(value, name: str):
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"${{{name}:...}} expects numbers, got {value!r}")
    return value


def _div(a, b):
    a, b = _number(a, "bn.div"), _number(b, "bn.div")
    if b == 0:
        raise ValueError("${bn.div:a,b}: b is 0")
    if isinstance(a, int) and isinstance(b, int):
        return max(a // b, 1)  # a step count: at least one
    return a / b


def _mul(*values):
    product = 1
    for value in values:
        product *= _number(value, "bn.mul")
    return product


# ---------------------------------------------------------------- --help, from the config files


def _public(relative: Path) -> bool:
    return not any(part.startswith("_") for part in relative.parts)


def group_options(group: str, config_dir: Path = CONFIG_DIR) -> list[str]:
    """The public options of a config group: its .yaml files (sub-folders as `sub/name`), sorted."""
    directory = config_dir / group
    return sorted(
        path.relative_to(directory).with_suffix("").as_posix()
        for path in directory.rglob("*.yaml")
        if _public(path.relative_to(directory))
    )


def preset_summary(path: Path) -> str:
    """The first comment line of a config file, `# @package` lines skipped; "" when it has none."""
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped.startswith("#"):
            if stripped:
                break  # the comment header is over
            continue
        text = stripped.lstrip("#").strip()
        if text and not text.startswith("@package"):
            return text
    return ""


def help_presets(group: str = "experiment", config_dir: Path = CONFIG_DIR) -> str:
    """One line per public option of `group`: `  name   first comment line`."""
    names = group_options(group, config_dir)
    if not names:
        return f"  (none: no .yaml files in {config_dir / group})"
    width = max(len(name) for name in names) + 2
    lines = []
    for name in names:
        summary = preset_summary(config_dir / group / f"{name}.yaml")
        lines.append(f"  {name:<{width}}{summary or '(no description: its file has no comment line)'}")
    return "\n".join(lines)


def _entry_defaults(config_dir: Path) -> dict[str, str | None]:
    """group -> default option, from the entry config's defaults list (`_self_` and overrides left out)."""
    defaults: dict[str, str | None] = {}
    for entry in OmegaConf.load(config_dir / ENTRY_CONFIG).get("defaults", []):
        if isinstance(entry, Mapping):
            for key, value in entry.items():
                if not str(key).startswith("override "):
                    defaults[str(key)] = None if value is None else str(value)
    return defaults


def help_groups(
    choices: Mapping | None = None, config_dir: Path = CONFIG_DIR, presets: str = "experiment"
) -> str:
    """Each app config group of the entry config's defaults list (Hydra's own left out), one per line:
    `  group: a, *b*, c` with the chosen option (`choices`, e.g. hydra.runtime.choices; else the default)
    starred, or `(default: none)`. The `presets` group, listed on its own (help_presets), gets a
    pointer there and its choice."""
    defaults = _entry_defaults(config_dir)
    groups = [g for g in defaults if g != "hydra" and _public(Path(g)) and (config_dir / g).is_dir()]
    width = max((len(g) for g in groups), default=0) + 2
    lines = []
    for group in groups:
        chosen = defaults[group]
        if choices is not None and group in choices:
            chosen = None if choices[group] is None else str(choices[group])
        if group == presets:
            listed = f"one of the presets above ({'chosen: ' + chosen if chosen else 'default: none'})"
        else:
            options = [f"*{o}*" if o == chosen else o for o in group_options(group, config_dir)]
            listed = ", ".join(options) + ("" if chosen is not None else "   (default: none)")
        lines.append(f"  {group + ':':<{width}}{listed}")
    return "\n".join(lines)


def _template_text(text: str) -> str:
    # Hydra fills the help template with string.Template after OmegaConf resolved it: keep `$` literal.
    return text.replace("$", "$$")


def register() -> None:
    for name, fn in (
        ("bn.div", _div),
        ("bn.mul", _mul),
        ("bn.help_presets", lambda group="experiment": _template_text(help_presets(str(group)))),
        ("bn.help_groups", lambda choices=None: _template_text(help_groups(choices))),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register()
