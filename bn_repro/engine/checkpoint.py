"""Checkpoints that make a killed run resumable to exactly the metrics of an uninterrupted one.

A checkpoint holds everything the loop's future depends on: the run state (bn_repro/engine/state.py:
step, accumulators, best accuracy, times), model, optimizer, scheduler, the batch order, the
augmentation stream and every RNG. It is written atomically, so a kill while writing leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import copy
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bn_repro.records.run_files import METRICS_FILE, atomic_write

CHECKPOINT_FILE = "checkpoint.pt"
# 2: the run state replaced the format-1 "summary" and "window" entries.
FORMAT_VERSION = 2

# Keys that may differ between the interrupted and the resuming command: they change neither the
# training trajectory nor the meaning of the rows already written.
_MAY_DIFFER = (
    ("trainer", "max_steps"),
    ("trainer", "progress"),
    ("trainer", "checkpoint_every"),
    ("logger",),
    # Measurements never change the trajectory (bn_repro/measures/base.isolated): one may be added,
    # dropped or re-timed when a run is resumed.
    ("measure",),
)


class CheckpointError(RuntimeError):
    pass


def _comparable(config: dict) -> dict:
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
    with atomic_write(path, "wb") as f:
        torch.save({"format_version": FORMAT_VERSION, **state}, f)


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
    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError(f"checkpoint {path} is not a bn_repro checkpoint")
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format {state['format_version']!r}, written by another version of "
            f"bn_repro; this one reads format {FORMAT_VERSION}. Resume it with the commit that wrote it "
            f"(summary.json's provenance.git_commit), or start a new run dir (hydra.run.dir=...)"
        )
    diffs = _differences(_comparable(state["config"]), _comparable(config))
    if diffs:
        raise CheckpointError(
            f"checkpoint {path} was written by a different config, so resuming would mix two runs:\n  "
            + "\n  ".join(diffs[:20])
            + "\nUse the original overrides, or a new run dir (hydra.run.dir=...)."
        )
    return state


def check_run_dir(run_dir: Path, config: dict) -> dict[str, Any] | None:
    """The checkpoint to resume from, None for a fresh run; refuses to start over existing results."""
    checkpoint = Path(run_dir) / CHECKPOINT_FILE
    if checkpoint.exists():
        return load_checkpoint(checkpoint, config)
    metrics = Path(run_dir) / METRICS_FILE
    if metrics.exists() and metrics.stat().st_size > 0:
        raise CheckpointError(
            f"{run_dir} already holds results ({METRICS_FILE}) but no {CHECKPOINT_FILE} to resume from; "
            f"refusing to start over them. Choose a new run dir (hydra.run.dir=...), or delete the old files."
        )
    return None
