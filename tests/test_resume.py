import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, SMOKE, compose_config, interrupted_at_evaluation

from bn_repro.engine.checkpoint import CheckpointError
from bn_repro.records.run_files import read_csv
from bn_repro.train import train

TIMING = ("wall_time_s", "steps_per_s")
# Checkpoints and evaluations on different periods, so a kill leaves rows written after the checkpoint.
RESUMABLE = [*SMOKE, "trainer.max_steps=40", "trainer.eval_every=5", "trainer.checkpoint_every=7",
             "norm=custom", "optim.lr=0.05"]  # fmt: skip


def _rows(path):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_csv(path)]


def _assert_same_run(a, b):
    assert _rows(a / "metrics.csv") == _rows(b / "metrics.csv")
    assert read_csv(a / "activations.csv") == read_csv(b / "activations.csv")
    steps = [int(r["step"]) for r in read_csv(b / "metrics.csv")]
    assert steps == sorted(set(steps))  # no duplicated rows


def test_resume_after_an_interruption_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    train(compose_config(RESUMABLE), tmp_path / "whole")

    # Stopped at the evaluation at step 25, after the checkpoint at step 21.
    interrupted_at_evaluation(monkeypatch, compose_config(RESUMABLE), tmp_path / "parts", evaluation=6)
    assert read_csv(tmp_path / "parts/metrics.csv")[-1]["step"] == "20"
    resumed = train(compose_config(RESUMABLE), tmp_path / "parts")
    assert resumed["resumed_from_step"] == 21 and resumed["steps"] == 40
    _assert_same_run(tmp_path / "whole", tmp_path / "parts")


def test_rerunning_a_finished_run_trains_no_more(tmp_path):
    cfg = compose_config(RESUMABLE)
    first = train(cfg, tmp_path)
    again = train(cfg, tmp_path)
    assert again["resumed_from_step"] == 40 and again["final_test_acc"] == first["final_test_acc"]
    assert len(read_csv(tmp_path / "metrics.csv")) == len({0, *range(5, 41, 5)})


@pytest.mark.slow
def test_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    run_dir = tmp_path / "killed"
    args = [sys.executable, "-m", "bn_repro.train", *RESUMABLE, "trainer.max_steps=3000",
            "trainer.eval_every=50", "trainer.checkpoint_every=70", f"hydra.run.dir={run_dir}"]  # fmt: skip
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        # Kill once a checkpoint exists and an evaluation row was written after it.
        while time.time() < deadline and proc.poll() is None:
            metrics = run_dir / "metrics.csv"
            if (run_dir / "checkpoint.pt").exists() and metrics.exists():
                steps = [int(r["step"]) for r in read_csv(metrics)]
                if steps and steps[-1] % 70 != 0 and steps[-1] > 70:
                    break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    resumed = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    whole = [a if not a.startswith("hydra.run.dir=") else f"hydra.run.dir={tmp_path / 'whole'}" for a in args]
    subprocess.run(whole, cwd=tmp_path, env=env, check=True, capture_output=True, timeout=300)
    _assert_same_run(tmp_path / "whole", run_dir)


def test_corrupt_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    cfg = compose_config([*RESUMABLE, "trainer.max_steps=7"])
    train(cfg, tmp_path)
    rows_before = read_csv(tmp_path / "metrics.csv")
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable"):
        train(cfg, tmp_path)
    assert read_csv(tmp_path / "metrics.csv") == rows_before


def test_checkpoint_of_another_config_is_refused(tmp_path):
    train(compose_config([*RESUMABLE, "trainer.max_steps=7"]), tmp_path)
    with pytest.raises(CheckpointError, match=r"optim\.lr: 0\.05 -> 0\.2"):
        train(compose_config([*RESUMABLE, "optim.lr=0.2"]), tmp_path)


def test_results_without_checkpoint_are_not_overwritten(tmp_path):
    cfg = compose_config([*SMOKE, "trainer.max_steps=5"])
    train(cfg, tmp_path)
    with pytest.raises(CheckpointError, match="refusing to start over"):
        train(cfg, tmp_path)


def test_a_checkpoint_from_before_the_run_state_gets_a_clear_error(tmp_path):
    """Format 1 (before bn_repro/engine/state.py) held `summary` and `window` entries; it is refused."""
    import torch

    config = compose_config(RESUMABLE)
    tmp_path.mkdir(exist_ok=True)
    torch.save({"format_version": 1, "step": 7, "summary": {}, "window": {}, "config": {}},
               tmp_path / "checkpoint.pt")  # fmt: skip
    with pytest.raises(CheckpointError, match="has format 1, written by another version of bn_repro"):
        train(config, tmp_path)
