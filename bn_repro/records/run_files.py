"""The files a run leaves in its output dir; the figure scripts and the wandb export read them.

- metrics.csv: one row per evaluation.
- <measurement>.csv: one file per measurement on the seam (bn_repro/measures/), `step` first; e.g.
  activations.csv: one row per (measured step, probed layer, probed unit).
- summary.json: final (or latest) numbers, provenance and the resolved config.
- checkpoint.pt: with trainer.checkpoint_every > 0 (bn_repro/engine/checkpoint.py).

Rows are flushed as they are written and summary.json is replaced atomically, so a killed run leaves
files that parse.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"

METRICS_COLUMNS = (
    "step", "epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "wall_time_s", "steps_per_s",
)  # fmt: skip


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


@contextlib.contextmanager
def atomic_write(path: Path, mode: str = "w", **open_kwargs) -> Iterator:
    """Write `path` through a temporary file that replaces it only once complete (and on disk), so a
    kill while writing leaves the previous file intact."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, payload: dict) -> None:
    with atomic_write(path) as f:
        json.dump(payload, f, indent=2, sort_keys=False, default=str)
        f.write("\n")


def measurement_file(name: str) -> str:
    """The run file of measurement `name`."""
    return f"{name}.csv"


def _parsed(values: list[str]) -> list:
    """A CSV column as numbers where every value is one (ints if all are ints), else as strings."""
    for kind in (int, float):
        try:
            return [kind(v) for v in values]
        except ValueError:
            continue
    return values


def read_measurement(run_dir: Path, name: str) -> list[dict]:
    """The rows of `<name>.csv` in `run_dir` with numeric columns parsed; [] when the file is absent."""
    path = Path(run_dir) / measurement_file(name)
    if not path.exists():
        return []
    rows = read_csv(path)
    if not rows:
        return []
    columns = {column: _parsed([r[column] for r in rows]) for column in rows[0]}
    return [{column: values[i] for column, values in columns.items()} for i in range(len(rows))]


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
    with atomic_write(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
