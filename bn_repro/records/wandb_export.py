"""Rebuild a run's local files (summary.json, metrics.csv, one CSV per measurement) from its wandb run.

The figure scripts read local run dirs only; scripts/export_wandb.py fetches a project's runs through
wandb.Api() and hands them to `export_run`, which needs no network: it takes any object shaped like
wandb.apis.public.Run (.id, .name, .group, .project, .entity, .state, .url, .config, .summary_metrics or
.summary, .scan_history()) and reads back the keys bn_repro/records/tracking.py logs; each measurement's
rows come back through its own `rows_from_wandb` (bn_repro/measures/base.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bn_repro import measures
from bn_repro.records.run_files import (
    METRICS_COLUMNS,
    METRICS_FILE,
    SUMMARY_FILE,
    CsvLog,
    measurement_file,
    write_json_atomic,
)
from bn_repro.records.tracking import METRIC_KEYS, RESOLVED_CONFIG_KEY, STEP_KEY, metric_key

# metrics.csv columns that hold counts; the others are floats.
_INT_COLUMNS = ("step", "epoch")
# Measurements whose file is written even when the run logged none of their rows (Fig. 1's probe).
_ALWAYS_WRITTEN = ("activations",)
_LOGGED_KEYS = frozenset(metric_key(c) for c in METRICS_COLUMNS) | frozenset(METRIC_KEYS.values())


def _number(value: Any, column: str) -> int | float:
    """A history value as the local CSVs hold it; a missing value is nan, as in train_loss at step 0."""
    if value is None:
        return float("nan")
    if column in _INT_COLUMNS:
        return int(value)
    return float(value)  # also parses "NaN" / "Infinity", which the API may return as strings


def history_rows(
    history: Iterable[Mapping[str, Any]], config: Mapping[str, Any] | None = None
) -> tuple[list[dict], dict[str, list[dict]]]:
    """(metrics rows, {measurement name: rows}) from the run's history, ordered by step, and a step's
    measurement rows in the order of the measurement's `order_key` (given the wandb run's `config`).

    A step's entries are merged; a step logged twice (a job resumed from a checkpoint logs the steps
    after it again) keeps its last values, as the local CSVs do.
    """
    entries: dict[int, dict] = {}
    for entry in history:
        if entry.get(STEP_KEY) is None:
            continue  # not one of our rows
        step = int(entry[STEP_KEY])
        if step in entries and _is_evaluation(entry) and _is_evaluation(entries[step]):
            entries[step] = {}  # logged again after a resume: the new row replaces the old one
        entries.setdefault(step, {}).update(entry)
    config = config or {}
    metrics, measured = [], {}
    for step in sorted(entries):
        entry = entries[step]
        if _is_evaluation(entry):
            metrics.append({c: _number(entry.get(metric_key(c)), c) for c in METRICS_COLUMNS})
        for name in measures.names():
            cls = measures.get(name)
            rows = cls.rows_from_wandb(step, entry)
            measured.setdefault(name, []).extend(
                sorted(rows, key=lambda r, cls=cls: cls.order_key(r, config))
            )
    return metrics, {name: rows for name, rows in measured.items() if rows or name in _ALWAYS_WRITTEN}


def _is_evaluation(entry: Mapping[str, Any]) -> bool:
    return any(metric_key(c) in entry for c in METRICS_COLUMNS if c != "step")


def run_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved config of the run: wandb's internal keys dropped; under a wandb sweep, the copy
    tracking.py keeps beside the keys the sweep replaced."""
    if RESOLVED_CONFIG_KEY in config:
        return dict(config[RESOLVED_CONFIG_KEY])
    return {k: v for k, v in config.items() if not k.startswith("_")}


def run_summary(run) -> dict[str, Any]:
    """summary.json as train() writes it, rebuilt from run.summary and run.config."""
    raw = getattr(run, "summary_metrics", None)
    raw = dict(raw if raw is not None else run.summary)
    summary = {k: v for k, v in raw.items() if not _is_history_key(k)}
    config = run_config(run.config)
    summary.setdefault("experiment_name", config.get("experiment_name") or run.group)
    summary["config"] = config
    summary["wandb"] = {
        "id": run.id, "name": run.name, "project": getattr(run, "project", None),
        "entity": getattr(run, "entity", None), "group": run.group, "state": getattr(run, "state", None),
        "url": getattr(run, "url", None),
    }  # fmt: skip
    return summary


def _is_history_key(key: str) -> bool:
    # wandb's summary also holds the last value of every history key, and wandb's own "_" keys.
    if key.startswith("_") or key in _LOGGED_KEYS:
        return True
    return any(
        key.startswith(measures.get(n).prefix() + p) for n in measures.names() for p in ("/", "_hist/")
    )


def run_dir_name(run) -> str:
    """<name>-<id>: readable side by side, unique in a project."""
    name = re.sub(r"[^A-Za-z0-9._=,+-]+", "_", run.name or "run").strip("_") or "run"
    return f"{name}-{run.id}"


def export_run(run, out_dir: Path) -> Path:
    """Write one run's summary.json, metrics.csv and measurement files into out_dir/<name>-<id>/."""
    run_dir = Path(out_dir) / run_dir_name(run)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = dict(run.config)
    ordering = {**run_config(config), **{k: v for k, v in config.items() if k.startswith("_")}}
    metrics, measured = history_rows(run.scan_history(), ordering)
    files = [(METRICS_FILE, METRICS_COLUMNS, metrics)]
    files += [(measurement_file(n), ("step", *measures.get(n).columns), rows) for n, rows in measured.items()]
    for name, columns, rows in files:
        path = run_dir / name
        path.unlink(missing_ok=True)  # exporting again replaces the files
        log = CsvLog(path, columns)
        try:
            log.write(rows)
        finally:
            log.close()
    summary = run_summary(run)
    write_json_atomic(run_dir / SUMMARY_FILE, summary)
    return run_dir
