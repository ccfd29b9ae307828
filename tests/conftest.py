"""Shared helpers: compose the app's config the way `python -m bn_repro.train` would."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


def compose_config(overrides: list[str] | None = None):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
            return compose(config_name="train", overrides=list(overrides or []))
    finally:
        GlobalHydra.instance().clear()


# Tiny runs on generated data: every loop path, a few seconds each.
SMOKE = [
    "data=synthetic",
    "data.synthetic.num_train=240",
    "data.synthetic.num_test=120",
    "trainer.max_steps=12",
    "trainer.eval_every=5",
    "trainer.log_every=4",
    "trainer.device=cpu",
    "trainer.progress=false",
    "trainer.population_stats_batches=2",
    "probe.num_examples=50",
]


@pytest.fixture
def smoke_overrides():
    return list(SMOKE)
