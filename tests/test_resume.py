"""Resuming: from a checkpoint, from nothing, a finished run, and every kind of damage a resume meets.
Each case is compared with an uninterrupted twin: same rows, nothing duplicated, nothing missing."""

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, SMOKE, compose_config, interrupted_at_evaluation

import bn_repro.engine.checkpoint as checkpoint_module
from bn_repro.engine.checkpoint import CheckpointError
from bn_repro.engine.run_dir import RunFileDamaged
from bn_repro.records.run_files import read_csv
from bn_repro.train import train

TIMING = ("wall_time_s", "steps_per_s")
# Checkpoints and evaluations on different periods, so a kill leaves rows written after the checkpoint.
RESUMABLE = [*SMOKE, "trainer.max_steps=40", "trainer.eval_every=5", "trainer.checkpoint_every=7",
             "norm=custom", "optim.lr=0.05"]  # fmt: skip


def _rows(path):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_csv(path)]


def assert_same_run(a, b):
    """Run dirs `a` and `b` hold the same rows (timing columns aside), each step once."""
    assert _rows(a / "metrics.csv") == _rows(b / "metrics.csv")
    names = sorted(p.name for p in a.glob("*.csv"))
    assert names == sorted(p.name for p in b.glob("*.csv"))
    for name in names:
        if name != "metrics.csv":
            assert read_csv(a / name) == read_csv(b / name), name
    steps = [int(r["step"]) for r in read_csv(b / "metrics.csv")]
    assert steps == sorted(set(steps))  # no duplicated rows


def snapshot(run_dir):
    """Every file of the run dir but the lock (which names its latest holder)."""
    return {
        p.relative_to(run_dir): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.name != ".run.lock"
    }


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """The uninterrupted twin of RESUMABLE."""
    run_dir = tmp_path_factory.mktemp("whole")
    train(compose_config(RESUMABLE), run_dir)
    return run_dir


def test_resume_after_an_interruption_matches_an_uninterrupted_run(tmp_path, monkeypatch, whole, capsys):
    # Stopped at the evaluation at step 25, after the checkpoint at step 21.
    interrupted_at_evaluation(monkeypatch, compose_config(RESUMABLE), tmp_path, evaluation=6)
    assert read_csv(tmp_path / "metrics.csv")[-1]["step"] == "20"
    capsys.readouterr()
    resumed = train(compose_config(RESUMABLE), tmp_path)
    assert resumed["resumed_from_step"] == 21 and resumed["steps"] == 40
    assert f"resuming {tmp_path} from step 21 (checkpoint of " in capsys.readouterr().out
    assert_same_run(whole, tmp_path)


@pytest.mark.parametrize(("evaluation", "step"), [(4, 15), (1, 0)])
def test_a_signal_stops_after_the_step_with_a_checkpoint_and_the_resume_matches(
    tmp_path, monkeypatch, whole, evaluation, step
):
    """SIGTERM mid-run (here sent by the process to itself at an evaluation): status interrupted, a
    checkpoint at that very step, no extra row; the resume completes the twin. Also at the step-0
    evaluation, before any training step: the resumed run does not evaluate step 0 again."""
    import bn_repro.engine.loop as loop

    real, calls = loop.evaluate, []

    def signalled(*args, **kwargs):
        calls.append(1)
        if len(calls) == evaluation:  # the evaluation at `step`
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "evaluate", signalled)
    stopped = train(compose_config(RESUMABLE), tmp_path)
    monkeypatch.setattr(loop, "evaluate", real)
    assert stopped["status"] == "interrupted" and stopped["steps"] == step
    assert stopped["interrupted_by"] == "SIGTERM"
    assert read_csv(tmp_path / "metrics.csv")[-1]["step"] == str(step)
    resumed = train(compose_config(RESUMABLE), tmp_path)
    assert resumed["resumed_from_step"] == step and resumed["status"] == "finished"
    assert_same_run(whole, tmp_path)


def test_rerunning_a_finished_run_skips_it(tmp_path):
    cfg = compose_config(RESUMABLE)
    first = train(cfg, tmp_path)
    before = snapshot(tmp_path)
    again = train(cfg, tmp_path)
    assert again["skipped"] and again["final_test_acc"] == first["final_test_acc"]
    assert snapshot(tmp_path) == before


def test_a_finished_run_goes_on_to_more_steps_from_its_final_checkpoint(tmp_path, whole):
    train(compose_config([*RESUMABLE, "trainer.max_steps=20"]), tmp_path)
    longer = train(compose_config(RESUMABLE), tmp_path)
    assert longer["resumed_from_step"] == 20 and longer["steps"] == 40
    assert _rows(tmp_path / "metrics.csv")[:-1] == _rows(whole / "metrics.csv")[:-1]


def test_a_run_killed_before_its_first_checkpoint_starts_over(tmp_path, monkeypatch, capsys):
    """No checkpoint: the rows there are ones a fresh start writes again, so the same command starts
    over instead of refusing forever."""
    no_checkpoints = [*RESUMABLE, "trainer.checkpoint_every=0", "trainer.checkpoint_every_s=0"]
    interrupted_at_evaluation(monkeypatch, compose_config(no_checkpoints), tmp_path / "parts", evaluation=3)
    assert not (tmp_path / "parts/checkpoint.pt").exists()
    assert len(read_csv(tmp_path / "parts/metrics.csv")) == 2
    capsys.readouterr()
    train(compose_config(no_checkpoints), tmp_path / "parts")
    assert "starting over" in capsys.readouterr().out
    train(compose_config(no_checkpoints), tmp_path / "whole")
    assert_same_run(tmp_path / "whole", tmp_path / "parts")


def test_leftovers_of_another_config_are_not_overwritten(tmp_path, monkeypatch):
    no_checkpoints = [*RESUMABLE, "trainer.checkpoint_every=0", "trainer.checkpoint_every_s=0"]
    interrupted_at_evaluation(monkeypatch, compose_config(no_checkpoints), tmp_path, evaluation=3)
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointError, match=r"different config.*optim\.lr: 0\.05 -> 0\.2"):
        train(compose_config([*no_checkpoints, "optim.lr=0.2"]), tmp_path)
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------------------ damage


def _stopped_after_checkpoint(monkeypatch, run_dir):
    """RESUMABLE stopped at the evaluation of step 25: checkpoint at 21, rows to step 20 on disk."""
    interrupted_at_evaluation(monkeypatch, compose_config(RESUMABLE), run_dir, evaluation=6)


def test_a_checkpoint_with_flipped_bytes_is_refused_and_nothing_changes(tmp_path, monkeypatch):
    _stopped_after_checkpoint(monkeypatch, tmp_path)
    path = tmp_path / "checkpoint.pt"
    data = bytearray(path.read_bytes())
    for i in range(64):  # 64 bytes flipped inside the payload
        data[1000 + 37 * i] ^= 0xFF
    path.write_bytes(bytes(data))
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointError, match=r"damaged: its SHA-256 does not match.*checkpoint\.pt\.bad"):
        train(compose_config(RESUMABLE), tmp_path)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("damage", ["truncated", "garbage", "format 2"])
def test_a_truncated_or_foreign_checkpoint_is_refused(tmp_path, monkeypatch, damage):
    import torch

    _stopped_after_checkpoint(monkeypatch, tmp_path)
    path = tmp_path / "checkpoint.pt"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "garbage":
        path.write_bytes(b"not a checkpoint")
    else:
        torch.save({"format_version": 2, "step": 7, "config": {}}, path)
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointError, match="checkpoint.pt"):
        train(compose_config(RESUMABLE), tmp_path)
    assert snapshot(tmp_path) == before


def test_a_deleted_metrics_file_is_rebuilt_from_the_checkpoint(tmp_path, monkeypatch, whole, capsys):
    _stopped_after_checkpoint(monkeypatch, tmp_path)
    (tmp_path / "metrics.csv").unlink()
    capsys.readouterr()
    train(compose_config(RESUMABLE), tmp_path)
    out = capsys.readouterr().out
    assert f"repaired {tmp_path / 'metrics.csv'}: it was missing; rewrote its 5 rows up to step 21" in out
    assert_same_run(whole, tmp_path)


def test_an_edited_row_before_the_checkpoint_is_rebuilt(tmp_path, monkeypatch, whole, capsys):
    _stopped_after_checkpoint(monkeypatch, tmp_path)
    path = tmp_path / "activations.csv"
    lines = path.read_bytes().split(b"\n")
    lines[3] = b"\xff" * len(lines[3])  # same length: not utf-8
    path.write_bytes(b"\n".join(lines))
    train(compose_config(RESUMABLE), tmp_path)
    assert "were changed; rewrote its" in capsys.readouterr().out
    assert_same_run(whole, tmp_path)


def test_damage_the_checkpoint_cannot_repair_is_refused_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint_module, "RUN_FILE_COPY_LIMIT", 0)  # digests only, no copies
    _stopped_after_checkpoint(monkeypatch, tmp_path)
    path = tmp_path / "activations.csv"
    path.write_bytes(path.read_bytes().replace(b"\r\n", b"\r\n\xff", 1))
    before = snapshot(tmp_path)
    with pytest.raises(RunFileDamaged, match=rf"{path} does not match checkpoint\.pt: its first \d+ bytes"):
        train(compose_config(RESUMABLE), tmp_path)
    assert snapshot(tmp_path) == before  # nothing truncated before the refusal


def test_a_file_the_checkpoint_does_not_know_with_a_bad_line_is_refused_first(tmp_path, monkeypatch):
    _stopped_after_checkpoint(monkeypatch, tmp_path)
    (tmp_path / "extra.csv").write_bytes(b"step,value\r\n1,2\r\n\xff\xfe,3\r\n")
    before = snapshot(tmp_path)
    with pytest.raises(RunFileDamaged, match=r"extra\.csv is damaged \(UnicodeDecodeError"):
        train(compose_config(RESUMABLE), tmp_path)
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
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
    assert_same_run(tmp_path / "whole", run_dir)
