"""The training loop: one run per call, its files in `run_dir` (bn_repro/records/run_files.py).

    summary = train(cfg, run_dir)     # cfg: the app's Hydra config, or its resolved dict

Each step draws a batch, runs the before-step measurements, takes `train_step`, then at evaluation
steps evaluates and logs a metrics row, runs the after-step measurements, and checkpoints when due.
A run dir holding a checkpoint (trainer.checkpoint_every > 0) is resumed from it. Under torchrun every
rank calls this; rank 0 alone writes.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from bn_repro import measures
from bn_repro.config import resolve_config
from bn_repro.engine import distributed, setup
from bn_repro.engine.checkpoint import (
    CHECKPOINT_FILE,
    check_run_dir,
    rng_states,
    save_checkpoint,
    set_rng_states,
)
from bn_repro.engine.evaluate import evaluate, population_stats_accuracy
from bn_repro.engine.state import RunState, Window
from bn_repro.engine.step import loss_fn, train_step
from bn_repro.norms import batch_norm_layers
from bn_repro.records.run_files import SUMMARY_FILE, git_commit, write_json_atomic
from bn_repro.records.run_log import RunLog, truncate_after
from bn_repro.records.tracking import open_tracker


def train(cfg: DictConfig | dict, run_dir: Path) -> dict[str, Any]:
    """Train per `cfg`, write the run files into `run_dir`, and return the summary."""
    session = Session(resolve_config(cfg), Path(run_dir))
    status = "failed"
    try:
        status = session.fit()
    finally:
        session.close(status)
    return session.summary(status)


class Session:
    """One run: its parts, its state, and where its rows go."""

    def __init__(self, config: dict[str, Any], run_dir: Path):
        started = time.perf_counter()
        self.config, self.run_dir = config, run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        replicas = distributed.init_replicas()
        distributed.check_batch_split(config["data"]["batch_size"], replicas)
        resume = check_run_dir(run_dir, config)
        if replicas.active:
            torch.distributed.barrier()  # every rank has looked at the run dir before rank 0 writes to it
        self.run = run = setup.build(config, replicas)
        self.state = RunState(Window(run.device))
        self.measurements = measures.build(config["measure"])
        if resume is not None:
            self._restore(resume)
        self.facts = self._facts()
        with measures.isolated(run.model, run.optimizer, run.device):
            for scheduled in self.measurements:
                scheduled.measurement.setup(self._context(self.state.step, None))
        self.log = RunLog(run_dir, [s.measurement for s in self.measurements], enabled=replicas.is_main)
        # logger=wandb mirrors the run into one wandb run (rank 0 only); finished in close().
        self.tracker = open_tracker(config, run_dir, enabled=replicas.is_main, resume=resume is not None)
        self.facts["wandb"] = self.tracker.info()
        self.facts["setup_s"] = round(time.perf_counter() - started, 3)
        self.started = started
        # Wall time continues from the checkpoint, so a resumed run reports the time of both parts.
        self.loop_start = time.perf_counter() - self.state.wall_time_s
        trainer = config["trainer"]
        self.progress = tqdm(
            total=trainer["max_steps"], initial=self.state.step, desc=config["experiment_name"], unit="step",
            dynamic_ncols=True, disable=None if trainer["progress"] else True, leave=False,
        )  # fmt: skip
        self._pending: list = []  # before-step measurements, logged with the step's other rows

    # ------------------------------------------------------------------------------------------ loop

    def fit(self) -> str:
        run, state, trainer = self.run, self.state, self.config["trainer"]
        max_steps = trainer["max_steps"]
        if state.step == 0:
            self.after_step(0, None, evaluate_now=True, last=False)
        run.net.train()
        for step in range(state.step + 1, max_steps + 1):
            if state.diverged:
                break
            batch = run.next_batch()
            self.measure("before_step", step, batch, last=False)
            loss, logits = train_step(run.net, run.optimizer, run.scheduler, *batch, run.fast)
            state.step = step
            state.window.add(loss, logits, batch[1])
            last = step == max_steps
            evaluate_now = last or step % trainer["eval_every"] == 0
            if last or step % trainer["log_every"] == 0:
                self.progress.update(step - self.progress.n)
                # Reading the loss back forces a device sync, so divergence is checked once a period.
                if not math.isfinite(distributed.sum_over_replicas(state.window.loss, run.replicas).item()):
                    state.diverged = evaluate_now = last = True
            self.after_step(step, batch, evaluate_now, last)
            every = trainer["checkpoint_every"]
            if every and (step % every == 0 or last):
                self.checkpoint(step)
        if trainer["population_stats_batches"] and batch_norm_layers(run.model) and not state.diverged:
            loss, acc = population_stats_accuracy(
                run.model,
                run.data,
                run.batches,
                trainer["population_stats_batches"],
                trainer["eval_batch_size"],
            )
            state.extra.update(final_test_acc_population_stats=acc, final_test_loss_population_stats=loss)
        return "diverged" if state.diverged else "finished"

    def after_step(self, step: int, batch, evaluate_now: bool, last: bool) -> None:
        """The evaluation (when due), then the after-step measurements; one tracker row for the step."""
        row = self.evaluate(step) if evaluate_now else None
        self.measure("after_step", step, batch, last)
        measured, self._pending = self._pending, []
        if row is not None or measured:
            self.tracker.log_step(step, row, measured)
        if row is not None:
            self.write_summary("running")

    def evaluate(self, step: int) -> dict[str, Any]:
        """Test loss and accuracy, and the mean training loss and accuracy since the last evaluation."""
        run, state, window = self.run, self.state, self.state.window
        window_seconds = time.perf_counter() - window.started
        state.train_time_s += window_seconds
        trainer = self.config["trainer"]
        test_loss, test_acc = evaluate(
            run.model, run.data, trainer["eval_batch_size"], limit=trainer.get("eval_examples")
        )
        nan, replicas = float("nan"), run.replicas
        examples = window.steps * self.config["data"]["batch_size"]
        # Each rank saw its share of every batch: the window's loss and accuracy are those of all ranks.
        mean_loss = distributed.sum_over_replicas(window.loss, replicas).item() / replicas.world_size
        correct = distributed.sum_over_replicas(window.correct, replicas).item()
        row = {
            "step": step,
            "epoch": run.batches.epoch,
            "train_loss": mean_loss / window.steps if window.steps else nan,
            "train_acc": correct / examples if examples else nan,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "lr": run.optimizer.param_groups[0]["lr"],
            "wall_time_s": round(time.perf_counter() - self.loop_start, 3),
            "steps_per_s": round(window.steps / window_seconds, 2) if window.steps else nan,
        }
        self.log.metrics(row)
        state.evaluated(test_acc, row["wall_time_s"])
        self.progress.set_postfix(loss=f"{row['train_loss']:.4f}", test_acc=f"{test_acc:.4f}", refresh=False)
        window.reset()
        return row

    def measure(self, phase: str, step: int, batch, last: bool) -> None:
        """Run the measurements due at this step and phase, isolated from training; log their rows."""
        due = [s.measurement for s in self.measurements if s.due(step, phase, last)]
        if not due:
            return
        ctx = self._context(step, batch)
        for measurement in due:
            started = time.perf_counter()
            with measures.isolated(self.run.model, self.run.optimizer, self.run.device):
                rows = measurement.measure(ctx)
            self.state.measured(measurement.name, time.perf_counter() - started)
            self.log.measured(measurement.name, step, rows)
            self._pending.append((measurement, rows))

    def checkpoint(self, step: int) -> None:
        if not self.run.replicas.is_main:
            return
        run = self.run
        save_checkpoint(self.run_dir / CHECKPOINT_FILE, {
            "step": step, "config": self.config, "state": self.state.state_dict(),
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
            "batches": run.batches.state_dict(), "rng": rng_states(),
            "augment": run.augment.state_dict() if run.augment is not None else None,
        })  # fmt: skip

    # ------------------------------------------------------------------------------------------ edges

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        run = self.run
        run.model.load_state_dict(checkpoint["model"])
        run.optimizer.load_state_dict(checkpoint["optimizer"])
        run.scheduler.load_state_dict(checkpoint["scheduler"])
        run.batches.load_state_dict(checkpoint["batches"])
        self.state.load_state_dict(checkpoint["state"])
        set_rng_states(checkpoint["rng"])
        if run.augment is not None:
            run.augment.load_state_dict(checkpoint["augment"])
        # Rows written after the checkpoint are redone by this run: drop them, so none is duplicated.
        if run.replicas.is_main:
            truncate_after(self.run_dir, self.state.step)

    def _context(self, step: int, batch) -> measures.MeasureContext:
        run = self.run
        return measures.MeasureContext(
            step=step, model=run.model, batch=batch, loss_fn=loss_fn, optimizer=run.optimizer, data=run.data,
            device=run.device, config=self.config,
        )  # fmt: skip

    def _facts(self) -> dict[str, Any]:
        """What summary.json says about the run besides its numbers."""
        run, data_cfg = self.run, self.config["data"]
        device = run.device
        return {
            # BN statistics depend on the batch each replica normalises (global with synchronized BN).
            "batch_size": data_cfg["batch_size"],
            "global_batch_size": data_cfg["batch_size"],
            "per_replica_batch_size": data_cfg["batch_size"] // run.replicas.world_size,
            "world_size": run.replicas.world_size,
            "num_params": sum(p.numel() for p in run.model.parameters()),
            "fast_path": run.fast.describe(),
            "threads": run.threads,
            "measurements": [s.measurement.name for s in self.measurements],
            "provenance": {
                "git_commit": git_commit(),
                "torch_version": torch.__version__,
                "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
                "dataset": run.data.name,
                "dataset_source": run.data.source,
                "dataset_checksum": run.data.checksum,
            },
            "config": self.config,
        }

    def summary(self, status: str) -> dict[str, Any]:
        numbers = self.state.summary(status)
        summary = {"status": numbers.pop("status"), "experiment_name": self.config["experiment_name"]}
        return {**summary, **numbers, **self.facts}

    def write_summary(self, status: str) -> None:
        if self.run.replicas.is_main:
            write_json_atomic(self.run_dir / SUMMARY_FILE, self.summary(status))

    def close(self, status: str) -> None:
        self.progress.close()
        self.log.close()
        self.facts["total_time_s"] = round(time.perf_counter() - self.started, 3)
        self.write_summary(status)
        self.tracker.log_summary(self.summary(status))
        self.tracker.finish(exit_code=1 if status == "failed" else 0)
