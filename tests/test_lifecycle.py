"""The app when runs die, as a user meets it on the command line: signals, a busy run dir, a refused
resume, a full disk, a loss explosion, and a sweep re-run. Each interrupted run is compared with an
uninterrupted twin (tests/test_resume.py: same rows, nothing duplicated, nothing missing)."""

import json
import os
import re
import resource
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, SMOKE
from test_resume import assert_same_run, snapshot

from bn_repro.records.run_files import read_csv

ENV = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
# Long enough to be signalled mid-run, a checkpoint every 70 steps, rows every 50.
LONG = [*SMOKE, "trainer.max_steps=4000", "trainer.eval_every=50", "trainer.log_every=10",
        "trainer.checkpoint_every=70", "model.hidden=[32,32]"]  # fmt: skip


def app(*args, cwd, timeout=300, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "bn_repro.train", *args], cwd=cwd, env=ENV, capture_output=True, text=True,
        timeout=timeout, **kwargs,
    )  # fmt: skip


def start(*args, cwd, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "bn_repro.train", *args], cwd=cwd, env=ENV, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, **kwargs,
    )  # fmt: skip


def wait_for_rows(proc, metrics: Path, rows: int, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(read_csv(metrics)) >= rows:
            return
        time.sleep(0.05)
    raise AssertionError(f"the run ended or stalled before writing {rows} rows: {proc.communicate()}")


@pytest.fixture(scope="module")
def long_twin(tmp_path_factory):
    """LONG run through uninterrupted."""
    root = tmp_path_factory.mktemp("twin")
    done = app(*LONG, f"hydra.run.dir={root / 'run'}", cwd=root)
    assert done.returncode == 0, done.stderr
    return root / "run"


@pytest.mark.parametrize(
    "signum",
    [
        signal.SIGTERM,
        pytest.param(signal.SIGINT, marks=pytest.mark.slow),
        pytest.param(signal.SIGUSR1, marks=pytest.mark.slow),
    ],  # fmt: skip
)
def test_a_signal_checkpoints_prints_the_resume_command_and_exits_128_plus_it(tmp_path, signum, long_twin):
    run_dir = tmp_path / "run"
    proc = start(*LONG, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    wait_for_rows(proc, run_dir / "metrics.csv", 3)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err
    name = signal.Signals(signum).name
    assert f"{name} received: finishing the current step" in err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["interrupted_by"] == name
    line = next(line for line in err.splitlines() if "resume with: " in line)
    assert line.startswith(f"{name}: interrupted at step {summary['steps']}, checkpoint in")
    command = line.split("resume with: ", 1)[1]
    assert command.startswith("python -m bn_repro.train ") and f"hydra.run.dir={run_dir}" in command
    resumed = app(*shlex.split(command)[3:], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {run_dir} from step {summary['steps']}" in resumed.stdout
    assert_same_run(long_twin, run_dir)


def test_a_second_ctrl_c_exits_at_once(monkeypatch, capfd):
    """The first SIGINT only asks; the second exits 130 there and then (os._exit: no cleanup that could
    hang; the files are safe as they are, tests/test_resume.py's kill -9 case)."""
    from bn_repro.engine import interrupts

    class Exited(Exception):
        pass

    def exit_now(code):
        raise Exited(code)

    monkeypatch.setattr(interrupts.os, "_exit", exit_now)
    # Python's default handler, or SIG_IGN where the suite was started in the background (`nohup ... &`
    # ignores SIGINT, and Python then keeps it ignored): whichever it is comes back afterwards.
    before = signal.getsignal(signal.SIGINT)
    with interrupts.watch():
        os.kill(os.getpid(), signal.SIGINT)
        assert interrupts.requested() == signal.SIGINT
        with pytest.raises(Exited, match="130"):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before  # restored
    err = capfd.readouterr().err
    assert "SIGINT received: finishing the current step" in err and "second interrupt: stopping now" in err


def test_a_second_process_on_a_busy_run_dir_is_refused_and_changes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    first = start(*LONG, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    try:
        wait_for_rows(first, run_dir / "metrics.csv", 1)
        before = snapshot(run_dir / ".hydra")
        second = app(*LONG, "optim.lr=0.5", f"hydra.run.dir={run_dir}", cwd=tmp_path)
        assert second.returncode == 75
        assert second.stderr.strip().splitlines() == [
            f"error: {run_dir} is in use by PID {first.pid} on {os.uname().nodename} "
            + re.search(r"\(since [^)]*\)", second.stderr).group(0)
            + "; wait for it to end (or stop it), or choose another run dir "
            "(hydra.run.dir=... / hydra.sweep.dir=...)"
        ]
        assert snapshot(run_dir / ".hydra") == before
    finally:
        first.kill()
        first.wait()
    # The lock died with its holder (SIGKILL): the same command resumes.
    again = app(*LONG, "trainer.max_steps=200", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr


def test_two_processes_started_at_once_on_one_run_dir_write_each_row_once(tmp_path):
    """Started together, one holds the run dir; the other is refused (75) or, if it comes second, finds
    the run finished and skips it (0). Either way each row is written once: the twin's rows."""
    short = [*SMOKE, "trainer.max_steps=200", "trainer.eval_every=20", "model.hidden=[32,32]"]
    twin = app(*short, f"hydra.run.dir={tmp_path / 'twin'}", cwd=tmp_path)
    assert twin.returncode == 0, twin.stderr
    run_dir = tmp_path / "run"
    both = [start(*short, f"hydra.run.dir={run_dir}", cwd=tmp_path) for _ in range(2)]
    outcomes = sorted((proc.wait(timeout=300), proc.communicate()[1]) for proc in both)
    assert outcomes[0][0] == 0 and outcomes[1][0] in (0, 75), outcomes
    assert_same_run(tmp_path / "twin", run_dir)


def test_a_refused_resume_leaves_the_run_dirs_hydra_files_untouched(tmp_path):
    run_dir = tmp_path / "run"
    short = [*SMOKE, "trainer.max_steps=10"]
    assert app(*short, f"hydra.run.dir={run_dir}", cwd=tmp_path).returncode == 0
    before = snapshot(run_dir)
    refused = app(*short, "optim.lr=0.5", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith("error: ") and "optim.lr: 0.01 -> 0.5" in refused.stderr
    assert snapshot(run_dir) == before


def _file_size_limit(limit):
    def limit_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead

    return limit_files


def test_a_full_disk_names_the_file_damages_nothing_and_the_same_command_resumes(tmp_path, long_twin):
    """A per-file size limit (RLIMIT_FSIZE) stands in for a full disk: the write that crosses it fails
    (here a checkpoint, once the copies of the run files it carries have grown; earlier ones fit)."""
    run_dir = tmp_path / "run"
    args = [*LONG, f"hydra.run.dir={run_dir}"]
    full = app(*args, cwd=tmp_path, preexec_fn=_file_size_limit(260_000))
    assert full.returncode == 74, full.stderr
    assert "Traceback" not in full.stderr
    (line,) = [line for line in full.stderr.splitlines() if line.startswith("error: ")]
    assert re.match(rf"error: cannot write {run_dir}/\S+: File too large\. The files written before", line)
    resumed = app(*args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    assert_same_run(long_twin, run_dir)


def test_a_loss_explosion_ends_the_run_as_diverged_and_the_sweep_names_it(tmp_path):
    sweep = tmp_path / "sweep"
    done = app("-m", *SMOKE, "trainer.max_steps=100", "norm=none", "optim.lr=0.05,1000",
               f"hydra.sweep.dir={sweep}", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    statuses = {p.parent.name: json.loads(p.read_text())["status"] for p in sweep.glob("*/summary.json")}
    assert statuses == {"0": "finished", "1": "diverged"}
    rows = read_csv(sweep / "1/metrics.csv")
    assert int(rows[-1]["step"]) < 100  # stopped early, its last row written
    assert f"  diverged: {sweep / '1'} (" in done.stdout and "optim.lr=1000" in done.stdout
    assert f"sweep {sweep}: 1 diverged, 1 finished" in done.stdout


def test_checkpoints_are_on_by_default(tmp_path):
    from conftest import compose_config

    from bn_repro.train import train

    summary = train(compose_config(SMOKE), tmp_path)
    assert summary["checkpoints"] >= 1 and (tmp_path / "checkpoint.pt").exists()  # at least the final one


def test_a_nan_test_loss_alone_ends_the_run_as_diverged(tmp_path, monkeypatch):
    from conftest import compose_config

    import bn_repro.engine.loop as loop
    from bn_repro.train import train

    real, calls = loop.evaluate, []

    def nan_test_loss(*args, **kwargs):
        calls.append(1)
        loss, acc = real(*args, **kwargs)
        return (float("nan") if len(calls) == 2 else loss), acc

    monkeypatch.setattr(loop, "evaluate", nan_test_loss)
    summary = train(compose_config([*SMOKE, "trainer.max_steps=40"]), tmp_path)
    assert summary["status"] == "diverged" and summary["steps"] == 5


def _sweep(*extra, sweep, cwd):
    return [*SMOKE, "trainer.max_steps=600", "trainer.eval_every=50", "trainer.checkpoint_every=70",
            "model.hidden=[32,32]", "seed=0,1,2", *extra, f"hydra.sweep.dir={sweep}"]  # fmt: skip


@pytest.mark.parametrize(
    "launcher",
    ["basic", *(pytest.param(launcher, marks=pytest.mark.slow) for launcher in ("parallel", "batched"))],
)
def test_a_killed_sweep_rerun_skips_finished_jobs_and_resumes_the_rest(tmp_path, launcher):
    extra = [] if launcher == "basic" else [f"hydra/launcher={launcher}"]
    if launcher == "parallel":
        extra.append("hydra.launcher.n_jobs=2")
    twin = tmp_path / "twin"
    done = app("-m", *_sweep(*extra, sweep=twin, cwd=tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    sweep = tmp_path / "sweep"
    args = ["-m", *_sweep(*extra, sweep=sweep, cwd=tmp_path)]
    proc = start(*args, cwd=tmp_path)
    last = sweep / ("0" if launcher == "batched" else "1") / "metrics.csv"
    wait_for_rows(proc, last, 4)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and f"hydra.sweep.dir={sweep}" in err
    again = app(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    if launcher == "basic":
        assert "already finished" in again.stdout  # job 0
        assert f"resuming {sweep / '1'}" in again.stdout
    for job in ("0", "1", "2"):
        assert_same_run(twin / job, sweep / job)


@pytest.mark.slow
def test_a_slurm_job_preempted_requeues_and_resumes(tmp_path):
    """submitit's local executor stands in for SLURM: SIGUSR2 (its preemption signal) reaches the job,
    which checkpoints, hands over to submitit's requeue, and runs again from its checkpoint."""
    twin = tmp_path / "twin"
    base = [*SMOKE, "trainer.max_steps=3000", "trainer.eval_every=50", "model.hidden=[32,32]"]
    assert app(*base, f"hydra.run.dir={twin}", cwd=tmp_path).returncode == 0
    sweep = tmp_path / "sweep"
    # submitit counts a job as timed out (and requeues it only while timeouts remain) in its last 10
    # minutes; with 60 the signal is a preemption, which always requeues.
    proc = start("-m", *base, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=60",
                 f"hydra.sweep.dir={sweep}", cwd=tmp_path)  # fmt: skip
    wait_for_rows(proc, sweep / "0/metrics.csv", 4, timeout=180)
    job = next(
        int(p.parent.name)
        for p in Path("/proc").glob("[0-9]*/cmdline")
        if b"submitit.core._submit" in _read(p) and str(sweep).encode() in _read(p)
    )
    os.kill(job, signal.SIGUSR2)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    logs = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.*"))
    assert "Requeued job" in logs
    summary = json.loads((sweep / "0/summary.json").read_text())
    assert summary["status"] == "finished" and summary["resumed_from_step"] > 0
    assert_same_run(twin, sweep / "0")


def _read(path):
    try:
        return path.read_bytes()
    except OSError:
        return b""


@pytest.mark.slow
def test_torchrun_workers_stop_when_their_agent_is_killed(tmp_path):
    run_dir = tmp_path / "run"
    agent = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
         "bn_repro.train", *LONG, "trainer.max_steps=100000", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_for_rows(agent, run_dir / "metrics.csv", 3, timeout=240)
    workers = [
        int(p.parent.name)
        for p in Path("/proc").glob("[0-9]*/stat")
        if _read(p).split(b") ")[-1].split()[1:2] == [str(agent.pid).encode()]
    ]
    assert len(workers) == 2
    agent.kill()
    agent.wait()
    deadline = time.time() + 60
    while time.time() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers):
        time.sleep(0.2)
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers), "workers outlived their agent"


def test_a_loss_explosion_stops_that_batched_member_only(tmp_path):
    from conftest import compose_config

    from bn_repro.batched import train_group
    from bn_repro.train import train

    overrides = [[*SMOKE, "trainer.max_steps=60", "norm=none", f"optim.lr={lr}"] for lr in (1000, 0.05)]
    exploded, finished = train_group(
        [(compose_config(o), tmp_path / f"member{k}") for k, o in enumerate(overrides)]
    )
    assert exploded["status"] == "diverged" and exploded["steps"] < 60
    assert finished["status"] == "finished" and finished["steps"] == 60
    train(compose_config(overrides[0]), tmp_path / "single")
    assert (
        read_csv(tmp_path / "member0/metrics.csv")[-1]["step"]
        == read_csv(tmp_path / "single/metrics.csv")[-1]["step"]
    )


def test_the_errors_a_group_process_raises_reach_the_launcher_whole():
    """A batched group runs in its own process: its errors cross back pickled, message and exit code."""
    import errno
    import pickle

    from bn_repro.config import ConfigError
    from bn_repro.data.errors import DataError
    from bn_repro.engine.checkpoint import CheckpointError
    from bn_repro.engine.run_dir import RunDirBusy, RunFileDamaged
    from bn_repro.records.run_files import RunFileError

    for error in (
        RunFileError(Path("/runs/0/metrics.csv"), OSError(errno.ENOSPC, "No space left on device")),
        CheckpointError("checkpoint damaged"), RunDirBusy("busy"), RunFileDamaged("damaged"),
        ConfigError("optim.lr='x': expected a number"), DataError("no files"),
    ):  # fmt: skip
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is type(error) and str(again) == str(error)
        assert again.exit_code == error.exit_code
