"""Shared helpers: compose the app's config the way `python -m bn_repro.train` would."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bn_repro.config import CONFIG_DIR
from bn_repro.config import compose as compose_config

REPO = Path(__file__).resolve().parents[1]
# torch.compile's C++ kernels on a CPU do not build under ATen's portable kernels
# (ATEN_CPU_CAPABILITY=default: inductor's generated code uses at::vec, which that setting leaves
# undeclared; torch 2.14.1). The setting is a test of rounding, not a machine anyone trains on; the
# compile tests run on the native kernels.
NEEDS_INDUCTOR_CPU = pytest.mark.skipif(
    os.environ.get("ATEN_CPU_CAPABILITY", "").lower() == "default",
    reason="inductor's CPU kernels do not build with ATEN_CPU_CAPABILITY=default",
)
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
__all__ = ["EXPERIMENTS", "REPO", "SMOKE", "compose_config", "interrupted_at_evaluation"]


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


def interrupted_at_evaluation(monkeypatch, config, run_dir, evaluation: int) -> None:
    """Train `config` into `run_dir` and stop it with a KeyboardInterrupt at its `evaluation`-th
    evaluation (1 is the one at step 0), as a killed run stops."""
    import bn_repro.engine.loop as loop
    from bn_repro.train import train

    real, calls = loop.evaluate, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == evaluation:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "evaluate", interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            train(config, run_dir)
    finally:
        monkeypatch.setattr(loop, "evaluate", real)
