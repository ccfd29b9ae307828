"""Checkpoints that make a killed run resumable to exactly the metrics of an uninterrupted one.

A checkpoint holds everything the loop's future depends on: model, optimizer, scheduler, the batch
order, every RNG, the step, and the loop's running accumulators. It is written atomically, so a kill
while writing leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT_VERSION = 1

# Keys that may differ between the interrupted and the resuming command: they change neither the
# training trajectory nor the meaning of the rows already written.
_MAY_DIFFER = (
    ("trainer", "max_steps"),
    ("trainer", "progress"),
    ("trainer", "checkpoint_every"),
    ("logger",),
)


class CheckpointError(RuntimeError):
    pass


def _comparable(config: dict) -> dict:
    import copy

    config = copy.deepcopy(config)
    for path in _MAY_DIFFER:
        node = config
        for key in path[:-1]:
            node = node.get(key, {})
        node.pop(path[-1], None)
    return config


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        diffs = []
        for key in sorted(set(old) | set(new), key=str):
            where = f"{prefix}.{key}" if prefix else str(key)
            if key not in old or key not in new:
                diffs.append(f"{where}: {old.get(key, '<absent>')!r} -> {new.get(key, '<absent>')!r}")
            else:
                diffs.extend(_differences(old[key], new[key], where))
        return diffs
    return [] if old == new else [f"{prefix}: {old!r} -> {new!r}"]


def rng_states() -> dict[str, Any]:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"format_version": FORMAT_VERSION, **state}, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path, config: dict) -> dict[str, Any]:
    """Load a checkpoint written for `config`; refuse a corrupt one or one from another config."""
    path = Path(path)
    try:
        # weights_only=False: the checkpoint holds RNG states (numpy arrays, tuples) besides tensors.
        # It is a file this app wrote into its own run dir.
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({type(err).__name__}: {err}). It is not overwritten: move "
            f"it away to resume from nothing, or choose a new run dir (hydra.run.dir=...)"
        ) from err
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} is not a bn_repro checkpoint of format {FORMAT_VERSION}")
    diffs = _differences(_comparable(state["config"]), _comparable(config))
    if diffs:
        raise CheckpointError(
            f"checkpoint {path} was written by a different config, so resuming would mix two runs:\n  "
            + "\n  ".join(diffs[:20])
            + "\nUse the original overrides, or a new run dir (hydra.run.dir=...)."
        )
    return state
