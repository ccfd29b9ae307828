"""One job of the app (a run, or one job of a multirun): claim its run dir, then write .hydra/, train,
and report; a finished run is skipped, so re-running a sweep finishes only what is left.

    final_test_acc = run_job(cfg)     # cfg: the job's Hydra config; HydraConfig says where it writes

The run dir is claimed (locked, checked: bn_repro/engine/run_dir.py) before anything is written, so a
refused start (the dir in use, another config, a damaged file) leaves it untouched, `.hydra/` included:
Hydra's own writing of .hydra/ is off (configs/hydra/default.yaml, output_subdir: null) and done here.
A run stopped by a signal exits 128 + the signal after printing the command that resumes it.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import _save_config
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from bn_repro.engine import interrupts

HYDRA_FILES = ".hydra"


def resume_command(key: str, where: Path) -> str:
    """This process's command line with `key` (hydra.run.dir or hydra.sweep.dir) set to `where`: the
    command that resumes the run or sweep."""
    args = [a for a in sys.argv[1:] if not a.startswith(f"{key}=")]
    program = sys.argv[0]
    command = ["python", "-m", "bn_repro.train"] if Path(program).name == "train.py" else [Path(program).name]
    return shlex.join([*command, *args, f"{key}={Path(where).resolve()}"])


def stop(signum: int, message: str, key: str, where: Path) -> SystemExit:
    """Print the stop line with the command that resumes; the SystemExit that ends the app."""
    print(f"{message}; resume with: {resume_command(key, where)}", file=sys.stderr, flush=True)
    interrupts.hand_over()  # e.g. submitit's requeue under hydra/launcher=slurm (it exits itself)
    return SystemExit(interrupts.exit_code(signum))


def _stop(signum: int, message: str, run_dir: Path) -> SystemExit:
    hydra = HydraConfig.get()
    if hydra.mode == RunMode.MULTIRUN:
        return stop(signum, message, "hydra.sweep.dir", Path(str(hydra.sweep.dir)))
    return stop(signum, message, "hydra.run.dir", run_dir)


def save_hydra_files(cfg: DictConfig, run_dir: Path) -> None:
    """What Hydra writes into <run dir>/.hydra/ when output_subdir is set, written once we own the dir."""
    hydra = HydraConfig.get()
    if hydra.output_subdir is not None:  # the user asked Hydra to write them (before the claim)
        return
    out = run_dir / HYDRA_FILES
    _save_config(cfg, "config.yaml", out)
    _save_config(OmegaConf.create({"hydra": OmegaConf.to_container(hydra)}), "hydra.yaml", out)
    _save_config(hydra.overrides.task, "overrides.yaml", out)


def run_job(cfg: DictConfig) -> float | None:
    """The app's job: the final test accuracy (what a sweeper optimises), or None."""
    from bn_repro.config import check_values

    check_values(cfg)  # before torch: a bad value (or an interpolation that fails) named by its key
    config = OmegaConf.to_container(cfg, resolve=True)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    signum = interrupts.requested()
    if signum is not None:  # between two jobs of a multirun
        raise _stop(signum, f"{interrupts.name(signum)}: the sweep stopped before this job", run_dir)

    from bn_repro.engine import distributed
    from bn_repro.engine.loop import train
    from bn_repro.engine.run_dir import claim_run_dir

    main = distributed.is_main_process()
    with interrupts.watch():
        claim = claim_run_dir(run_dir, config, lock=main, check_files=main)
        try:
            if claim.action != "finished" and main:
                save_hydra_files(cfg, run_dir)
            summary = train(cfg, run_dir, claim)
        finally:
            claim.release()
        report(summary, run_dir)
        signum = interrupts.requested()
        if signum is not None:
            status = summary["status"]
            what = "interrupted" if status == "interrupted" else f"stopped after it {status}"
            message = f"{interrupts.name(signum)}: {what} at step {summary['steps']}, checkpoint in {run_dir}"
            if interrupts.in_app_process():
                raise _stop(signum, message, run_dir)
            # A launcher's worker (joblib, submitit): the job returns, and the app's process, which got
            # the signal too, ends the sweep (bn_repro/sweep_report.py); submitit requeues the job here.
            print(message, file=sys.stderr, flush=True)
            interrupts.hand_over()
    return summary["final_test_acc"]


def stop_sweep(sweep_dir: Path) -> None:
    """After a signal stopped a launcher's jobs (each checkpointed): the line that resumes the sweep."""
    signum = interrupts.requested()
    if signum is not None:
        message = f"{interrupts.name(signum)}: the sweep stopped, its running jobs checkpointed"
        raise stop(signum, message, "hydra.sweep.dir", sweep_dir)


def report(summary: dict[str, Any], run_dir: Path) -> None:
    """The job's line: its status and numbers, or that it was finished before and is skipped."""
    acc, best = summary.get("final_test_acc"), summary.get("best_test_acc")
    numbers = (
        f"final_test_acc={acc:.4f} best_test_acc={best:.4f}" if acc is not None and best is not None else ""
    )
    if summary.get("skipped"):
        print(
            f"{summary['experiment_name']}: already {summary['status']} ({summary['steps']} steps, "
            f"{numbers}), skipped -> {run_dir}",
            flush=True,
        )
        return
    batched = summary.get("batched")
    where = (
        f", member {batched['member']} of {batched['members']} in group {batched['group']}" if batched else ""
    )
    print(
        f"{summary['experiment_name']}: status={summary['status']} steps={summary['steps']} {numbers} "
        f"({summary['steps_per_s']} steps/s{where}) -> {run_dir}",
        flush=True,
    )
