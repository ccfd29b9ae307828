"""hydra/launcher=batched: the jobs of a multirun that differ only in `seed` (and `optim.lr`) run as the
members of one batched model per group, inside one process per group (bn_repro/batched/).

    python -m bn_repro.train -m experiment=fig1_fashion_mnist norm=none,builtin seed='range(10)' \\
        hydra/launcher=batched                        # 2 groups of 10 members, one process per core
    ... hydra/launcher=batched hydra.launcher.groups=1 hydra.launcher.max_members=5
    ... hydra/launcher=batched hydra.launcher.backward=autograd   # the groups' step through autograd

Each member is its job: the same job dir, .hydra/ files, job log and run files as under the basic
launcher, and the same return value for sweepers. Jobs that cannot be batched (bn_repro.batched.
unbatchable_reason: other models or norms, DDP, dropout, ...) or that have no job to share a model with
run here as ordinary jobs, one after another, each with a one-line note saying why.

This process claims every member's run dir (bn_repro/engine/run_dir.py: the lock, and the checks,
before .hydra/ is written) and holds the locks while its group processes write; a finished member is
skipped. A signal stops the groups after the same step, each member checkpointed, and the sweep exits
128 + the signal with the command that resumes it.
"""

# No `from __future__ import annotations`: Hydra's plugin scan runs this module outside sys.modules,
# where dataclasses need real annotations.

import concurrent.futures
import copy
import logging
import multiprocessing
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import (
    JobReturn,
    JobRuntime,
    JobStatus,
    configure_log,
    filter_overrides,
    run_job,
    setup_globals,
)
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class _ComposedOnce:
    """A config loader's load_sweep_config that composes each job's config once. Hydra composes it twice:
    the sweeper checks the batch (Sweeper.validate_batch_is_legal), then the launcher reads it; at
    ~0.1 s a job that was a fifth of a 20-run sweep's start-up. Composing is deterministic in (the master
    config, the overrides): the second call gets a copy of the first's result."""

    def __init__(self, load):
        self.load = load
        self.composed: dict[tuple[int, tuple[str, ...]], DictConfig] = {}

    def __call__(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        key = (id(master_config), tuple(sweep_overrides))
        if key not in self.composed:
            self.composed[key] = self.load(master_config, list(sweep_overrides))
        return copy.deepcopy(self.composed[key])


@dataclass
class _Job:
    num: int
    overrides: list[str]
    sweep_config: DictConfig  # untouched: what run_job gets when the job runs alone
    config: DictConfig | None = None  # hydra.runtime.output_dir set
    resolved: dict[str, Any] | None = None
    run_dir: str = ""
    problem: str | None = None  # why its config cannot be read here (the ordinary job reports it)
    ret: JobReturn = field(default_factory=JobReturn)
    log_files: list[str] = field(default_factory=list)


class BatchedLauncher(Launcher):
    def __init__(self, max_members: int = 20, groups: Any = "auto", backward: str = "explicit") -> None:
        from bn_repro.batched.group import BACKWARDS

        if backward not in BACKWARDS:
            raise ValueError(
                f"hydra.launcher.backward={backward!r} is not valid; valid choices: {', '.join(BACKWARDS)}"
            )
        self.backward = backward
        self.max_members = int(max_members)
        if groups != "auto" and (isinstance(groups, bool) or not str(groups).isdigit() or int(groups) < 1):
            raise ValueError(f"hydra.launcher.groups={groups!r} is not valid; expected auto or a count >= 1")
        self.groups = cores() if groups == "auto" else int(groups)
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.task_function, self.hydra_context = config, task_function, hydra_context
        loader = hydra_context.config_loader
        if not isinstance(loader.load_sweep_config, _ComposedOnce):
            loader.load_sweep_config = _ComposedOnce(loader.load_sweep_config)  # type: ignore[method-assign]

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from bn_repro.batched import plan

        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        jobs = [self._read(initial_job_idx + i, list(o)) for i, o in enumerate(job_overrides)]
        readable = [i for i, job in enumerate(jobs) if job.problem is None]
        groups, notes = plan([jobs[i].resolved for i in readable], self.max_members, self.groups)
        groups = [[readable[i] for i in group] for group in groups]
        notes = {readable[i]: note for i, note in notes.items()}
        notes.update({i: job.problem for i, job in enumerate(jobs) if job.problem is not None})
        workers = min(self.groups, len(groups)) or 1
        log.info(
            f"Launching {len(jobs)} jobs: {len(groups)} batched group(s) of "
            f"{', '.join(str(len(g)) for g in groups) or '-'} members in {workers} process(es), "
            f"{len(notes)} ordinary job(s)"
        )
        group_of = {i: g for g, group in enumerate(groups) for i in group}
        for i, job in enumerate(jobs):
            where = f"group {group_of[i]}" if i in group_of else f"ordinary job: {notes[i]}"
            log.info(f"\t#{job.num} : {' '.join(filter_overrides(job.overrides))} ({where})")
        self._run_groups(jobs, groups, workers)
        from bn_repro.job import stop_sweep

        stop_sweep(Path(str(self.config.hydra.sweep.dir)))  # when a signal stopped the groups
        for i in sorted(notes):
            # The app's own task, as under the basic launcher.
            jobs[i].ret = run_job(
                hydra_context=self.hydra_context,
                task_function=self.task_function,
                config=jobs[i].sweep_config,
                job_dir_key="hydra.sweep.dir",
                job_subdir_key="hydra.sweep.subdir",
            )
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return [job.ret for job in jobs]

    # ------------------------------------------------------------------------------------------ jobs

    def _read(self, num: int, overrides: list[str]) -> _Job:
        """The job's sweep config, its output dir and its resolved task config, as run_job sets them."""
        assert self.hydra_context is not None and self.config is not None
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = num
            sweep_config.hydra.job.num = num
        job = _Job(num, overrides, sweep_config)
        config = copy.deepcopy(sweep_config)
        original = HydraConfig.instance().cfg
        try:
            HydraConfig.instance().set_config(config)
            run_dir = os.path.join(str(config.hydra.sweep.dir), str(config.hydra.sweep.subdir))
            with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
                config.hydra.runtime.output_dir = os.path.abspath(run_dir)
            HydraConfig.instance().set_config(config)
            task = _task_config(config)
            from bn_repro.config import check_values

            job.resolved = OmegaConf.to_container(task, resolve=True)
            check_values(job.resolved)
            job.config, job.run_dir = config, config.hydra.runtime.output_dir
            if config.hydra.job.env_set or config.hydra.job.chdir:
                job.problem = "hydra.job.env_set or hydra.job.chdir is set, and members share one process"
        except Exception as error:  # the ordinary job raises it again, as the basic launcher would
            job.problem = f"its config does not resolve or check ({type(error).__name__}: {error})"
        finally:
            HydraConfig.instance().cfg = original
        return job

    def _open(self, job: _Job, write_files: bool = True) -> None:
        """What run_job does before the task: job dir, job log, .hydra/ files, on_job_start (the run dir
        is claimed; `write_files=False` for a finished member, whose files stay as they are)."""
        assert self.hydra_context is not None and job.config is not None
        config = job.config
        HydraConfig.instance().set_config(config)
        Path(job.run_dir).mkdir(parents=True, exist_ok=True)
        job.ret.cfg = _task_config(config)
        job.ret.hydra_cfg = copy.deepcopy(HydraConfig.instance().cfg)
        job.ret.overrides = OmegaConf.to_container(config.hydra.overrides.task)
        job.ret.working_dir = os.getcwd()
        configure_log(config.hydra.job_logging, config.hydra.verbose)
        job.log_files = [
            h.baseFilename for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)
        ]
        if write_files:
            from bn_repro.job import save_hydra_files

            save_hydra_files(job.ret.cfg, Path(job.run_dir))
        self.hydra_context.callbacks.on_job_start(config=config, task_function=self.task_function)

    def _close(self, job: _Job, summary: dict[str, Any] | None, error: BaseException | None) -> None:
        """What run_job does after the task: the return value (the app's: final_test_acc), on_job_end."""
        assert self.hydra_context is not None and job.config is not None
        HydraConfig.instance().set_config(job.config)
        if error is None:
            assert summary is not None
            job.ret.return_value, job.ret.status = summary["final_test_acc"], JobStatus.COMPLETED
            from bn_repro.job import report

            report(summary, Path(job.run_dir))
        else:
            job.ret.return_value, job.ret.status = error, JobStatus.FAILED
        job.ret.task_name = JobRuntime.instance().get("name")
        self.hydra_context.callbacks.on_job_end(config=job.config, job_return=job.ret)

    # ------------------------------------------------------------------------------------------ groups

    def _run_groups(self, jobs: list[_Job], groups: list[list[int]], workers: int) -> None:
        if not groups:
            return
        from bn_repro.engine.run_dir import claim_run_dir
        from bn_repro.errors import UserError

        original = HydraConfig.instance().cfg
        handlers: list[logging.Handler] = []
        claims = []
        try:
            for group in groups:
                for i in list(group):
                    try:
                        claim = claim_run_dir(Path(jobs[i].run_dir), jobs[i].resolved)
                    except UserError as error:  # busy, another config, damaged: as the app reports it
                        print(f"error: {error}", flush=True)
                        raise SystemExit(error.exit_code) from None
                    claims.append(claim)
                    if claim.action == "finished":
                        group.remove(i)
                        self._open(jobs[i], write_files=False)
                        self._close(jobs[i], {**claim.summary, "skipped": True}, None)
                    else:
                        self._open(jobs[i])
            groups[:] = [group for group in groups if group]
            if not groups:
                return
            # Group messages (in this process) go to the log of every member of the sweep.
            root = logging.getLogger()
            formatter = root.handlers[0].formatter if root.handlers else None
            for path in {p for group in groups for i in group for p in jobs[i].log_files}:
                handler = logging.FileHandler(path, mode="a")
                handler.setFormatter(formatter)
                root.addHandler(handler)
                handlers.append(handler)
            from bn_repro.records.tracking import run_name

            specs = [
                (
                    [(jobs[i].resolved, jobs[i].run_dir) for i in group], g, [jobs[i].num for i in group],
                    [run_name(jobs[i].resolved, jobs[i].overrides) for i in group],  # their wandb runs' names
                    self.backward,
                )
                for g, group in enumerate(groups)
            ]  # fmt: skip
            threads = [_threads(jobs[group[0]].resolved, workers) for group in groups]
            if workers == 1:
                outcomes = [_outcome(*spec, threads=t) for spec, t in zip(specs, threads, strict=True)]
            else:
                outcomes = _in_processes(specs, threads, workers)
            for group, (summaries, error) in zip(groups, outcomes, strict=True):
                for k, i in enumerate(group):
                    self._close(jobs[i], summaries[k] if summaries else None, error)
            for _, error in outcomes:
                if isinstance(error, UserError):  # a full disk, a damaged run file: as the app reports it
                    print(f"error: {error}", flush=True)
                    raise SystemExit(error.exit_code)
        finally:
            for claim in claims:
                claim.release()
            for handler in handlers:
                logging.getLogger().removeHandler(handler)
                handler.close()
            HydraConfig.instance().cfg = original
            assert self.config is not None
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)


def _task_config(config: DictConfig) -> DictConfig:
    task = copy.deepcopy(config)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task


def _threads(config: dict[str, Any], workers: int) -> int:
    """trainer.threads=auto: one thread per group process, as for any run (engine/setup.py); a count is
    kept. A second thread gained nothing on an idle 2-core machine (a batched group of 20 on 2 threads
    against two groups of 10 on 1 each: results/bench_sweep_cpu.md) and collapses beside a busy process
    (results/bench_threads_cpu.md); more cores are used by more group processes (groups=auto)."""
    threads = config["trainer"]["threads"]
    return 1 if threads == "auto" else int(threads)


def _outcome(members, group: int, jobs: list[int], names: list[str], backward: str, threads: int):
    """(summaries, None) or (None, the exception) for one group."""
    from bn_repro.batched import train_group

    try:
        # This launcher's process holds the members' locks (_run_groups).
        summaries = train_group(
            members, group=group, jobs=jobs, threads=threads, lock=False, names=names, backward=backward
        )
        return summaries, None
    except Exception as error:
        log.error(f"batched group {group} (jobs {jobs}) failed: {type(error).__name__}: {error}")
        return None, error


def _worker_init(threads: int) -> None:
    # Before torch is imported in the worker; train_group sets the group's count too. The worker needs no
    # Hydra state: its groups get plain resolved configs.
    os.environ["OMP_NUM_THREADS"] = str(threads)
    from bn_repro.engine.interrupts import die_with_parent

    die_with_parent()  # the locks die with the launcher; its group processes stop with it


def _in_processes(specs, threads: list[int], workers: int):
    """Each group in a process of its own, `workers` at once."""
    context = multiprocessing.get_context("spawn")
    outcomes: list[Any] = [None] * len(specs)
    order = sorted(range(len(specs)), key=lambda g: -len(specs[g][0]))  # largest first
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=workers,
        mp_context=context,
        initializer=_worker_init,
        initargs=(min(threads),),
    ) as pool:
        futures = {pool.submit(_outcome, *specs[g], threads=threads[g]): g for g in order}
        for future in concurrent.futures.as_completed(futures):
            outcomes[futures[future]] = future.result()
    return outcomes
