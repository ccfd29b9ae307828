"""The files a run leaves in its output dir; other issues and the figure scripts read them.

- metrics.csv: one row per evaluation.
- activations.csv: one row per (evaluation, probed layer, probed unit).
- summary.json: final (or latest) numbers, provenance and the resolved config.

Rows are flushed as they are written and summary.json is replaced atomically, so a killed run leaves
files that parse.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

METRICS_FILE = "metrics.csv"
ACTIVATIONS_FILE = "activations.csv"
SUMMARY_FILE = "summary.json"

METRICS_COLUMNS = (
    "step", "epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "wall_time_s", "steps_per_s",
)  # fmt: skip
ACTIVATIONS_COLUMNS = ("step", "layer", "unit", "p15", "p50", "p85", "mean", "std", "layer_mean", "layer_std")


class CsvLog:
    """Append-only CSV with a fixed header; each row reaches the disk before `write` returns."""

    def __init__(self, path: Path, columns: Sequence[str]):
        self.path = Path(path)
        self.columns = tuple(columns)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._file = open(self.path, "a", newline="")  # noqa: SIM115 - closed in close()
        self._writer = csv.DictWriter(self._file, fieldnames=self.columns, extrasaction="raise")
        if new:
            self._writer.writeheader()
            self._file.flush()

    def write(self, rows: dict | Sequence[dict]) -> None:
        self._writer.writerows([rows] if isinstance(rows, dict) else rows)
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class NullLog:
    """Stands in for a CsvLog on processes that must not write (DDP ranks other than 0)."""

    def write(self, rows) -> None:
        pass

    def close(self) -> None:
        pass


def write_json_atomic(path: Path, payload: dict) -> None:
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def git_commit() -> str:
    """The commit of this checkout, with '-dirty' when the tree has changes; 'unknown' outside git."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def truncate_rows_after(path: Path, step: int) -> None:
    """Drop the rows of a run CSV whose step is beyond `step` (atomically)."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns, rows = reader.fieldnames, [r for r in reader if int(r["step"]) <= step]
    if columns is None:
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
