"""The run's CSV files as one log: metrics.csv and one `<name>.csv` per active measurement."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from bn_repro.records.run_files import METRICS_COLUMNS, METRICS_FILE, CsvLog, measurement_file


class RunLog:
    """Writes rows as they come (each reaches the disk at once); `enabled=False` writes nothing (DDP
    ranks other than 0)."""

    def __init__(self, run_dir: Path, measurements: Iterable, enabled: bool = True):
        self._enabled = enabled
        self._metrics = CsvLog(Path(run_dir) / METRICS_FILE, METRICS_COLUMNS) if enabled else None
        self._measured = {
            m.name: CsvLog(Path(run_dir) / measurement_file(m.name), ("step", *m.columns))
            for m in (measurements if enabled else ())
        }

    def metrics(self, row: dict) -> None:
        if self._enabled:
            self._metrics.write(row)

    def measured(self, name: str, step: int, rows: list[dict]) -> None:
        if self._enabled:
            self._measured[name].write([{"step": step, **row} for row in rows])

    def record(self) -> dict[str, dict]:
        """Each file's size and SHA-256 (on disk), by file name: what a checkpoint vouches for."""
        logs = [self._metrics, *self._measured.values()] if self._enabled else []
        return {log.path.name: log.record() for log in logs}

    def close(self) -> None:
        for log in (self._metrics, *self._measured.values()):
            if log is not None:
                log.close()
