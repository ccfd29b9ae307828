"""Config errors come before torch is imported (the entry point and the value checks need no torch)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO

PROBE = """
import sys
from bn_repro.config import ConfigError, check_values, compose, resolve_config
from omegaconf import OmegaConf
cfg = OmegaConf.to_container(compose({overrides!r}), resolve=True)
try:
    check_values(cfg)
    print("valid")
except ConfigError as error:
    print("error:", error)
print("torch imported:", "torch" in sys.modules)
"""


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["model.activation=tanh"],
            "error: model.activation='tanh': valid choices: sigmoid, relu, identity",
        ),
        (["data.batch_size=0"], "error: data.batch_size=0: expected an integer >= 1"),
        (["trainer.precision=fp8"], "error: trainer.precision='fp8': valid choices: auto, fp32, bf16"),
        (["experiment=fig1_fashion_mnist"], "valid"),
        # The registries' checks, read from their source files (bn_repro/registry_index.py).
        (["norm.kind=nope"], "error: norm.kind='nope': valid choices: none, batch_renorm"),
        (["norm=custom", "norm.backward=paper"], "error: norm.backward='paper': valid choices: autograd"),
        (["norm=builtin", "+norm.groups=4"], "error: norm.groups=4: norm.kind=builtin takes no option"),
        (["norm=custom", "norm.eps=0"], "error: norm.eps=0: expected a number > 0"),
        (["measure.landscape.every=-1"], "error: measure.landscape.every=-1: expected an integer >= 0"),
        (["+measure.landscape.stepsize=2"], "error: measure.landscape.stepsize=2: measure.landscape"),
        (["+measure.nope.every=1"], "error: measure.nope={every: 1}: unknown measurement 'nope'"),
        (["experiment=santurkar_vgg_cpu"], "valid"),
    ],
)
def test_value_checks_need_no_torch(overrides, expected):
    out = subprocess.run([sys.executable, "-c", PROBE.format(overrides=overrides)], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert expected in out
    assert "torch imported: False" in out


def test_the_app_reports_a_bad_value_without_training(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bn_repro.train", "data=synthetic", "model.activation=tanh",
         f"hydra.run.dir={tmp_path}"], cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == "error: model.activation='tanh': valid choices: sigmoid, relu, identity\n"
    assert not (tmp_path / "metrics.csv").exists()


# Configs that the registries refuse, each for another reason.
BAD_REGISTRY_CONFIGS = [
    ["norm.kind=nope"],
    ["norm=custom", "norm.backward=paper"],
    ["norm=custom", "norm.impl=slow"],
    ["norm=builtin", "+norm.groups=4"],
    ["norm=groupnorm", "+norm.virtual_batch_size=4"],
    ["measure.landscape.every=-1"],
    ["measure.eval_stats.every=1.5"],
    ["+measure.landscape.stepsize=2"],
    ["+measure.ics_gradient.units=[0]"],
    ["+measure.nope.every=1"],
    ["norm=custom", "norm.eps=0"],
    ["norm=ghost_bn", "norm.virtual_batch_size=0"],
    ["norm=noisy_bn", "norm.ramp_steps=abc"],
    ["measure.eval_stats.eval_batch_size=[1,2]"],
]


def test_the_index_is_the_registries():
    """bn_repro/registry_index.py reads the same entries, options, defaults and choices as the
    registries hold once imported."""
    import inspect

    from bn_repro import measures, norms
    from bn_repro import registry_index as index

    def declared(options):
        return {k: index.REQUIRED if v is inspect.Parameter.empty else v for k, v in options.items()}

    def same(a, b):  # sequences in the source are tuples or lists; the registry keeps what was written
        return {k: tuple(v) if isinstance(v, list) else v for k, v in a.items()} == {
            k: tuple(v) if isinstance(v, list) else v for k, v in b.items()
        }

    assert tuple(index.norm_index()) == norms.names()
    for name, entry in index.norm_index().items():
        spec = norms.get(name)
        assert same(entry.options, declared(spec.defaults)), name
        assert entry.open == spec.open_options and entry.choices == spec.choices, name
        assert index.option_specs(entry) == index.option_specs(spec.declared()), name
    assert tuple(index.measure_index()) == measures.names()
    for name, entry in index.measure_index().items():
        assert entry is not None, name  # every measurement of the package is readable
        cls = measures.get(name)
        assert same(entry.options, declared(measures.options_of(cls))), name
        assert index.option_specs(entry) == index.option_specs(measures.base.declared(name)), name


@pytest.mark.parametrize("overrides", BAD_REGISTRY_CONFIGS, ids=" ".join)
def test_the_index_and_the_registries_say_the_same(overrides):
    """The same error, word for word, before torch (the index) and after (the registries)."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(overrides=overrides)], cwd=REPO, capture_output=True, text=True,
        check=True,
    ).stdout  # fmt: skip
    assert "torch imported: False" in out
    before = out.splitlines()[0]
    from omegaconf import OmegaConf

    from bn_repro.config import ConfigError, check_components, compose

    with pytest.raises(ConfigError) as error:
        check_components(OmegaConf.to_container(compose(overrides), resolve=True))
    assert before == f"error: {error.value}"


META_PROBE = """
import sys
from bn_repro.config import check_components, compose, resolve_config
from omegaconf import OmegaConf
for overrides in {configs!r}:
    check_components(OmegaConf.to_container(compose(overrides), resolve=True), device=False)
print("dynamo imported:", "torch._dynamo" in sys.modules)
"""


def test_models_checked_on_meta_do_not_import_dynamo():
    """check_components builds each model on the meta device; their random initialisers (normal_,
    kaiming_normal_) do nothing there, as torch's meta normal_ would import torch._dynamo (1-1.6 s of a
    process's start). A model too large for memory is still caught (tests/test_config_schema.py)."""
    configs = [["experiment=fig1_fashion_mnist"], ["experiment=santurkar_vgg_cpu"], ["model=inception"],
               ["model=linear_deep"]]  # fmt: skip
    out = subprocess.run([sys.executable, "-c", META_PROBE.format(configs=configs)], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "dynamo imported: False" in out
