"""Mistakes on the command line (bn_repro/cli.py): one line `error: <key>=<value>: <what is expected>`,
exit code 2, no traceback; Hydra's own errors (unknown key, preset, option, bad syntax) included.

Most cases run in-process through bn_repro.cli.preflight, the function main() calls before Hydra; a
handful run the real command line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import CONFIG_DIR, REPO, compose_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from bn_repro.cli import preflight
from bn_repro.config import ConfigError

PUBLIC_PRESETS = sorted(
    p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml") if not p.stem.startswith("_")
)


def _error(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as error:
        preflight(overrides)
    message = str(error.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------------------ Hydra's errors


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.hidnen=3"], "model.hidnen=3: model has no key hidnen; did you mean model.hidden?"),
        (["trainer.max_step=10"], "trainer.max_step=10: trainer has no key max_step; did you mean"),
        (["modle.hidden=3"], "modle.hidden=3: no such key modle.hidden; did you mean model.hidden?"),
        (["~trainer.nope"], "~trainer.nope: trainer has no key nope; its keys: max_steps"),
        (["+seed=3"], "+seed=3: seed is already in the config; set it without the +: seed=3"),
        (["norm=nope"], "norm=nope: no such option; valid choices: batch_renorm, builtin, custom, ghost_bn, "
                        "groupnorm, layernorm, noisy_bn, none; did you mean norm=none?"),
        (["experiment=fig1_mnst"], "experiment=fig1_mnst: no such preset; valid choices: brn_non_iid"),
        (["hydra/launcher=nope"], "hydra/launcher=nope: no such option; valid choices: basic, batched"),
        (["optim.lr=[1,"], "optim.lr=[1,: not a valid override (no viable alternative at input '[1,'); see"),
        (["=3"], "=3: not a valid override (no key)"),
        (["norm=none,builtin"], "norm=none,builtin: a sweep over several values; add -m (--multirun)"),
    ],
)  # fmt: skip
def test_hydras_errors_are_one_line(overrides, message):
    assert _error(overrides).startswith(message)


def test_an_unknown_preset_lists_the_public_presets_only():
    message = _error(["experiment=fig1_mnst"])
    assert message.endswith("; did you mean experiment=fig1_mnist?")
    listed = message.partition("valid choices: ")[2].partition(";")[0].split(", ")
    assert listed == PUBLIC_PRESETS  # configs/experiment/_fig2/... are internal


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["-m", "norm=none,nope"], "norm=nope: no such option; valid choices: "),
        (["-m", "norm.momentum=0.1,2", "seed=0,1"], "norm.momentum=2: expected a number in [0, 1]"),
        (
            ["-m", "optim.lr=interval(0.1,1)"],
            "optim.lr=interval(0.1,1): the basic sweeper takes lists of values",
        ),
        (
            ["-m", "experiment=fig1_fashion_mnist_sweep", "+trainer.foo=1"],
            "trainer.foo=1: trainer has no key foo",
        ),
        (["hparams_search=fig1_lr", "optim.lr=abc"], "optim.lr='abc': expected a number >= 0"),
    ],
)
def test_each_job_of_a_sweep_is_checked_before_any_runs(overrides, message):
    assert _error(overrides).startswith(message)


def test_a_sweep_names_its_bad_job():
    assert _error(["-m", "norm.momentum=0.1,2", "seed=0,1"]).endswith(
        "(job 2 of the sweep: norm.momentum=2 seed=0)"
    )


def test_a_sweep_builds_each_model_on_meta():
    message = _error(["-m", "norm=groupnorm", "norm.groups=4,3"])
    assert message.startswith("norm.groups=3: does not divide a layer's 100 channels")
    assert message.endswith("(job 1 of the sweep: norm.groups=3)")


def test_a_multirun_with_cfg_is_one_line():
    with pytest.raises(ConfigError, match=r"^-m/--multirun with --cfg job: --cfg prints one job's config"):
        preflight(["-m", "norm=none,builtin", "--cfg", "job"])


def test_commands_that_are_hydras_alone_pass_through():
    for argv in (["--help"], ["--info"], ["-cd", "/nonexistent", "x=1"], ["--cfg", "job", "optim.lr=abc"]):
        preflight(argv)
    assert _error(["--cfg", "job", "model.hidnen=3"]).startswith("model.hidnen=3: model has no key hidnen")


# ------------------------------------------------------------------------------------------ properties

DEFAULT = OmegaConf.to_container(compose_config([]), resolve=True)


def _leaves(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


KEYS = sorted(k for k, _ in _leaves(DEFAULT) if k not in ("data.root", "experiment_name"))
GROUPS = ["experiment", "data", "model", "norm", "optim", "trainer", "logger", "measure"]
WORD = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10)


def _hydra(value) -> str:
    """A value as an override writes it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, list):
        return "[" + ",".join(_hydra(v) for v in value) + "]"
    return repr(value)


def _typo(key: str, i: int) -> str:
    head, _, leaf = key.rpartition(".")
    i %= len(leaf)
    leaf = leaf[:i] + leaf[i + 1 :] if len(leaf) > 2 else leaf + "x"
    return f"{head}.{leaf}" if head else leaf


VALUES = st.one_of(
    st.sampled_from([0, -1, -5, 1, 2, 10**9, 2**63, 99999999999999999999, 0.0, -0.5, 1.5, 1e-30, 1e9]),
    st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(), WORD,
    st.lists(st.sampled_from([0, 1, -5, 100, 2.5, "a", True]), max_size=3),
)  # fmt: skip

CASES = st.one_of(
    st.tuples(st.just("value"), st.sampled_from(KEYS), VALUES),
    st.tuples(st.just("typo"), st.sampled_from(KEYS), st.integers(0, 20)),
    st.tuples(st.just("unknown"), st.sampled_from(sorted({k.rpartition(".")[0] for k in KEYS if "." in k})),
              WORD),
    st.tuples(st.just("option"), st.sampled_from(GROUPS), WORD),
)  # fmt: skip


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(case=CASES)
def test_a_generated_mistake_is_one_line_naming_the_key(case):
    """Wrong types, signs, zeros, huge values, typos in keys, unknown `+keys` and unknown options, each
    through the function main() runs: accepted, or one line naming the key (never another exception)."""
    kind, key, extra = case
    if kind == "value":
        override = f"{key}={_hydra(extra)}"
    elif kind == "typo":
        key = _typo(key, extra)
        if key in KEYS:
            return
        override = f"{key}=3"
    elif kind == "unknown":
        key = f"{key}.{extra}"
        if key in KEYS or any(k.startswith(key + ".") for k in KEYS):
            return
        override = f"+{key}=1"
    else:
        override = f"{key}={extra}"
        if (CONFIG_DIR / key / f"{extra}.yaml").exists():
            return
    try:
        preflight([override])
    except ConfigError as error:
        message = str(error)
        assert "\n" not in message
        # The key is named (a combination check may name the other key of the pair first).
        assert message.startswith((f"{key}=", override)) or "=" in message.partition(": ")[0], message
        if kind != "value":
            assert message.startswith((f"{key}=", override)), message
    else:
        assert kind == "value", override  # typos, unknown keys and options never pass


# ------------------------------------------------------------------------------------------ the command line


def _app(*args: str, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    environment.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "bn_repro.train", *args], cwd=cwd or REPO,
                          env={**environment, **(env or {})}, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def _one_line(result: subprocess.CompletedProcess, start: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: {start}"), result.stderr


@pytest.mark.parametrize(
    ("args", "start"),
    [
        (["optim.lr=abc"], "optim.lr='abc': expected a number >= 0"),
        (["model.hidnen=3"], "model.hidnen=3: model has no key hidnen; did you mean model.hidden?"),
        (["experiment=nope"], "experiment=nope: no such preset; valid choices: brn_non_iid"),
        (["-m", "norm=none,nope"], "norm=nope: no such option"),
    ],
)
def test_the_command_line_answers_with_one_line(args, start, tmp_path):
    flags = [a for a in args if a.startswith("-")]  # Hydra's flags come before the overrides
    overrides = [a for a in args if not a.startswith("-")]
    dirs = [f"hydra.run.dir={tmp_path}", f"hydra.sweep.dir={tmp_path}"]
    _one_line(_app(*flags, "data=synthetic", *overrides, *dirs), start)
    assert not any(tmp_path.iterdir())  # nothing was started


@pytest.mark.parametrize(
    ("args", "start"),
    [
        (["norm=groupnorm", "norm.groups=3"], "norm.groups=3: does not divide a layer's 100 channels"),
        (["trainer.device=cuda"], "trainer.device='cuda': CUDA is not available here"),
    ],
    ids=["model on meta", "no CUDA"],
)
def test_a_job_answers_with_one_line_before_any_step(args, start, tmp_path):
    if "trainer.device=cuda" in args:
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
    result = _app("data=synthetic", "trainer.max_steps=2", *args, f"hydra.run.dir={tmp_path}")
    _one_line(result, start)
    assert not (tmp_path / "metrics.csv").exists()


def test_hydra_full_error_shows_the_traceback(tmp_path):
    result = _app(
        "data=synthetic", "optim.lr=abc", f"hydra.run.dir={tmp_path}", env={"HYDRA_FULL_ERROR": "1"}
    )
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "ConfigError: optim.lr='abc'" in result.stderr


PROBE = """
import runpy, sys
sys.argv = ["bn_repro.train", *{args!r}]
try:
    runpy.run_module("bn_repro.train", run_name="__main__", alter_sys=True)
    code = None
except SystemExit as exit:
    code = exit.code
print("@@ exit code:", code)
print("@@ torch imported:", "torch" in sys.modules)
"""


def test_a_typo_answers_before_torch_is_imported():
    result = subprocess.run([sys.executable, "-c", PROBE.format(args=["data=synthetic", "norm.momentum=2"])],
                            cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert "@@ exit code: 2" in result.stdout and "@@ torch imported: False" in result.stdout, result
    assert result.stderr.startswith("error: norm.momentum=2: expected a number in [0, 1]")


def test_a_sweeps_jobs_compose_as_the_launcher_composes_them():
    """Preflight composes once per choice of config groups and sets the plain key=value changes on a
    copy: each job's config must equal Hydra's own composition of it (load_sweep_config)."""
    from omegaconf import OmegaConf

    from bn_repro.cli import _composer, _hydra, _job_config, _parse

    overrides = ["norm=none,custom", "optim.lr=0.1,1", "model.init_std=0.03,null", "seed=0,1",
                 "model.hidden=[8,8]", "+trainer.eval_examples=100"]  # fmt: skip
    with _hydra() as loader:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = _parse(overrides, loader)
        base = _composer(loader, "train")(overrides, parsed)
        parser = OverridesParser.create(config_loader=loader)
        (batch,) = BasicSweeper.split_arguments(parser.parse_overrides(overrides), None)
        assert len(batch) == 16
        composed: dict = {}
        for job in batch:
            fast = _job_config(loader, parser, base, list(job), composed)
            slow = loader.load_sweep_config(base, list(job))
            task = [k for k in slow if k != "hydra"]
            assert OmegaConf.to_container(OmegaConf.masked_copy(fast, task), resolve=True) == (
                OmegaConf.to_container(OmegaConf.masked_copy(slow, task), resolve=True)
            ), job
            assert list(fast.hydra.overrides.task) == list(slow.hydra.overrides.task) or sorted(
                fast.hydra.overrides.task
            ) == sorted(slow.hydra.overrides.task)
        assert len(composed) == 2  # one composition per norm choice
