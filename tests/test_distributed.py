"""Two CPU processes (gloo) with synchronized custom BN train exactly like one process on the same batch."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, SMOKE

from bn_repro.records.run_files import read_csv

pytestmark = pytest.mark.slow

RUN = [
    *SMOKE,
    "trainer.max_steps=30",
    "trainer.eval_every=10",
    "optim.lr=0.1",
    "trainer.population_stats_batches=0",
]
COMPARED = ("train_loss", "train_acc", "test_loss", "test_acc")


def _launch(args, cwd, nproc):
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    env.pop("BN_REPRO_RUN_STAMP", None)
    launcher = [sys.executable, "-m", "bn_repro.train"]
    if nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={nproc}", "-m", "bn_repro.train"]  # fmt: skip
    result = subprocess.run([*launcher, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


# Two torchrun processes and a reference run: ~30 s each idle, 2-4x that under load (slow).
@pytest.mark.slow
@pytest.mark.parametrize("backward", ["autograd", "explicit"])
def test_two_processes_match_one_with_synchronized_custom_bn(backward, tmp_path):
    args = [*RUN, "norm=custom", f"norm.backward={backward}"]
    _launch([*args, f"hydra.run.dir={tmp_path / 'one'}"], tmp_path, nproc=1)
    _launch([*args, f"hydra.run.dir={tmp_path / 'two'}"], tmp_path, nproc=2)
    one, two = read_csv(tmp_path / "one/metrics.csv"), read_csv(tmp_path / "two/metrics.csv")
    assert [r["step"] for r in one] == [r["step"] for r in two] == ["0", "10", "20", "30"]
    for a, b in zip(one, two, strict=True):
        for key in COMPARED:
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-4, abs=1e-5, nan_ok=True), (
                a["step"],
                key,
            )
    summary = json.loads((tmp_path / "two/summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["global_batch_size"] == 60 and summary["per_replica_batch_size"] == 30


def test_population_statistics_under_ddp(tmp_path):
    _launch([*RUN, "norm=custom", "trainer.population_stats_batches=3", f"hydra.run.dir={tmp_path}"],
            tmp_path, nproc=2)  # fmt: skip
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert 0.0 <= summary["final_test_acc_population_stats"] <= 1.0


def test_all_ranks_share_one_run_dir_and_only_rank_0_writes(tmp_path):
    _launch([*RUN, "norm=none", "experiment_name=ddp_dir"], tmp_path, nproc=2)
    run_dirs = list((tmp_path / "outputs" / "ddp_dir").iterdir())
    assert len(run_dirs) == 1
    steps = [r["step"] for r in read_csv(run_dirs[0] / "metrics.csv")]
    assert steps == ["0", "10", "20", "30"]  # one writer: no row twice


def test_batch_that_does_not_split_is_refused(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "bn_repro.train", *RUN, "data.batch_size=61", f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "does not split evenly over 2 processes" in result.stderr
