"""Evaluation on the test set, with the running statistics or with recomputed population statistics."""

from __future__ import annotations

import copy
import itertools

import torch
import torch.nn.functional as F
from torch import nn

from bn_repro.data import DeviceDataset, EpochBatches
from bn_repro.norms import recompute_population_statistics


@torch.no_grad()
def evaluate(
    model: nn.Module, data: DeviceDataset, batch_size: int, limit: int | None = None, split: str = "test"
) -> tuple[float, float]:
    """Loss and accuracy on the test set (`split="train"`: the training set, unaugmented; its first
    `limit` images when given), in eval mode."""
    images, labels = (data.test_x, data.test_y) if split == "test" else (data.train_x, data.train_y)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=labels.device, dtype=torch.float64)
    correct = torch.zeros((), device=labels.device, dtype=torch.int64)
    n = len(labels) if limit is None else min(limit, len(labels))
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        x = data.normalize(images[start:stop])
        y = labels[start:stop]
        logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    model.train(was_training)
    return loss_sum.item() / n, correct.item() / n


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy of `model` without its process groups (which cannot be copied, and which a copy that
    recomputes statistics on full batches on every rank does not need)."""
    groups = {m: m.process_group for m in model.modules() if getattr(m, "process_group", None) is not None}
    for module in groups:
        module.process_group = None
    try:
        return copy.deepcopy(model)
    finally:
        for module, group in groups.items():
            module.process_group = group


def population_stats_accuracy(
    model: nn.Module, data: DeviceDataset, batches: EpochBatches, num_batches: int, eval_batch_size: int
) -> tuple[float, float]:
    """Test loss and accuracy with BN population statistics recomputed per Algorithm 2, on a copy."""
    probe_model = copy_model(model)
    sampler = copy.deepcopy(batches)  # leaves the training batch order untouched
    inputs = (data.normalize(data.train_x[idx]) for idx in itertools.islice(sampler, num_batches))
    recompute_population_statistics(probe_model, inputs, num_batches)
    return evaluate(probe_model, data, eval_batch_size)
