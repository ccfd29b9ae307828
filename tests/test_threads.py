"""trainer.threads: auto picks one thread per process; a count is applied as given."""

from __future__ import annotations

import pytest
import torch
from conftest import SMOKE, compose_config

from bn_repro.config import ConfigError
from bn_repro.engine.setup import AUTO_THREADS, resolve_threads
from bn_repro.train import train


@pytest.fixture(autouse=True)
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_auto_is_one_thread_and_is_reported(tmp_path):
    assert resolve_threads("auto") == AUTO_THREADS == 1
    torch.set_num_threads(2)
    summary = train(compose_config(SMOKE), tmp_path)
    assert summary["threads"] == 1 and torch.get_num_threads() == 1
    assert summary["config"]["trainer"]["threads"] == "auto"


def test_a_count_is_applied(tmp_path):
    summary = train(compose_config([*SMOKE, "trainer.threads=2"]), tmp_path)
    assert summary["threads"] == 2 and torch.get_num_threads() == 2


@pytest.mark.parametrize("value", ["0", "many", "true"])
def test_bad_thread_counts_are_refused(value, tmp_path):
    with pytest.raises(ConfigError, match="trainer.threads=.*expected auto or an integer >= 1"):
        train(compose_config([*SMOKE, f"trainer.threads={value}"]), tmp_path)
