"""Checkpoints that make a killed run resumable to exactly the metrics of an uninterrupted one.

A checkpoint holds everything the loop's future depends on: the run state (bn_repro/engine/state.py:
step, accumulators, best accuracy, times), model, optimizer, scheduler, the batch order, the
augmentation stream and every RNG; and what it knows of the run's CSV files (their size and SHA-256 at
its step, and their bytes while they are small), so a resume checks them and can rebuild a lost one
(bn_repro/engine/run_dir.py). It is written atomically, so a kill while writing leaves the previous
checkpoint intact, and it ends in the SHA-256 of everything before it, so damage is found on load.
"""

from __future__ import annotations

import copy
import hashlib
import io
import pickle
import random
import time
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bn_repro.errors import UserError
from bn_repro.records.run_files import atomic_write, writing

CHECKPOINT_FILE = "checkpoint.pt"
# 2: the run state replaced the format-1 "summary" and "window" entries. 3: the SHA-256 trailer and the
# run files' record.
FORMAT_VERSION = 3
# The file is torch.save's bytes, then this marker and their SHA-256 in hex, then a newline.
DIGEST_MARKER = b"\nbn_repro-sha256:"
_TRAILER_SIZE = len(DIGEST_MARKER) + 64 + 1
# The run files' bytes travel in the checkpoint while they total at most this (the Fig. 1 run's are
# about 0.25 MB at 50,000 steps); beyond it the checkpoint keeps their digests only.
RUN_FILE_COPY_LIMIT = 16 * 2**20

# Keys that may differ between the interrupted and the resuming command: they change neither the
# training trajectory nor the meaning of the rows already written.
_MAY_DIFFER = (
    ("trainer", "max_steps"),
    ("trainer", "progress"),
    ("trainer", "checkpoint_every"),
    ("trainer", "checkpoint_every_s"),
    ("logger",),
    # Measurements never change the trajectory (bn_repro/measures/base.isolated): one may be added,
    # dropped or re-timed when a run is resumed.
    ("measure",),
)


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be resumed from: damaged, of another version or of another config."""


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


def save_checkpoint(path: Path, state: dict[str, Any], run_files: dict[str, dict] | None = None) -> float:
    """Write `state` to `path` atomically, with the run files' `records` (CsvLog.record(): size and
    SHA-256; their bytes are read from the run dir and kept while small). Returns the seconds it took."""
    started = time.perf_counter()
    path = Path(path)
    records = {name: dict(record) for name, record in (run_files or {}).items()}
    if sum(r["bytes"] for r in records.values()) <= RUN_FILE_COPY_LIMIT:
        for name, record in records.items():
            with writing(path.parent / name), open(path.parent / name, "rb") as f:
                record["content"] = f.read(record["bytes"])
    payload = {
        "format_version": FORMAT_VERSION,
        "saved_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        **state,
        "run_files": records,
    }
    # Serialised in memory first: a full disk then fails in our own write, which names the path
    # (torch's zip writer reports it as "unexpected pos ...").
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getvalue()
    with atomic_write(path, "wb") as f:
        f.write(body + DIGEST_MARKER + hashlib.sha256(body).hexdigest().encode() + b"\n")
    return time.perf_counter() - started


def _fix_hint(path: Path) -> str:
    return (
        f"Move it away ({path} -> {path}.bad) to start the run over, restore it from a backup, or choose "
        f"another run dir (hydra.run.dir=...)"
    )


def _checked_body(path: Path) -> bytes:
    """torch.save's bytes from `path`, once its SHA-256 trailer matches them."""
    try:
        data = path.read_bytes()
    except OSError as err:
        reason = err.strerror or err
        raise CheckpointError(f"checkpoint {path} is unreadable ({reason}). {_fix_hint(path)}") from None
    body, trailer = data[:-_TRAILER_SIZE], data[-_TRAILER_SIZE:]
    if not (trailer.startswith(DIGEST_MARKER) and trailer.endswith(b"\n")):
        if data.startswith(b"PK"):  # a zip without our trailer: torch.save's file from before format 3
            raise CheckpointError(
                f"checkpoint {path} has no SHA-256 trailer: it is damaged at its end, or written by a "
                f"version of bn_repro before checkpoint format {FORMAT_VERSION} (resume it with the commit "
                f"in summary.json's provenance.git_commit). {_fix_hint(path)}"
            )
        raise CheckpointError(f"checkpoint {path} is not a bn_repro checkpoint. {_fix_hint(path)}")
    digest = trailer[len(DIGEST_MARKER) : -1].decode("ascii", "replace")
    if hashlib.sha256(body).hexdigest() != digest:
        raise CheckpointError(
            f"checkpoint {path} is damaged: its SHA-256 does not match the one written with it, so it is "
            f"not resumed from. {_fix_hint(path)}"
        )
    return body


def load_checkpoint(path: Path, config: dict) -> dict[str, Any]:
    """Load a checkpoint written for `config`; refuse a damaged one or one from another config."""
    path = Path(path)
    body = _checked_body(path)
    try:
        # weights_only=False: the checkpoint holds RNG states (numpy arrays, tuples) besides tensors,
        # and its digest matched: it is the file this app wrote into its own run dir.
        state = torch.load(io.BytesIO(body), map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as err:
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({type(err).__name__}: {err}). {_fix_hint(path)}"
        ) from err
    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError(f"checkpoint {path} is not a bn_repro checkpoint. {_fix_hint(path)}")
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format {state['format_version']!r}, written by another version of "
            f"bn_repro; this one reads format {FORMAT_VERSION}. Resume it with the commit that wrote it "
            f"(summary.json's provenance.git_commit), or start a new run dir (hydra.run.dir=...)"
        )
    check_same_config(state["config"], config, f"checkpoint {path}")
    return state


def check_same_config(old: dict, new: dict, what: str) -> None:
    """Refuse to continue `what` (written with config `old`) with config `new`."""
    diffs = _differences(_comparable(old), _comparable(new))
    if diffs:
        raise CheckpointError(
            f"{what} was written by a different config, so going on would mix two runs: "
            + "; ".join(diffs[:10])
            + (f" (and {len(diffs) - 10} more)" if len(diffs) > 10 else "")
            + ". Use the original overrides, or a new run dir (hydra.run.dir=...)"
        )
