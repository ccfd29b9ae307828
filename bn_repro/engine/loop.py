"""The training loop: one run per call, its files in `run_dir` (bn_repro/records/run_files.py).

    summary = train(cfg, run_dir)     # cfg: the app's Hydra config, or its resolved dict

Each step draws a batch, runs the before-step measurements, takes `train_step`, then at evaluation
steps evaluates and logs a metrics row, runs the after-step measurements, and checkpoints when due
(every trainer.checkpoint_every_s seconds and/or checkpoint_every steps, and at the end). The run dir
is claimed first (bn_repro/engine/run_dir.py: one writer, resumed from its checkpoint, skipped when
finished). A signal (bn_repro/engine/interrupts.py) ends the run after its step with a checkpoint and
status `interrupted`; a loss explosion ends it as `diverged`. Under torchrun every rank calls this;
rank 0 alone writes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from bn_repro import measures
from bn_repro.config import resolve_config
from bn_repro.engine import distributed, interrupts, setup
from bn_repro.engine.checkpoint import CHECKPOINT_FILE, rng_states, save_checkpoint, set_rng_states
from bn_repro.engine.evaluate import evaluate, population_stats_accuracy
from bn_repro.engine.progress import Progress
from bn_repro.engine.run_dir import Claim, claim_run_dir
from bn_repro.engine.state import RunState, Window
from bn_repro.engine.step import loss_fn, train_step
from bn_repro.norms import batch_norm_layers
from bn_repro.records.run_files import SUMMARY_FILE, git_commit, write_json_atomic
from bn_repro.records.run_log import RunLog
from bn_repro.records.tracking import open_tracker


def train(cfg: DictConfig | dict, run_dir: Path, claim: Claim | None = None) -> dict[str, Any]:
    """Train per `cfg`, write the run files into `run_dir`, and return the summary.

    `claim`: the run dir as the caller already claimed it (bn_repro/engine/run_dir.py); None claims it
    here for the call. A finished run is not trained again: its summary comes back, with skipped=True."""
    config, run_dir = resolve_config(cfg), Path(run_dir)
    owned = claim is None
    if claim is None:
        # Under torchrun rank 0 claims (locks, repairs); the others read the checkpoint once it has.
        main = distributed.is_main_process()
        claim = claim_run_dir(run_dir, config, lock=main, check_files=main)
    try:
        if claim.action == "finished":
            return {**claim.summary, "skipped": True}  # type: ignore[dict-item]
        with interrupts.watch():
            session = Session(config, run_dir, claim)
            status = "failed"
            try:
                status = session.fit()
            finally:
                session.close(status)
            return session.summary(status)
    finally:
        if owned:
            claim.release()


class Session:
    """One run: its parts, its state, and where its rows go."""

    def __init__(
        self,
        config: dict[str, Any],
        run_dir: Path,
        claim: Claim | None = None,
        tracker_name: str | None = None,
        concurrent_tracking: bool = False,
    ):
        """`tracker_name`, `concurrent_tracking`: a batched group's members' wandb runs (open_tracker)."""
        started = time.perf_counter()
        self.config, self.run_dir = config, run_dir
        replicas = distributed.init_replicas()
        distributed.check_batch_split(config["data"]["batch_size"], replicas)
        if replicas.is_main:
            claim = claim or claim_run_dir(run_dir, config, lock=False)
            claim.prepare()
        if replicas.active:
            torch.distributed.barrier()  # rank 0 has repaired the run dir before the others read it
            if not replicas.is_main:
                claim = claim_run_dir(run_dir, config, lock=False, check_files=False)
        assert claim is not None
        self.run = run = setup.build(config, replicas)
        self.state = RunState(Window(run.device))
        self.measurements = measures.build(config["measure"])
        if claim.action == "resume":
            self._restore(claim.checkpoint)  # type: ignore[arg-type]
        self.facts = self._facts()
        with measures.isolated(run.model, run.optimizer, run.device):
            for scheduled in self.measurements:
                scheduled.measurement.setup(self._context(self.state.step, None))
        self.log = RunLog(run_dir, [s.measurement for s in self.measurements], enabled=replicas.is_main)
        # logger=wandb mirrors the run into one wandb run (rank 0 only); finished in close().
        self.tracker = open_tracker(
            config,
            run_dir,
            enabled=replicas.is_main,
            resume=claim.action == "resume",
            name=tracker_name,
            concurrent=concurrent_tracking,
        )
        self.facts["wandb"] = self.tracker.info()
        self.facts["setup_s"] = round(time.perf_counter() - started, 3)
        self.started = started
        # Wall time continues from the checkpoint, so a resumed run reports the time of both parts.
        self.loop_start = time.perf_counter() - self.state.wall_time_s
        self.last_checkpoint = time.perf_counter()
        trainer = config["trainer"]
        # A bar on a terminal, else a log line every 5% (bn_repro/engine/progress.py); rank 0 only.
        self.progress = Progress(
            trainer["max_steps"], self.state.step, config["experiment_name"],
            enabled=trainer["progress"] and replicas.is_main,
        )  # fmt: skip
        self._pending: list = []  # before-step measurements, logged with the step's other rows
        self.interrupted_by: int | None = None

    # ------------------------------------------------------------------------------------------ loop

    def fit(self) -> str:
        run, state, trainer = self.run, self.state, self.config["trainer"]
        max_steps = trainer["max_steps"]
        if state.step == 0 and state.final_test_acc is None:  # not when resumed after step 0's evaluation
            self.after_step(0, None, evaluate_now=True, last=False)
        run.net.train()
        for step in range(state.step + 1, max_steps + 1):
            if state.diverged or self.stop_requested(step):
                break
            batch = run.next_batch()
            self.measure("before_step", step, batch, last=False)
            loss, logits = train_step(run.net, run.optimizer, run.scheduler, *batch, run.fast)
            state.step = step
            state.window.add(loss, logits, batch[1])
            last = step == max_steps
            evaluate_now = last or step % trainer["eval_every"] == 0
            if last or step % trainer["log_every"] == 0:
                self.progress.update(step)
                # Reading the loss back forces a device sync, so divergence is checked once a period.
                if self.exploded():
                    state.diverged = evaluate_now = last = True
            self.after_step(step, batch, evaluate_now, last)
            if self.checkpoint_due(step, last):
                self.checkpoint(step)
        if self.interrupted_by is not None:
            if state.step != state.checkpointed_step:
                self.checkpoint(state.step)
            return "interrupted"
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

    def stop_requested(self, step: int) -> bool:
        """A signal asked the run to stop (bn_repro/engine/interrupts.py). Replicas agree on it at their
        divergence checks (every trainer.log_every steps), so all of them stop after the same step."""
        signum = interrupts.requested()
        if self.run.replicas.active:
            if (step - 1) % self.config["trainer"]["log_every"]:
                return False
            flag = torch.tensor([0.0 if signum is None else float(signum)], device=self.run.device)
            signum = int(distributed.max_over_replicas(flag, self.run.replicas).item()) or None
        if signum is not None:
            self.interrupted_by = signum
        return signum is not None

    def exploded(self) -> bool:
        """The window's mean training loss is not finite, or above trainer.divergence_factor times the
        test loss at step 0 (a loss explosion that trains at chance without ever reaching inf)."""
        window, replicas = self.state.window, self.run.replicas
        loss = distributed.sum_over_replicas(window.loss, replicas).item() / replicas.world_size
        return self.explosion(loss / max(window.steps, 1))

    def explosion(self, mean_loss: float) -> bool:
        factor, reference = self.config["trainer"].get("divergence_factor"), self.state.reference_loss
        return not math.isfinite(mean_loss) or bool(factor and reference and mean_loss > factor * reference)

    def checkpoint_due(self, step: int, last: bool) -> bool:
        trainer = self.config["trainer"]
        every, every_s = trainer["checkpoint_every"], trainer.get("checkpoint_every_s", 0)
        if not (every or every_s):
            return False
        return (
            last
            or bool(every and step % every == 0)
            or bool(every_s and time.perf_counter() - self.last_checkpoint >= every_s)
        )

    def after_step(
        self,
        step: int,
        batch,
        evaluate_now: bool,
        last: bool,
        test: tuple[float, float] | None = None,
        probe_inputs: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        """The evaluation (when due), then the after-step measurements; one tracker row for the step.
        `test`: the test loss and accuracy when the caller has computed them (a batched group);
        `probe_inputs`: likewise the probe points' inputs (MeasureContext.probe_inputs)."""
        row = self.evaluate(step, test) if evaluate_now else None
        self.measure("after_step", step, batch, last, probe_inputs)
        measured, self._pending = self._pending, []
        if row is not None or measured:
            self.tracker.log_step(step, row, measured)
        if row is not None:
            self.write_summary("running")

    def evaluate(self, step: int, test: tuple[float, float] | None = None) -> dict[str, Any]:
        """Test loss and accuracy (`test` when given), and the mean training loss and accuracy since the
        last evaluation."""
        run, state, window = self.run, self.state, self.state.window
        window_seconds = time.perf_counter() - window.started
        state.train_time_s += window_seconds
        trainer = self.config["trainer"]
        test_loss, test_acc = test or evaluate(
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
        if step == 0 and math.isfinite(test_loss):
            state.reference_loss = test_loss
        if not math.isfinite(test_loss):
            state.diverged = True  # a NaN in the test loss alone (e.g. BN's running statistics)
        self.progress.evaluated(step, row["train_loss"], test_acc)  # step 0's NaN loss is left out
        window.reset()
        return row

    def measure(
        self, phase: str, step: int, batch, last: bool, probe_inputs: Mapping[str, torch.Tensor] | None = None
    ) -> None:
        """Run the measurements due at this step and phase, isolated from training; log their rows."""
        due = [s.measurement for s in self.measurements if s.due(step, phase, last)]
        if not due:
            return
        ctx = self._context(step, batch, probe_inputs)
        for measurement in due:
            started = time.perf_counter()
            with measures.isolated(self.run.model, self.run.optimizer, self.run.device):
                rows = measurement.measure(ctx)
            self.state.measured(measurement.name, time.perf_counter() - started)
            self.log.measured(measurement.name, step, rows)
            self._pending.append((measurement, rows))

    def checkpoint(self, step: int) -> None:
        self.state.checkpointed_step = step
        self.last_checkpoint = time.perf_counter()
        if not self.run.replicas.is_main:
            return
        run = self.run
        seconds = save_checkpoint(self.run_dir / CHECKPOINT_FILE, {
            "step": step, "config": self.config, "state": self.state.state_dict(),
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
            "batches": run.batches.state_dict(), "rng": rng_states(),
            "augment": run.augment.state_dict() if run.augment is not None else None,
        }, self.log.record())  # fmt: skip
        self.state.checkpointed(seconds)
        self.last_checkpoint = time.perf_counter()

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
        self.state.checkpointed_step = self.state.step

    def _context(self, step: int, batch, probe_inputs=None) -> measures.MeasureContext:
        run = self.run
        return measures.MeasureContext(
            step=step, model=run.model, batch=batch, loss_fn=loss_fn, optimizer=run.optimizer, data=run.data,
            device=run.device, config=self.config, probe_inputs=probe_inputs,
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
                # The CPU kernels torch chose (AVX512, AVX2, DEFAULT, ...): they round differently, and the
                # small conv nets' curves depend on it (results/README.md, the kernel spread of fig2cpu).
                "cpu_capability": torch.backends.cpu.get_cpu_capability(),
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
        """End the run's files and tracking. Each part runs even if one before it fails (a full disk),
        and the first failure is the one raised."""
        self.facts["total_time_s"] = round(time.perf_counter() - self.started, 3)
        if self.interrupted_by is not None:
            self.facts["interrupted_by"] = interrupts.name(self.interrupted_by)
        failures: list[BaseException] = []
        for part in (
            self.progress.close,
            self.log.close,
            lambda: self.write_summary(status),
            lambda: self.tracker.log_summary(self.summary(status)),
            lambda: self.tracker.finish(exit_code=1 if status == "failed" else 0),
        ):
            try:
                part()
            except Exception as error:  # noqa: BLE001 - re-raised below, after the other parts ran
                failures.append(error)
        if failures and status != "failed":
            raise failures[0]
