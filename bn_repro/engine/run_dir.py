"""Claiming a run dir: one writer at a time, and what the files already there mean for this run.

    claim = claim_run_dir(run_dir, config)    # locks it (or raises RunDirBusy), reads it, writes nothing
    claim.action                              # "fresh" | "restart" | "resume" | "finished"
    claim.prepare()                           # the writes the action needs (repairs, truncation, clearing)
    claim.release()

- A process holds `.run.lock` (an advisory flock: the kernel drops it when the process dies, however
  it dies) while it writes the dir; a second one is refused at once, naming the holder's PID, before
  it has changed anything.
- finished: summary.json says finished (or diverged) for this config and step count: nothing to do.
- resume: checkpoint.pt, its SHA-256 and config checked (bn_repro/engine/checkpoint.py), and each run
  CSV checked against the size and SHA-256 the checkpoint recorded for it. Rows past the checkpoint
  are dropped (the resumed run writes them again); a file that is missing or whose checked bytes
  changed is rebuilt from the copy the checkpoint holds, or else refused, naming the file.
- restart: no checkpoint, and the files there hold only rows of this config that a fresh start writes
  again (a run killed before its first checkpoint): they are cleared and the run starts over.
- fresh: nothing there yet.
Every check runs before the first write, so a refused claim leaves the dir as it was.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import os
import socket
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bn_repro.engine.checkpoint import CHECKPOINT_FILE, CheckpointError, check_same_config, load_checkpoint
from bn_repro.errors import UserError
from bn_repro.records.run_files import SUMMARY_FILE, atomic_write, writing

LOCK_FILE = ".run.lock"
DONE = ("finished", "diverged")


class RunDirBusy(UserError):
    exit_code = 75  # sysexits' EX_TEMPFAIL: try again once the other process has ended


class RunFileDamaged(UserError):
    pass


class RunDirLock:
    """An exclusive, non-blocking flock on <run dir>/.run.lock, its holder's PID written inside."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunDirLock:
        with writing(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise RunDirBusy(
                f"{self.path.parent} is in use by {holder}; wait for it to end (or stop it), or choose "
                f"another run dir (hydra.run.dir=... / hydra.sweep.dir=...)"
            ) from None
        os.ftruncate(fd, 0)
        started = datetime.now().astimezone().isoformat(timespec="seconds")
        os.write(fd, f"PID {os.getpid()} on {socket.gethostname()} (since {started})\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


@dataclass
class _FilePlan:
    name: str
    keep_bytes: int | None = None  # truncate to this many bytes
    rebuild: bytes | None = None  # rewrite with these bytes
    keep_rows_to: int | None = None  # a CSV the checkpoint does not know: keep rows with step <= this
    problem: str = ""


@dataclass
class Claim:
    run_dir: Path
    action: str
    checkpoint: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None
    lock: RunDirLock | None = None
    plans: list[_FilePlan] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def prepare(self) -> None:
        """The writes the action needs; prints one line per thing it did."""
        run_dir = self.run_dir
        with writing(run_dir):
            run_dir.mkdir(parents=True, exist_ok=True)
        if self.action == "restart":
            for path in _run_files(run_dir):
                with writing(path):
                    path.unlink()
            self.notes.append(f"no checkpoint in {run_dir}: starting over (its rows are written again)")
        for plan in self.plans:
            path = run_dir / plan.name
            if plan.rebuild is not None:
                with atomic_write(path, "wb") as f:
                    f.write(plan.rebuild)
                rows = plan.rebuild.count(b"\n") - 1  # the header is not a row
                step = self.checkpoint["step"]  # type: ignore[index]
                self.notes.append(
                    f"repaired {path}: {plan.problem}; rewrote its {rows} rows up to step {step} from "
                    f"{CHECKPOINT_FILE}"
                )
            elif plan.keep_bytes is not None:
                with writing(path), open(path, "r+b") as f:
                    f.truncate(plan.keep_bytes)
            elif plan.keep_rows_to is not None:
                _truncate_rows_after(path, plan.keep_rows_to)
        if self.action == "resume":
            assert self.checkpoint is not None
            saved = self.checkpoint.get("saved_at", "unknown time")
            self.notes.append(
                f"resuming {run_dir} from step {self.checkpoint['step']} (checkpoint of {saved})"
            )
        for note in self.notes:
            print(note, flush=True)
        self.notes = []

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def claim_run_dir(run_dir: Path, config: dict, lock: bool = True, check_files: bool = True) -> Claim:
    """Lock `run_dir` (with `lock`) and work out what this run does with it; nothing is written."""
    run_dir = Path(run_dir)
    held = RunDirLock(run_dir).acquire() if lock else None
    try:
        claim = _inspect(run_dir, config, check_files)
    except BaseException:
        if held is not None:
            held.release()
        raise
    claim.lock = held
    return claim


def _read_summary(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / SUMMARY_FILE
    try:
        summary = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None  # written atomically, so only outside hands damage it; it is rewritten anyway
    return summary if isinstance(summary, dict) else None


def _run_files(run_dir: Path) -> list[Path]:
    """What a run writes into its dir: the run CSVs and summary.json (not .hydra/, logs, wandb/)."""
    return sorted([*run_dir.glob("*.csv"), *run_dir.glob(SUMMARY_FILE)])


def _inspect(run_dir: Path, config: dict, check_files: bool) -> Claim:
    summary = _read_summary(run_dir)
    max_steps = config["trainer"]["max_steps"]
    if summary is not None and summary.get("status") in DONE and isinstance(summary.get("config"), dict):
        check_same_config(summary["config"], config, f"{run_dir / SUMMARY_FILE}")
        if summary["status"] == "diverged" or summary.get("steps") == max_steps:
            return Claim(run_dir, "finished", summary=summary)
    checkpoint_path = run_dir / CHECKPOINT_FILE
    if checkpoint_path.exists():
        checkpoint = load_checkpoint(checkpoint_path, config)
        plans = _file_plans(run_dir, checkpoint) if check_files else []
        return Claim(run_dir, "resume", checkpoint=checkpoint, summary=summary, plans=plans)
    if summary is not None and summary.get("status") in DONE:
        raise CheckpointError(
            f"{run_dir} holds a {summary['status']} run of {summary.get('steps')} steps and no "
            f"{CHECKPOINT_FILE} to continue it to trainer.max_steps={max_steps}. Use its step count, or a "
            f"new run dir (hydra.run.dir=...)"
        )
    if summary is not None and isinstance(summary.get("config"), dict):
        check_same_config(summary["config"], config, f"{run_dir / SUMMARY_FILE}")
    return Claim(run_dir, "restart" if _run_files(run_dir) else "fresh", summary=summary)


def _file_plans(run_dir: Path, checkpoint: dict[str, Any]) -> list[_FilePlan]:
    """Check each run CSV against the checkpoint's record of it; plan its truncation or rebuild."""
    step, records = checkpoint["step"], checkpoint.get("run_files", {})
    plans = []
    for name, record in records.items():
        path, size = run_dir / name, record["bytes"]
        problem = ""
        if not path.exists():
            problem = "it was missing"
        elif path.stat().st_size < size:
            problem = (
                f"it was {path.stat().st_size} bytes, shorter than the {size} the checkpoint vouches for"
            )
        elif _sha256_prefix(path, size) != record["sha256"]:
            problem = f"its first {size} bytes (the rows up to step {step}) were changed"
        if not problem:
            plans.append(_FilePlan(name, keep_bytes=size))
        elif record.get("content") is not None:
            plans.append(_FilePlan(name, rebuild=record["content"], problem=problem))
        else:
            raise RunFileDamaged(
                f"{path} does not match {CHECKPOINT_FILE}: {problem}, and the checkpoint holds no copy of "
                f"it. "
                f"Restore the file, or move the run dir away and start over"
            )
    for path in sorted(run_dir.glob("*.csv")):
        if path.name not in records:  # a measurement added on resume: rows past the checkpoint go
            _check_rows(path)
            plans.append(_FilePlan(path.name, keep_rows_to=step))
    return plans


def _sha256_prefix(path: Path, size: int) -> str:
    digest, left = hashlib.sha256(), size
    with open(path, "rb") as f:
        while left > 0:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                break
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def _rows(path: Path) -> tuple[list[str] | None, list[dict]]:
    with open(path, "rb") as f:
        text = f.read().decode("utf-8")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    return reader.fieldnames, list(reader)


def _check_rows(path: Path) -> None:
    try:
        columns, rows = _rows(path)
        if columns and columns[0] == "step":
            [int(r["step"]) for r in rows]
    except (UnicodeDecodeError, ValueError, TypeError, csv.Error) as error:
        raise RunFileDamaged(
            f"{path} is damaged ({type(error).__name__}: {error}). Restore or remove the file, or move the "
            f"run dir away and start over"
        ) from None


def _truncate_rows_after(path: Path, step: int) -> None:
    columns, rows = _rows(path)
    if not columns or columns[0] != "step":
        return
    with atomic_write(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows([r for r in rows if int(r["step"]) <= step])
