"""The run state: what the loop carries from step to step, what a checkpoint holds of it, and the
numbers summary.json reports."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch


class Window:
    """Training steps since the last evaluation; their mean loss and accuracy become one metrics row.

    Loss and correct counts stay on the device (no sync per step); they are read at evaluations.
    """

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), device=device, dtype=torch.float64)
        self.correct = torch.zeros((), device=device, dtype=torch.int64)
        self.steps = 0
        self.started = time.perf_counter()

    def add(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        self.loss += loss
        self.correct += (logits.argmax(1) == targets).sum()
        self.steps += 1

    def reset(self) -> None:
        self.loss.zero_()
        self.correct.zero_()
        self.steps = 0
        self.started = time.perf_counter()

    def state_dict(self) -> dict[str, Any]:
        return {"loss": self.loss.cpu(), "correct": self.correct.cpu(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss.copy_(state["loss"])
        self.correct.copy_(state["correct"])
        self.steps = state["steps"]


@dataclass
class RunState:
    """Loop state. `step` is the last completed training step; times continue across a resume."""

    window: Window
    step: int = 0
    final_test_acc: float | None = None
    best_test_acc: float | None = None
    wall_time_s: float = 0.0  # training loop time, evaluations and measurements included
    train_time_s: float = 0.0  # time in training steps only (evaluations and measurements left out)
    # Seconds spent in each measurement on the seam (its cost; also left out of train_time_s).
    measure_time_s: dict[str, float] = field(default_factory=dict)
    measure_calls: dict[str, int] = field(default_factory=dict)
    diverged: bool = False
    # The test loss at step 0: trainer.divergence_factor times it is a loss explosion.
    reference_loss: float | None = None
    checkpoints: int = 0  # written by this run, its earlier parts included
    checkpoint_time_s: float = 0.0
    resumed_from_step: int | None = None
    checkpointed_step: int | None = None  # the step of the last checkpoint written or resumed from
    extra: dict[str, Any] = field(default_factory=dict)  # end-of-run numbers (population statistics)

    _CHECKPOINTED: ClassVar[tuple[str, ...]] = (
        "step", "final_test_acc", "best_test_acc", "wall_time_s", "train_time_s", "diverged",
        "measure_time_s", "measure_calls", "reference_loss", "checkpoints", "checkpoint_time_s",
    )  # fmt: skip

    def measured(self, name: str, seconds: float) -> None:
        self.measure_time_s[name] = self.measure_time_s.get(name, 0.0) + seconds
        self.measure_calls[name] = self.measure_calls.get(name, 0) + 1
        self.window.started += seconds  # the window times training steps only

    def checkpointed(self, seconds: float) -> None:
        self.checkpoints += 1
        self.checkpoint_time_s += seconds
        self.window.started += seconds  # the window times training steps only

    def evaluated(self, test_acc: float, wall_time_s: float) -> None:
        self.final_test_acc = test_acc
        self.best_test_acc = test_acc if self.best_test_acc is None else max(self.best_test_acc, test_acc)
        self.wall_time_s = wall_time_s

    def state_dict(self) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in self._CHECKPOINTED}, "window": self.window.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in self._CHECKPOINTED:
            setattr(self, key, state[key])
        self.window.load_state_dict(state["window"])
        self.resumed_from_step = state["step"]

    def summary(self, status: str) -> dict[str, Any]:
        """The run's numbers for summary.json (the run's static facts are added by the loop)."""
        steps_per_s = round(self.step / max(self.wall_time_s, 1e-9), 2) if status != "running" else None
        numbers = {
            "status": status,
            "final_test_acc": self.final_test_acc,
            "best_test_acc": self.best_test_acc,
            "steps": self.step,
            "wall_time_s": self.wall_time_s,
            "train_time_s": round(self.train_time_s, 3),
            # steps_per_s counts evaluations and measurements too (the run's real throughput);
            # train_steps_per_s only the time spent in training steps.
            "steps_per_s": steps_per_s,
            "diverged": self.diverged,
            "checkpoints": self.checkpoints,
            "checkpoint_time_s": round(self.checkpoint_time_s, 3),
        }
        if self.measure_time_s:
            numbers["measure_time_s"] = {k: round(v, 3) for k, v in self.measure_time_s.items()}
            numbers["measure_ms_per_call"] = {
                k: round(1000 * v / self.measure_calls[k], 2) for k, v in self.measure_time_s.items()
            }
        if status != "running":
            numbers["train_steps_per_s"] = (
                round(self.step / self.train_time_s, 2) if self.train_time_s else None
            )
        if self.resumed_from_step is not None:
            numbers["resumed_from_step"] = self.resumed_from_step
        return {**numbers, **self.extra}
