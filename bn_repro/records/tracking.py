"""Experiment tracking: one wandb run per Hydra job, or nothing (logger=none).

    python -m bn_repro.train experiment=fig1_fashion_mnist logger=wandb                    # offline run
    python -m bn_repro.train experiment=fig1_fashion_mnist logger=wandb logger.mode=online
    wandb sync outputs/fig1_fashion_mnist/*/wandb/offline-run-*                            # upload later

The local run files (metrics.csv, activations.csv, summary.json) stay the record of a run; wandb is a
mirror for dashboards, so a wandb failure (no network, bad key, an exception inside wandb) warns and
training goes on without it.

Mode precedence (logger.mode: online | offline | disabled): an explicit `logger.mode=...` override wins;
otherwise the WANDB_MODE environment variable; otherwise offline (configs/logger/wandb.yaml resolves
`${oc.env:WANDB_MODE,offline}`, and the mode is passed to wandb.init, where it beats WANDB_MODE).

What a run logs, one wandb row per step that has anything, with `step` (the training step) as the x
axis of every chart:
- at each evaluation, the metrics row under METRIC_KEYS names (train/loss, test/acc, train/lr, ...);
- each measurement's rows as its `wandb_payload` makes them (bn_repro/measures/base.py: by default
  `<name>/<index values>/<column>`; the activation probe keeps `act/<layer>/<unit>/<stat>`), a tensor
  value becoming a histogram (HISTOGRAM_BINS bins), e.g. the probe's `act_hist/<layer>`;
and at the end the summary (run.summary; the config is in run.config). bn_repro/records/wandb_export.py
reads these keys back into the local run files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

LOGGERS = ("none", "wandb")
WANDB_MODES = ("online", "offline", "disabled")

# metrics.csv column -> wandb key. A column missing here is logged under its own name.
METRIC_KEYS = {
    "step": "step",
    "epoch": "train/epoch",
    "train_loss": "train/loss",
    "train_acc": "train/acc",
    "test_loss": "test/loss",
    "test_acc": "test/acc",
    "lr": "train/lr",
    "wall_time_s": "perf/wall_time_s",
    "steps_per_s": "perf/steps_per_s",
}
STEP_KEY = METRIC_KEYS["step"]
# Our choice: 64 bins show the shape of a sigmoid input distribution; wandb accepts at most 512.
HISTOGRAM_BINS = 64
# Our choice: a histogram of at most this many values (an even stride through the layer's values), so
# conv layers with millions of probed values cost no more per evaluation than the MLP's 100,000.
HISTOGRAM_MAX_VALUES = 1_000_000
# Under a wandb sweep the sweep's parameters replace config keys of the same name (a Hydra group choice
# such as norm=builtin replaces the resolved `norm` dict); the full resolved config is kept under this key.
RESOLVED_CONFIG_KEY = "resolved_config"
# Overrides that do not tell runs apart in a group: the preset is the group, logger.* is plumbing.
_NAME_EXCLUDED_KEYS = ("experiment", "logger")


def _is_tensor(value: Any) -> bool:
    # torch is imported by the loop long before anything is logged; this module is imported by config
    # checks that must not wait for torch.
    import torch

    return isinstance(value, torch.Tensor)


def metric_key(column: str) -> str:
    return METRIC_KEYS.get(column, column)


class NullTracker:
    """Logs nothing: logger=none, mode=disabled, ranks other than 0, or a wandb run that could not start.

    Usable as a context manager (`with open_tracker(...) as tracker:`) or with an explicit `finish`.
    """

    def info(self) -> dict[str, Any] | None:
        """Where the run is mirrored (for summary.json); None when it is not."""
        return None

    def log_step(self, step: int, metrics: Mapping[str, Any] | None = None, measured=()) -> None:
        """One wandb row for `step`: the metrics row (at an evaluation) and each (measurement, rows)."""

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(exit_code=1 if exc_type is not None else 0)


class WandbTracker(NullTracker):
    """Mirrors one training run into one wandb run; any wandb error warns and turns logging off."""

    def __init__(self, run, wandb_module):
        self._run = run
        self._wandb = wandb_module
        self._configured: set[str] = set()  # measurements whose wandb_config is recorded
        self._info = {
            "id": run.id, "name": run.name, "project": run.project, "entity": run.entity or None,
            "group": run.group, "mode": run.settings.mode, "dir": run.settings.sync_dir,
            "url": run.url if run.settings.mode == "online" else None,
        }  # fmt: skip

    def info(self) -> dict[str, Any] | None:
        return dict(self._info)

    def _failed(self, what: str, error: Exception) -> None:
        log.warning("wandb %s failed (%s: %s); training goes on without wandb logging", what,
                    type(error).__name__, error)  # fmt: skip
        run, self._run = self._run, None
        try:
            run.finish(exit_code=1)
        except Exception:  # noqa: BLE001 - already failing; the warning above is the report
            pass

    def log_step(self, step: int, metrics: Mapping[str, Any] | None = None, measured=()) -> None:
        if self._run is None:
            return
        try:
            payload: dict[str, Any] = {STEP_KEY: step}
            if metrics is not None:
                payload.update({metric_key(k): v for k, v in metrics.items()})
            for measurement, rows in measured:
                if measurement.name not in self._configured:
                    self._configured.add(measurement.name)
                    extra = measurement.wandb_config(rows)
                    if extra:
                        self._run.config.update(extra, allow_val_change=True)
                for key, value in measurement.wandb_payload(rows).items():
                    if _is_tensor(value):
                        value = self._histogram(value)
                        if value is None:
                            continue
                    payload[key] = value
            self._run.log(payload)
        except Exception as error:  # noqa: BLE001 - wandb must never stop training
            self._failed("log", error)

    def _histogram(self, values):
        # numpy, not torch: on our busy 2-core CPU, torch took ~80 ms a layer here and numpy ~1 ms.
        values = values.detach().flatten().cpu().float().numpy()
        if values.size > HISTOGRAM_MAX_VALUES:
            values = values[:: -(-values.size // HISTOGRAM_MAX_VALUES)]
        values = values[np.isfinite(values)]  # a diverged layer holds inf/nan, which np.histogram rejects
        if values.size == 0:
            return None
        return self._wandb.Histogram(np_histogram=np.histogram(values, bins=HISTOGRAM_BINS))

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        if self._run is None:
            return
        try:
            # The config is in run.config; the wandb block describes this very run.
            self._run.summary.update({k: v for k, v in summary.items() if k not in ("config", "wandb")})
        except Exception as error:  # noqa: BLE001 - wandb must never stop training
            self._failed("summary", error)

    def finish(self, exit_code: int = 0) -> None:
        run, self._run = self._run, None
        if run is None:
            return
        offline = run.settings.mode == "offline"
        try:
            run.finish(exit_code=exit_code)
        except Exception as error:  # noqa: BLE001 - the run files are written; only the mirror is lost
            log.warning("wandb finish failed (%s: %s)", type(error).__name__, error)
            return
        if offline:
            log.info("wandb offline run in %s; upload it with: wandb sync %s", run.settings.sync_dir,
                     run.settings.sync_dir)  # fmt: skip


def hydra_task_overrides() -> list[str] | None:
    """The overrides of the running Hydra job (sweep values included); None outside a Hydra app."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return list(HydraConfig.get().overrides.task)


def run_name(config: Mapping[str, Any], overrides: list[str] | None) -> str:
    """A name that tells the runs of a group apart: the job's overrides, e.g. "norm=builtin,seed=1".

    Outside Hydra (train() called directly), or with no telling override, the two axes of Fig. 1.
    """
    if config["logger"].get("run_name"):
        return config["logger"]["run_name"]
    kept = []
    for override in overrides or []:
        key = override.lstrip("+~").split("=", 1)[0]
        if key.split(".", 1)[0] not in _NAME_EXCLUDED_KEYS:
            kept.append(override)
    return ",".join(kept) if kept else f"norm={config['norm']['kind']},seed={config['seed']}"


def _has_api_key(wandb) -> bool:
    # prompt=False: never ask on a terminal (wandb.init would); verify=False: no network round trip.
    return bool(wandb.login(prompt=False, verify=False))


def _no_key_warning() -> str:
    message = "logger.mode=online but wandb found no API key (run `wandb login` or set WANDB_API_KEY)"
    env_mode = os.environ.get("WANDB_MODE")
    if env_mode not in (None, "", "online", "run"):
        # wandb.login refuses to look for a key while WANDB_MODE says offline/disabled.
        message += f" or WANDB_MODE={env_mode} in the environment kept it from looking"
    return message + "; logging offline instead, upload later with `wandb sync`"


def previous_run_id(run_dir: Path) -> str | None:
    """The id of the wandb run a resumed job wrote before, from wandb's `latest-run` link in run_dir."""
    latest = Path(run_dir) / "wandb" / "latest-run"
    if not latest.exists():
        return None
    # wandb names run dirs [offline-]run-<YYYYmmdd_HHMMSS>-<id>.
    return latest.resolve().name.rsplit("-", 1)[-1]


def open_tracker(
    config: Mapping[str, Any],
    run_dir: Path,
    enabled: bool = True,
    resume: bool = False,
    name: str | None = None,
    concurrent: bool = False,
) -> NullTracker:
    """Start the tracker the resolved `config` asks for; its files go under `run_dir`.

    `enabled=False` (e.g. on DDP ranks other than 0) gives a tracker that logs nothing. `resume=True`
    (a job resumed from its checkpoint) continues the wandb run the job started before, if any, so a job
    stays one run. The returned tracker is also a context manager that finishes the run, marked failed
    when an exception escapes. `name`: the run's name (default: run_name, from the Hydra job's overrides).
    `concurrent=True`: the run is one of several open in this process at once (the members of a batched
    group, each its own wandb run), so opening it leaves the others open.
    """
    logger_cfg = config.get("logger") or {"name": "none"}
    if not enabled or logger_cfg["name"] == "none" or logger_cfg["mode"] == "disabled":
        return NullTracker()
    run = None
    try:
        import wandb

        mode = logger_cfg["mode"]
        if mode == "online" and not _has_api_key(wandb):
            log.warning(_no_key_warning())
            mode = "offline"
        run = wandb.init(
            project=logger_cfg["project"],
            entity=logger_cfg["entity"],
            group=logger_cfg["group"] or config["experiment_name"],
            job_type=logger_cfg["job_type"],
            tags=list(logger_cfg["tags"]),
            name=name or run_name(config, hydra_task_overrides()),
            id=previous_run_id(run_dir) if resume else None,
            resume="allow" if resume else None,
            config=dict(config),
            dir=str(run_dir),
            mode=mode,
            # One run per job: a run left open in this process (the basic launcher runs jobs in turn
            # in one process) is finished, never continued; a batched group's members run side by side.
            reinit="create_new" if concurrent else "finish_previous",
            settings=wandb.Settings(init_timeout=logger_cfg["init_timeout_s"]),
        )
        if run.sweep_id:
            run.config.update({RESOLVED_CONFIG_KEY: dict(config)}, allow_val_change=True)
        run.define_metric(STEP_KEY)
        run.define_metric("*", step_metric=STEP_KEY)
        tracker = WandbTracker(run, wandb)
    except Exception as error:  # noqa: BLE001 - no network, bad key, or any wandb error: train anyway
        log.warning("wandb could not start (%s: %s); training goes on without wandb logging, the run "
                    "files in %s are complete", type(error).__name__, error, run_dir)  # fmt: skip
        if run is not None:
            try:
                run.finish(exit_code=1)
            except Exception:  # noqa: BLE001 - already failing; the warning above is the report
                pass
        return NullTracker()
    log.info("wandb run %s (%s, mode=%s, project=%s, group=%s) in %s", run.name, run.id, mode,
             logger_cfg["project"], run.group, os.fspath(run_dir))  # fmt: skip
    return tracker
