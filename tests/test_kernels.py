"""Fig. 1 is robust to the CPU's kernels: the same run on ATen's portable kernels
(ATEN_CPU_CAPABILITY=default, which round differently, as another CPU's would) gives the same curve to
a tolerance far below the effects the study reports. An independent audit found Fig. 1 reproduced
across CPUs to float tolerance; this test would show if that changed. (The CPU-scale Fig. 2/3 conv nets
are not robust in this sense: results/fig2cpu_fashion_mnist/figures/kernel_spread.md measures how far
they move.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from bn_repro.records.run_files import read_csv

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
# 2,000 steps of the Fig. 1 MLP, evaluated every 500 (minutes apart in the paper's terms, seconds here).
RUN = ["experiment=fig1_fashion_mnist", "trainer.max_steps=2000", "trainer.eval_every=500",
       "trainer.progress=false", "trainer.population_stats_batches=0"]  # fmt: skip
# Measured on the 2-core VM (its native kernels against the portable ones, 2,000 steps): test accuracies
# equal, test losses within 1.1e-8 (no BN) and 6.6e-8 (BN) relative. Held to 20 test images (0.2 points;
# BN's Fig. 1 gain is about 2 points) and 1e-3 relative, for CPUs that round further apart.
ACC_TOL, LOSS_REL = 0.002, 1e-3


def _run(run_dir: Path, norm: str, portable: bool) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    env.pop("ATEN_CPU_CAPABILITY", None)
    if portable:
        env["ATEN_CPU_CAPABILITY"] = "default"
    command = [sys.executable, "-m", "bn_repro.train", *RUN, f"norm={norm}", f"hydra.run.dir={run_dir}"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return read_csv(run_dir / "metrics.csv")


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist not installed")
@pytest.mark.parametrize("norm", ["none", "builtin"])
def test_fig1_is_the_same_on_portable_kernels(norm, tmp_path):
    native, portable = _run(tmp_path / "native", norm, False), _run(tmp_path / "portable", norm, True)
    assert [r["step"] for r in native] == [r["step"] for r in portable]
    for a, b in zip(native, portable, strict=True):
        assert float(b["test_acc"]) == pytest.approx(float(a["test_acc"]), abs=ACC_TOL), (a, b)
        assert float(b["test_loss"]) == pytest.approx(float(a["test_loss"]), rel=LOSS_REL), (a, b)
