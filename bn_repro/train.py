"""The training app: one Hydra job trains one model and writes its run files.

    python -m bn_repro.train experiment=fig1_fashion_mnist norm=builtin        # one run
    python -m bn_repro.train -m experiment=fig1_mnist norm=none,builtin        # the Fig. 1 pair
    python -m bn_repro.train data=synthetic trainer.max_steps=200              # a smoke run, no files

Outputs (metrics.csv, activations.csv, summary.json) land in the Hydra job's output dir; see
bn_repro/run_files.py for their columns.
"""

from __future__ import annotations

import copy
import itertools
import math
import random
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm import tqdm

from bn_repro import distributed
from bn_repro.accel import FastPath
from bn_repro.augment import RandomCropFlip
from bn_repro.checkpoint import (
    CHECKPOINT_FILE,
    CheckpointError,
    load_checkpoint,
    rng_states,
    save_checkpoint,
    set_rng_states,
)
from bn_repro.config import validate_config
from bn_repro.data import DeviceDataset, EpochBatches, load_dataset
from bn_repro.models import build_model
from bn_repro.norm import batch_norm_layers, recompute_population_statistics
from bn_repro.probes import ActivationProbe
from bn_repro.run_files import (
    ACTIVATIONS_COLUMNS,
    ACTIVATIONS_FILE,
    METRICS_COLUMNS,
    METRICS_FILE,
    SUMMARY_FILE,
    CsvLog,
    NullLog,
    git_commit,
    truncate_rows_after,
    write_json_atomic,
)
from bn_repro.tracking import open_tracker


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("trainer.device=cuda but CUDA is not available; use trainer.device=auto or cpu")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def build_optimizer(model: nn.Module, optim_cfg: dict[str, Any]) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        model.parameters(),
        lr=optim_cfg["lr"],
        momentum=optim_cfg["momentum"],
        nesterov=optim_cfg["nesterov"],
        weight_decay=optim_cfg["weight_decay"],
    )


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: dict[str, Any]):
    if schedule["name"] == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    rate, period, staircase = schedule["decay_rate"], schedule["decay_steps"], schedule["staircase"]
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: rate ** ((step // period) if staircase else (step / period))
    )


@torch.no_grad()
def evaluate(model: nn.Module, data: DeviceDataset, batch_size: int) -> tuple[float, float]:
    """Loss and accuracy on the full test set, in eval mode."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=data.test_y.device, dtype=torch.float64)
    correct = torch.zeros((), device=data.test_y.device, dtype=torch.int64)
    for start in range(0, len(data.test_y), batch_size):
        x = data.normalize(data.test_x[start : start + batch_size])
        y = data.test_y[start : start + batch_size]
        logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    model.train(was_training)
    n = len(data.test_y)
    return loss_sum.item() / n, correct.item() / n


def population_stats_accuracy(model, data, batches: EpochBatches, num_batches: int, eval_batch_size: int):
    """Test accuracy with BN population statistics recomputed per Algorithm 2, on a copy of the model."""
    # A process group cannot be copied, and the copy needs none: every rank recomputes on the same
    # full batches, so there are no statistics to share across ranks.
    groups = {m: m.process_group for m in model.modules() if getattr(m, "process_group", None) is not None}
    for module in groups:
        module.process_group = None
    try:
        probe_model = copy.deepcopy(model)
    finally:
        for module, group in groups.items():
            module.process_group = group
    sampler = copy.deepcopy(batches)  # leaves the training batch order untouched
    inputs = (data.normalize(data.train_x[idx]) for idx in itertools.islice(sampler, num_batches))
    recompute_population_statistics(probe_model, inputs, num_batches)
    return evaluate(probe_model, data, eval_batch_size)


class _Window:
    """Training steps since the last evaluation; their mean loss and accuracy become one metrics row."""

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), device=device, dtype=torch.float64)
        self.correct = torch.zeros((), device=device, dtype=torch.int64)
        self.steps = 0
        self.started = time.perf_counter()

    def state_dict(self) -> dict[str, Any]:
        return {"loss": self.loss.cpu(), "correct": self.correct.cpu(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss.copy_(state["loss"])
        self.correct.copy_(state["correct"])
        self.steps = state["steps"]


def _check_run_dir(run_dir: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint to resume from, None for a fresh run; refuses to start over existing results."""
    checkpoint = run_dir / CHECKPOINT_FILE
    if checkpoint.exists():
        return load_checkpoint(checkpoint, config)
    metrics = run_dir / METRICS_FILE
    if metrics.exists() and metrics.stat().st_size > 0:
        raise CheckpointError(
            f"{run_dir} already holds results ({METRICS_FILE}) but no {CHECKPOINT_FILE} to resume from; "
            f"refusing to start over them. Choose a new run dir (hydra.run.dir=...), or delete the old files."
        )
    return None


def train(cfg: DictConfig | dict, run_dir: Path) -> dict[str, Any]:
    """Train per `cfg`, write the run files into `run_dir`, and return the summary.

    A run dir holding a checkpoint (trainer.checkpoint_every > 0) is resumed from it. Under torchrun every
    rank calls this; rank 0 alone writes.
    """
    config = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else copy.deepcopy(cfg)
    validate_config(config)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    replicas = distributed.init_replicas()
    distributed.check_batch_split(config["data"]["batch_size"], replicas)
    resume = _check_run_dir(run_dir, config)
    if replicas.active:
        torch.distributed.barrier()  # every rank has looked at the run dir before rank 0 writes to it
    trainer, data_cfg = config["trainer"], config["data"]
    started = time.perf_counter()

    device = resolve_device(trainer["device"])
    if replicas.active and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    seed_everything(config["seed"], trainer["deterministic"])
    data = load_dataset(
        data_cfg["name"], data_cfg["root"], device,
        download=data_cfg["download"], download_timeout_s=data_cfg["download_timeout_s"],
        synthetic=data_cfg.get("synthetic"),
    )  # fmt: skip
    model = build_model(config["model"], config["norm"], data.input_shape, data.num_classes).to(device)
    if replicas.active:
        model = distributed.synchronize_batch_norm(model, device)
    fast = FastPath.from_config(trainer, device, model)
    fast.prepare(model)
    # `net` runs the training steps (DDP-wrapped under torchrun, compiled with trainer.compile); evaluation
    # and probes use `model`.
    net = fast.compiled(distributed.wrap(model, device) if replicas.active else model)
    optimizer = build_optimizer(model, config["optim"])
    scheduler = build_scheduler(optimizer, config["optim"]["schedule"])
    generator = torch.Generator().manual_seed(config["seed"])
    batches = EpochBatches(len(data.train_y), data_cfg["batch_size"], generator, device)
    # Crops and flips draw from their own generator (one stream per replica), on the data's device.
    augment = None
    if data_cfg["augment"]:
        augment = RandomCropFlip(seed=config["seed"] + replicas.rank, device=device)
    window = _Window(device)

    probe_cfg = config["probe"]
    probe = ActivationProbe(model.probe_points(), probe_cfg["units"])
    probe_x = data.normalize(data.test_x[: probe_cfg["num_examples"]])

    summary: dict[str, Any] = {
        "status": "running",
        "experiment_name": config["experiment_name"],
        "final_test_acc": None,
        "best_test_acc": None,
        "steps": 0,
        "wall_time_s": 0.0,
        "train_time_s": 0.0,
        "steps_per_s": None,
        "diverged": False,
        # BN statistics depend on the batch each replica normalises (global with synchronized BN).
        "batch_size": data_cfg["batch_size"],
        "global_batch_size": data_cfg["batch_size"],
        "per_replica_batch_size": data_cfg["batch_size"] // replicas.world_size,
        "world_size": replicas.world_size,
        "num_params": sum(p.numel() for p in model.parameters()),
        "fast_path": fast.describe(),
        "provenance": {
            "git_commit": git_commit(),
            "torch_version": torch.__version__,
            "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
            "dataset": data.name,
            "dataset_source": data.source,
            "dataset_checksum": data.checksum,
        },
        "config": config,
    }
    start_step = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        batches.load_state_dict(resume["batches"])
        window.load_state_dict(resume["window"])
        set_rng_states(resume["rng"])
        if augment is not None:
            augment.load_state_dict(resume["augment"])
        start_step = resume["step"]
        kept = {k: resume["summary"][k] for k in ("final_test_acc", "best_test_acc", "steps", "wall_time_s",
                                                  "train_time_s", "diverged")}  # fmt: skip
        summary.update(kept, resumed_from_step=start_step)
        # Rows written after the checkpoint are redone by this run: drop them, so none is duplicated.
        truncate_rows_after(run_dir / METRICS_FILE, start_step)
        truncate_rows_after(run_dir / ACTIVATIONS_FILE, start_step)

    if replicas.is_main:
        metrics_log = CsvLog(run_dir / METRICS_FILE, METRICS_COLUMNS)
        activations_log = CsvLog(run_dir / ACTIVATIONS_FILE, ACTIVATIONS_COLUMNS)
    else:
        metrics_log = activations_log = NullLog()

    def write_summary() -> None:
        if replicas.is_main:
            write_json_atomic(run_dir / SUMMARY_FILE, summary)

    def probe_forward():
        model.train(probe_cfg["mode"] == "train")
        try:
            model(probe_x)
        finally:
            model.train()

    # logger=wandb mirrors the run into one wandb run (rank 0 only); finished in the `finally` below.
    tracker = open_tracker(config, run_dir, enabled=replicas.is_main, resume=resume is not None)
    summary["wandb"] = tracker.info()
    max_steps, eval_every, log_every = trainer["max_steps"], trainer["eval_every"], trainer["log_every"]
    checkpoint_every = trainer["checkpoint_every"]
    summary["setup_s"] = round(time.perf_counter() - started, 3)
    # Wall and training time continue from the checkpoint, so a resumed run reports the time of both parts.
    loop_start = time.perf_counter() - summary["wall_time_s"]
    progress = tqdm(
        total=max_steps, initial=start_step, desc=config["experiment_name"], unit="step", dynamic_ncols=True,
        disable=None if trainer["progress"] else True, leave=False,
    )  # fmt: skip

    def record(step: int) -> dict:
        """Evaluate, probe, and write one metrics row plus the activation rows."""
        window_seconds = time.perf_counter() - window.started
        summary["train_time_s"] += window_seconds
        test_loss, test_acc = evaluate(model, data, trainer["eval_batch_size"])
        probed = probe.measure(probe_forward)
        nan = float("nan")
        examples = window.steps * data_cfg["batch_size"]
        # Each rank saw its share of every batch: the window's loss and accuracy are those of all ranks.
        mean_loss = distributed.sum_over_replicas(window.loss, replicas).item() / replicas.world_size
        correct = distributed.sum_over_replicas(window.correct, replicas).item()
        row = {
            "step": step,
            "epoch": batches.epoch,
            "train_loss": mean_loss / window.steps if window.steps else nan,
            "train_acc": correct / examples if examples else nan,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "lr": optimizer.param_groups[0]["lr"],
            "wall_time_s": round(time.perf_counter() - loop_start, 3),
            "steps_per_s": round(window.steps / window_seconds, 2) if window.steps else nan,
        }
        metrics_log.write(row)
        activations_log.write([{"step": step, **r} for r in probed.rows])
        tracker.log_eval(row, probed)
        best = summary["best_test_acc"]
        summary.update(steps=step, best_test_acc=test_acc if best is None else max(best, test_acc),
                       final_test_acc=test_acc, wall_time_s=row["wall_time_s"])  # fmt: skip
        write_summary()
        progress.set_postfix(loss=f"{row['train_loss']:.4f}", test_acc=f"{test_acc:.4f}", refresh=False)
        window.__init__(device)
        return row

    def checkpoint(step: int) -> None:
        if not replicas.is_main:
            return
        save_checkpoint(run_dir / CHECKPOINT_FILE, {
            "step": step, "config": config, "summary": summary, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "batches": batches.state_dict(), "window": window.state_dict(), "rng": rng_states(),
            "augment": augment.state_dict() if augment is not None else None,
        })  # fmt: skip

    try:
        if resume is None:
            record(0)
        net.train()
        for step in range(start_step + 1, max_steps + 1):
            if summary["diverged"]:
                break
            idx = next(batches)
            if replicas.active:
                idx = distributed.local_share(idx, replicas)
            images = data.train_x[idx]
            x, y = data.normalize(augment(images) if augment is not None else images), data.train_y[idx]
            with fast.autocast():
                logits = net(fast.input(x))
                loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            window.loss += loss.detach()
            window.correct += (logits.detach().argmax(1) == y).sum()
            window.steps += 1
            evaluate_now = step % eval_every == 0 or step == max_steps
            if step % log_every == 0 or step == max_steps:
                progress.update(step - progress.n)
                # Reading the loss back forces a device sync, so divergence is checked once a period.
                if not math.isfinite(distributed.sum_over_replicas(window.loss, replicas).item()):
                    summary["diverged"] = evaluate_now = True
            if evaluate_now:
                record(step)
            if checkpoint_every and (step % checkpoint_every == 0 or step == max_steps):
                checkpoint(step)
        # steps_per_s counts evaluation and probes too (the run's real throughput);
        # train_steps_per_s only the time spent in training steps.
        train_seconds = summary["train_time_s"]
        summary["train_time_s"] = round(train_seconds, 3)
        summary["steps_per_s"] = round(summary["steps"] / max(summary["wall_time_s"], 1e-9), 2)
        summary["train_steps_per_s"] = round(summary["steps"] / train_seconds, 2) if train_seconds else None
        if trainer["population_stats_batches"] and batch_norm_layers(model) and not summary["diverged"]:
            pop_loss, pop_acc = population_stats_accuracy(
                model, data, batches, trainer["population_stats_batches"], trainer["eval_batch_size"]
            )
            summary["final_test_acc_population_stats"] = pop_acc
            summary["final_test_loss_population_stats"] = pop_loss
        summary["status"] = "diverged" if summary["diverged"] else "finished"
    except BaseException:
        summary["status"] = "failed"
        raise
    finally:
        progress.close()
        metrics_log.close()
        activations_log.close()
        summary["total_time_s"] = round(time.perf_counter() - started, 3)
        write_summary()
        tracker.log_summary(summary)
        tracker.finish(exit_code=1 if summary["status"] == "failed" else 0)
    return summary


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    summary = train(cfg, run_dir)
    print(
        f"{summary['experiment_name']}: status={summary['status']} steps={summary['steps']} "
        f"final_test_acc={summary['final_test_acc']:.4f} best_test_acc={summary['best_test_acc']:.4f} "
        f"({summary['steps_per_s']} steps/s) -> {run_dir}"
    )
    # A returned number lets Hydra sweepers (e.g. Optuna) optimise it.
    return summary["final_test_acc"]


def main() -> None:
    """Console entry point (`bn-repro-train`): under torchrun, agree on one run dir before Hydra starts."""
    distributed.share_run_stamp()
    _hydra_main()


if __name__ == "__main__":
    main()
