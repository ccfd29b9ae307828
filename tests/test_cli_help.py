"""`python -m bn_repro.train --help`: what the app does, every public preset with its line, the public
config groups, and examples that compose (configs/hydra/help/bn_repro.yaml, bn_repro/resolvers.py)."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest
from conftest import REPO, compose_config
from omegaconf import OmegaConf

from bn_repro.config import CONFIG_DIR, check_values
from bn_repro.resolvers import group_options, help_groups, help_presets, preset_summary

PUBLIC_PRESETS = sorted(
    p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml") if not p.stem.startswith("_")
)
INTERNAL = sorted(
    p.relative_to(CONFIG_DIR / "experiment").with_suffix("").as_posix()
    for p in (CONFIG_DIR / "experiment").rglob("*.yaml")
    if any(part.startswith("_") for part in p.relative_to(CONFIG_DIR / "experiment").parts)
)

# --help in-process, so the probe can tell whether torch was imported on the way.
PROBE = """
import runpy, sys
sys.argv = ["bn_repro.train", "--help", *{overrides!r}]
try:
    runpy.run_module("bn_repro.train", run_name="__main__", alter_sys=True)  # python -m bn_repro.train
    code = None
except SystemExit as exit:
    code = exit.code
print("@@ exit code:", code)
print("@@ torch imported:", "torch" in sys.modules)
"""


def run_help(*overrides: str) -> str:
    result = subprocess.run([sys.executable, "-c", PROBE.format(overrides=list(overrides))], cwd=REPO,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "@@ exit code: 0" in result.stdout, result.stdout + result.stderr
    assert "@@ torch imported: False" in result.stdout
    return result.stdout


@pytest.fixture(scope="module")
def help_text() -> str:
    return run_help()


def section(text: str, title: str) -> list[str]:
    """The lines of the `== title... ==` section, up to the next blank line."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"== {title}"))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start + 1 : end]


def test_help_says_what_the_app_does(help_text):
    assert help_text.startswith("python -m bn_repro.train: trains the networks of the Batch Normalization")
    assert "powered by Hydra" not in help_text  # Hydra's stock header is gone
    assert "Usage: python -m bn_repro.train" in help_text
    assert "$" not in help_text.replace("$$", "")  # every template placeholder was filled


def test_every_public_preset_has_its_line_and_no_internal_one_shows(help_text):
    assert len(PUBLIC_PRESETS) > 20 and INTERNAL  # the glob found the presets and the internal parts
    lines = section(help_text, "Experiment presets")
    listed = {line.split()[0]: line.split(None, 1)[1] for line in lines}
    assert sorted(listed) == PUBLIC_PRESETS
    for name in PUBLIC_PRESETS:
        assert listed[name] == preset_summary(CONFIG_DIR / "experiment" / f"{name}.yaml")
    for internal in INTERNAL:
        assert internal not in help_text
    assert "/_" not in help_text and " _" not in help_text


@pytest.mark.parametrize("name", PUBLIC_PRESETS)
def test_each_preset_starts_with_a_one_line_summary(name):
    """The first comment line is the preset's line in --help: a sentence of its own, not the start of
    a paragraph or a command."""
    summary = preset_summary(CONFIG_DIR / "experiment" / f"{name}.yaml")
    assert summary and not summary.startswith(("python", "@package"))
    assert summary.endswith(".") and len(summary) <= 80, summary


def test_groups_list_public_options_and_mark_the_choice(help_text):
    lines = {line.split(":")[0].strip(): line for line in section(help_text, "Config groups")}
    assert {"data", "model", "norm", "optim", "trainer", "logger", "measure", "experiment",
            "hparams_search", "hydra/launcher"} <= set(lines)  # fmt: skip
    assert "wandb_sweep" not in lines  # a folder of `wandb sweep` files, not a group of the app
    assert lines["data"].split(":", 1)[1].split() == ["cifar10,", "fashion_mnist,", "*mnist*,", "synthetic"]
    assert "*builtin*" in lines["norm"] and "one of the presets above (default: none)" in lines["experiment"]
    for launcher in ("basic", "parallel", "slurm", "batched"):
        assert launcher in help_text.split("hydra/launcher:")[1].split("==")[0]


def test_help_follows_the_command_line():
    text = run_help("experiment=fig1_fashion_mnist", "norm=none")
    lines = {line.split(":")[0].strip(): line for line in section(text, "Config groups")}
    assert "*fashion_mnist*" in lines["data"] and "*none*" in lines["norm"]
    assert "(chosen: fig1_fashion_mnist)" in lines["experiment"]


def expand(arguments: list[str]) -> list[list[str]]:
    """A command line's jobs: the overrides of each combination of comma-separated sweep values."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    jobs = []
    for override in OverridesParser.create().parse_overrides(arguments):
        key = override.get_key_element()
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [
            override.get_value_element_as_str()
        ]  # fmt: skip
        jobs.append([f"{key}={value}" for value in values])
    return [list(combination) for combination in itertools.product(*jobs)]


def test_the_examples_compose(help_text):
    commands = [line.split("#")[0].split() for line in section(help_text, "Examples")]
    assert len(commands) == 3
    assert all(command[:3] == ["python", "-m", "bn_repro.train"] for command in commands)
    one_run, fig1, smoke = (command[3:] for command in commands)
    assert "-m" not in one_run and fig1[0] == "-m" and "data=synthetic" in smoke
    assert "experiment=fig1_mnist" in fig1 or "experiment=fig1_fashion_mnist" in fig1
    jobs = [expand(one_run), expand(fig1[1:]), expand(smoke)]
    assert [len(j) for j in jobs] == [1, 2, 1]  # the Fig. 1 pair: without and with BN
    norms = set()
    for overrides in itertools.chain(*jobs):
        cfg = OmegaConf.to_container(compose_config(overrides), resolve=True)
        check_values(cfg)
        norms.add(cfg["norm"]["kind"])
    assert {"none", "builtin"} <= norms


# ---------------------------------------------------------------- the resolvers on a config folder


def write(path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_resolvers_on_a_small_config_folder(tmp_path):
    write(tmp_path / "train.yaml", "defaults:\n  - data: a\n  - hydra: default\n  - _self_\n"
          "  - experiment: null\n  - override hydra/help: x\n")  # fmt: skip
    write(tmp_path / "data" / "a.yaml", "name: a\n")
    write(tmp_path / "data" / "b.yaml", "name: b\n")
    write(tmp_path / "data" / "_shared.yaml", "name: s\n")
    write(tmp_path / "experiment" / "one.yaml", "# @package _global_\n# The first one.\n# More.\nx: 1\n")
    write(tmp_path / "experiment" / "two.yaml", "\n# Costs $5.\n")
    write(tmp_path / "experiment" / "bare.yaml", "x: 1\n# Not a header comment.\n")
    write(tmp_path / "experiment" / "_parts" / "base.yaml", "# Internal.\n")
    write(tmp_path / "experiment" / "_hidden.yaml", "# Internal.\n")
    write(tmp_path / "experiment" / "sub" / "three.yaml", "# In a sub-folder.\n")
    write(tmp_path / "hydra" / "launcher" / "l.yaml", "# @package hydra.launcher\n")

    assert group_options("experiment", tmp_path) == ["bare", "one", "sub/three", "two"]
    assert preset_summary(tmp_path / "experiment" / "one.yaml") == "The first one."
    assert preset_summary(tmp_path / "experiment" / "bare.yaml") == ""
    presets = help_presets("experiment", tmp_path).splitlines()
    assert presets == [
        "  bare       (no description: its file has no comment line)",
        "  one        The first one.",
        "  sub/three  In a sub-folder.",
        "  two        Costs $5.",
    ]
    assert help_groups(None, tmp_path).splitlines() == [
        "  data:       *a*, b",
        "  experiment: one of the presets above (default: none)",
    ]
    assert help_groups({"data": "b", "experiment": "one"}, tmp_path).splitlines() == [
        "  data:       a, *b*",
        "  experiment: one of the presets above (chosen: one)",
    ]


def test_the_registered_resolvers_escape_dollars_for_hydra():
    import bn_repro.resolvers  # noqa: F401  (registers them)

    cfg = OmegaConf.create({"presets": "${bn.help_presets:experiment}", "groups": "${bn.help_groups:}"})
    assert cfg.presets == help_presets("experiment").replace("$", "$$")
    assert cfg.groups == help_groups(None).replace("$", "$$")
