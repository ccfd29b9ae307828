"""The files a run leaves in its output dir; the figure scripts and the wandb export read them.

- metrics.csv: one row per evaluation.
- <measurement>.csv: one file per measurement on the seam (bn_repro/measures/), `step` first; e.g.
  activations.csv: one row per (measured step, probed layer, probed unit).
- summary.json: final (or latest) numbers, provenance and the resolved config.
- checkpoint.pt: every trainer.checkpoint_every_s seconds (and/or checkpoint_every steps), at the end and
  when the run is interrupted (bn_repro/engine/checkpoint.py); .run.lock: held while a process writes.

Rows are flushed as they are written and summary.json is replaced atomically, so a killed run leaves
files that parse; a checkpoint records the size and SHA-256 of each CSV, so a resume can tell the rows
it vouches for from damage.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from bn_repro.errors import UserError

METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"

METRICS_COLUMNS = (
    "step", "epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "wall_time_s", "steps_per_s",
)  # fmt: skip


class RunFileError(UserError):
    """A run file could not be written (disk full, quota, read-only or missing dir): the path and the
    reason, and the promise the run files keep (nothing written before is damaged)."""

    exit_code = 74  # sysexits' EX_IOERR

    def __init__(self, path: Path, error: OSError):
        super().__init__(path, error)  # the arguments, so that it pickles (a batched group's process)
        self.path, self.errno = Path(path), error.errno
        self.message = (
            f"cannot write {path}: {error.strerror or error}. The files written before are intact; free "
            f"space (or fix the dir) and run the same command to resume from the last checkpoint"
        )

    def __str__(self) -> str:
        return self.message


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Report an OSError while writing `path` as a RunFileError naming it."""
    try:
        yield
    except RunFileError:
        raise
    except OSError as error:
        raise RunFileError(path, error) from error


class CsvLog:
    """Append-only CSV with a fixed header; each row reaches the disk before `write` returns.

    It keeps the byte count and SHA-256 of everything the file holds, so a checkpoint can record
    exactly which bytes it vouches for (bn_repro/engine/run_dir.py checks them on resume)."""

    def __init__(self, path: Path, columns: Sequence[str]):
        self.path = Path(path)
        self.columns = tuple(columns)
        self._digest = hashlib.sha256()
        self._size = 0
        with writing(self.path):
            if self.path.exists():
                with open(self.path, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        self._digest.update(chunk)
                        self._size += len(chunk)
            self._file = open(self.path, "ab")  # noqa: SIM115 - closed in close()
        if self._size == 0:
            self._append(self._encode([dict(zip(self.columns, self.columns, strict=True))]))

    def _encode(self, rows: Sequence[dict]) -> bytes:
        text = io.StringIO()
        # Text as csv.DictWriter writes it to a file opened with newline="" (rows end in \r\n).
        csv.DictWriter(text, fieldnames=self.columns, extrasaction="raise").writerows(rows)
        return text.getvalue().encode("utf-8")

    def _append(self, data: bytes) -> None:
        with writing(self.path):
            self._file.write(data)
            self._file.flush()
        self._digest.update(data)
        self._size += len(data)

    def write(self, rows: dict | Sequence[dict]) -> None:
        self._append(self._encode([rows] if isinstance(rows, dict) else rows))

    def record(self) -> dict:
        """What the file holds now, for a checkpoint: its size and SHA-256, on disk (fsync)."""
        with writing(self.path):
            os.fsync(self._file.fileno())
        return {"bytes": self._size, "sha256": self._digest.hexdigest()}

    def close(self) -> None:
        with writing(self.path):
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
        with writing(path):
            with open(tmp, mode, **open_kwargs) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
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
