"""The batch order: a fresh random permutation of the training set each epoch, resumable exactly."""

from __future__ import annotations

from typing import Any

import torch

from bn_repro.data.catalog import SAMPLERS


class EpochBatches:
    """Endless training batches from a per-epoch random permutation (drop the ragged tail).

    Each epoch's permutation is drawn from the CPU `generator` and copied to `device` once, so the batch
    order is the same on every device. `epoch` is the epoch of the last batch handed out, and
    `epoch * batches_per_epoch + position` counts the batches handed out so far.
    """

    def __init__(self, num_examples: int, batch_size: int, generator: torch.Generator, device):
        if type(batch_size) is not int or not 0 < batch_size <= num_examples:
            raise ValueError(
                f"batch_size={batch_size!r}: expected an integer in [1, num_examples={num_examples}]"
            )
        if generator.device.type != "cpu":
            raise ValueError(f"the generator must be a CPU generator, got one on {generator.device}")
        self.num_examples = int(num_examples)
        self.batch_size = batch_size
        self.batches_per_epoch = self.num_examples // batch_size
        self.generator = generator
        self.device = torch.device(device)
        self.epoch = 0
        self.position = 0
        self._set_permutation(torch.randperm(self.num_examples, generator=self.generator))

    def _set_permutation(self, permutation: torch.Tensor) -> None:
        self._permutation_cpu = permutation
        self._permutation = permutation.to(self.device)

    def __iter__(self) -> EpochBatches:
        return self

    def __next__(self) -> torch.Tensor:
        if self.position == self.batches_per_epoch:
            self._set_permutation(torch.randperm(self.num_examples, generator=self.generator))
            self.epoch += 1
            self.position = 0
        start = self.position * self.batch_size
        self.position += 1
        return self._permutation[start : start + self.batch_size]

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs for the same batches, including the generator's state
        (it decides every later epoch's permutation). All tensors on the CPU."""
        return {
            "num_examples": self.num_examples,
            "batch_size": self.batch_size,
            "epoch": self.epoch,
            "position": self.position,
            "permutation": self._permutation_cpu.clone(),
            "generator_state": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state_dict; also sets the generator's state."""
        for key in ("num_examples", "batch_size"):
            if state[key] != getattr(self, key):
                raise ValueError(f"state_dict has {key}={state[key]}, this sampler {getattr(self, key)}")
        if not 0 <= state["position"] <= self.batches_per_epoch or state["epoch"] < 0:
            raise ValueError(f"state_dict has epoch={state['epoch']}, position={state['position']}")
        permutation = torch.as_tensor(state["permutation"], dtype=torch.int64, device="cpu")
        if permutation.shape != (self.num_examples,):
            raise ValueError(f"state_dict permutation has shape {tuple(permutation.shape)}")
        self.generator.set_state(state["generator_state"])
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._set_permutation(permutation.clone())


class FewClassBatches:
    """Non-i.i.d. batches (Ioffe 2017, section 4.3): each batch holds `classes_per_batch` classes,
    drawn at random without replacement, with `batch_size / classes_per_batch` examples of each.

    Each class is its own endless stream: a random permutation of its examples, reshuffled when it runs
    out, so over many batches every example is seen about equally often (like an epoch order) while no
    batch mixes more than `classes_per_batch` classes. `epoch` counts `batches_per_epoch` batches (the
    training set's size over the batch size), as with EpochBatches. All draws come from the CPU
    `generator`; the state_dict restores them exactly.
    """

    def __init__(
        self,
        labels: torch.Tensor,
        batch_size: int,
        classes_per_batch: int,
        generator: torch.Generator,
        device,
    ):
        labels = torch.as_tensor(labels).cpu()
        classes = torch.unique(labels)
        if type(classes_per_batch) is not int or not 1 <= classes_per_batch <= len(classes):
            raise ValueError(
                f"data.classes_per_batch={classes_per_batch!r}: expected an integer in [1, {len(classes)}] "
                f"(the number of classes in the training set)"
            )
        if type(batch_size) is not int or batch_size < 1 or batch_size % classes_per_batch:
            raise ValueError(
                f"data.batch_size={batch_size!r} is not a multiple of data.classes_per_batch="
                f"{classes_per_batch}: each batch holds the same number of examples of each of its classes"
            )
        if generator.device.type != "cpu":
            raise ValueError(f"the generator must be a CPU generator, got one on {generator.device}")
        self.num_examples, self.batch_size = len(labels), batch_size
        self.classes_per_batch, self.per_class = classes_per_batch, batch_size // classes_per_batch
        self.members = [torch.nonzero(labels == c).flatten() for c in classes.tolist()]
        small = [c for c, m in zip(classes.tolist(), self.members, strict=True) if len(m) < self.per_class]
        if small:
            raise ValueError(
                f"classes {small} have fewer than batch_size / classes_per_batch = {self.per_class} "
                f"training examples"
            )
        self.batches_per_epoch = self.num_examples // batch_size
        self.generator, self.device = generator, torch.device(device)
        self.batches_drawn = 0
        self.orders = [m[torch.randperm(len(m), generator=generator)] for m in self.members]
        self.positions = [0] * len(self.members)

    @property
    def epoch(self) -> int:
        return max(self.batches_drawn - 1, 0) // self.batches_per_epoch

    def __iter__(self) -> FewClassBatches:
        return self

    def _take(self, c: int) -> torch.Tensor:
        if self.positions[c] + self.per_class > len(self.orders[c]):
            # A new pass: the rest of this one first, then the class's other examples shuffled, so no
            # example is skipped and none comes twice in a batch.
            rest = self.orders[c][self.positions[c] :]
            others = self.members[c][~torch.isin(self.members[c], rest)]
            fresh = others[torch.randperm(len(others), generator=self.generator)]
            self.orders[c], self.positions[c] = torch.cat([rest, fresh]), 0
        start = self.positions[c]
        self.positions[c] += self.per_class
        return self.orders[c][start : start + self.per_class]

    def __next__(self) -> torch.Tensor:
        chosen = torch.randperm(len(self.members), generator=self.generator)[: self.classes_per_batch]
        idx = torch.cat([self._take(c) for c in chosen.tolist()])
        # Shuffled within the batch, so a replica's share under DDP is not a single class.
        idx = idx[torch.randperm(len(idx), generator=self.generator)]
        self.batches_drawn += 1
        return idx.to(self.device)

    def state_dict(self) -> dict[str, Any]:
        return {
            "sampler": "few_classes",
            "batch_size": self.batch_size,
            "classes_per_batch": self.classes_per_batch,
            "batches_drawn": self.batches_drawn,
            "orders": [o.clone() for o in self.orders],
            "positions": list(self.positions),
            "generator_state": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("batch_size", "classes_per_batch"):
            if state.get(key) != getattr(self, key):
                raise ValueError(f"state_dict has {key}={state.get(key)}, this sampler {getattr(self, key)}")
        if len(state["orders"]) != len(self.members):
            raise ValueError(
                f"state_dict has {len(state['orders'])} classes, this sampler {len(self.members)}"
            )
        self.generator.set_state(state["generator_state"])
        self.batches_drawn = int(state["batches_drawn"])
        self.orders = [torch.as_tensor(o, dtype=torch.int64).clone() for o in state["orders"]]
        self.positions = [int(p) for p in state["positions"]]


def make_batches(data_cfg, labels: torch.Tensor, seed: int, device):
    """The run's batch order per `data.sampler` (iid: EpochBatches; few_classes: FewClassBatches)."""
    generator = torch.Generator().manual_seed(seed)
    sampler = data_cfg.get("sampler", "iid")
    if sampler == "iid":
        return EpochBatches(len(labels), data_cfg["batch_size"], generator, device)
    if sampler == "few_classes":
        return FewClassBatches(
            labels, data_cfg["batch_size"], data_cfg["classes_per_batch"], generator, device
        )
    raise ValueError(f"data.sampler={sampler!r} is not valid; choose one of {', '.join(SAMPLERS)}")
