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
            "error: model.activation='tanh' is not valid; valid choices: sigmoid, relu",
        ),
        (["data.batch_size=0"], "error: data.batch_size=0 is not valid"),
        (["trainer.precision=fp8"], "error: trainer.precision='fp8' is not valid"),
        (["experiment=fig1_fashion_mnist"], "valid"),
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
    assert result.returncode != 0
    assert "model.activation='tanh' is not valid; valid choices: sigmoid, relu" in result.stderr
    assert not (tmp_path / "metrics.csv").exists()
