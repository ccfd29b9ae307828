"""Everything a run is made of, built from its resolved config: device, threads, data, model, optimizer,
schedule, batch order and augmentation. The app and the benchmarks build runs the same way."""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from bn_repro import norms
from bn_repro.data import (
    DeviceDataset,
    EpochBatches,
    FewClassBatches,
    RandomCropFlip,
    load_dataset,
    make_batches,
)
from bn_repro.engine import distributed
from bn_repro.engine.fast_path import FastPath
from bn_repro.models import build_model

# trainer.threads=auto: one intra-op thread per process. Measured on the 2-core machine this repo is
# developed on (README, "CPU threads"): a Fig. 1 step is bound by per-op overhead, so a second thread
# gains little when the machine is idle and stalls the run when another process holds a core (2.5
# steps/s against 250-350 with one thread); parallel jobs (hydra/launcher=parallel) take one core each.
AUTO_THREADS = 1


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("trainer.device=cuda but CUDA is not available; use trainer.device=auto or cpu")
    return torch.device(name)


def resolve_threads(threads: int | str) -> int:
    return AUTO_THREADS if threads == "auto" else int(threads)


def set_threads(threads: int | str) -> int:
    """Set torch's intra-op thread count per trainer.threads; returns the count."""
    count = resolve_threads(threads)
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def build_optimizer(model: nn.Module, optim_cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        model.parameters(),
        lr=optim_cfg["lr"],
        momentum=optim_cfg["momentum"],
        nesterov=optim_cfg["nesterov"],
        weight_decay=optim_cfg["weight_decay"],
    )


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: Mapping[str, Any]):
    if schedule["name"] == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    rate, period, staircase = schedule["decay_rate"], schedule["decay_steps"], schedule["staircase"]
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: rate ** ((step // period) if staircase else (step / period))
    )


# Set by shared_data(): the data sets loaded so far, by (data config, device).
_shared_data: dict[str, DeviceDataset] | None = None


@contextlib.contextmanager
def shared_data() -> Iterator[None]:
    """Within it, runs built with the same data config on the same device share one loaded data set.

    The batched members of bn_repro/batched/ build their runs one after another in one process; a run
    only reads its data set, and K copies would cost K times the memory and the load time."""
    global _shared_data
    outer = _shared_data
    _shared_data = {} if outer is None else outer
    try:
        yield
    finally:
        _shared_data = outer


def load_data(config: Mapping[str, Any], device: torch.device) -> DeviceDataset:
    d = config["data"]
    key = f"{json.dumps(d, sort_keys=True, default=str)} on {device}"
    if _shared_data is not None and key in _shared_data:
        return _shared_data[key]
    data = load_dataset(
        d["name"], d["root"], device, download=d["download"], download_timeout_s=d["download_timeout_s"],
        synthetic=d.get("synthetic"),
    )  # fmt: skip
    if _shared_data is not None:
        _shared_data[key] = data
    return data


@dataclass
class Components:
    """One run's parts. `net` runs the training steps (DDP-wrapped under torchrun, compiled with
    trainer.compile); evaluation and measurements use the plain `model`, which shares its parameters."""

    device: torch.device
    replicas: distributed.Replicas
    data: DeviceDataset
    model: nn.Module
    net: nn.Module
    fast: FastPath
    optimizer: torch.optim.Optimizer
    scheduler: Any
    batches: EpochBatches | FewClassBatches
    augment: RandomCropFlip | None
    threads: int

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's (inputs, targets): this replica's share, augmented, standardised."""
        idx = next(self.batches)
        if self.replicas.active:
            idx = distributed.local_share(idx, self.replicas)
        images = self.data.train_x[idx]
        if self.augment is not None:
            images = self.augment(images)
        return self.fast.input(self.data.normalize(images)), self.data.train_y[idx]


def build(config: Mapping[str, Any], replicas: distributed.Replicas | None = None) -> Components:
    """Seed, then build every part of the run in a fixed order (so a seed fixes the initial weights)."""
    replicas = replicas or distributed.Replicas()
    trainer, data_cfg = config["trainer"], config["data"]
    threads = set_threads(trainer["threads"])
    device = resolve_device(trainer["device"])
    if replicas.active and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    seed_everything(config["seed"], trainer["deterministic"])
    data = load_data(config, device)
    norm_layer = norms.factory(config["norm"])
    model = build_model(config["model"], norm_layer, data.input_shape, data.num_classes).to(device)
    if replicas.active:
        model = norms.synchronize(model, device)
    fast = FastPath.from_config(trainer, device, model)
    fast.prepare(model)
    net = fast.compiled(distributed.wrap(model, device) if replicas.active else model)
    optimizer = build_optimizer(model, config["optim"])
    scheduler = build_scheduler(optimizer, config["optim"]["schedule"])
    batches = make_batches(data_cfg, data.train_y, config["seed"], device)
    # Crops and flips draw from their own generator (one stream per replica), on the data's device.
    augment = (
        RandomCropFlip(seed=config["seed"] + replicas.rank, device=device) if data_cfg["augment"] else None
    )
    return Components(
        device, replicas, data, model, net, fast, optimizer, scheduler, batches, augment, threads
    )
