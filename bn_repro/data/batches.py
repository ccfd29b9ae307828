"""The batch order: a fresh random permutation of the training set each epoch, resumable exactly."""

from __future__ import annotations

from typing import Any

import torch


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
