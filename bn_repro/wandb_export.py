"""Rebuild a run's local files (summary.json, metrics.csv, activations.csv) from its wandb run.

The figure scripts read local run dirs only; scripts/export_wandb.py fetches a project's runs through
wandb.Api() and hands them to `export_run`, which needs no network: it takes any object shaped like
wandb.apis.public.Run (.id, .name, .group, .project, .entity, .state, .url, .config, .summary_metrics or
.summary, .scan_history()) and reads back the keys bn_repro/tracking.py logs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bn_repro.run_files import (
    ACTIVATIONS_COLUMNS,
    ACTIVATIONS_FILE,
    METRICS_COLUMNS,
    METRICS_FILE,
    SUMMARY_FILE,
    CsvLog,
    write_json_atomic,
)
from bn_repro.tracking import (
    ACT_PREFIX,
    HIST_PREFIX,
    LAYER_STATS,
    METRIC_KEYS,
    PROBE_LAYERS_KEY,
    RESOLVED_CONFIG_KEY,
    STEP_KEY,
    UNIT_STATS,
    metric_key,
)

# Columns that hold counts; everything else in the CSVs is a float (or a layer name).
_INT_COLUMNS = ("step", "epoch", "unit")
_LOGGED_KEYS = frozenset(metric_key(c) for c in METRICS_COLUMNS) | frozenset(METRIC_KEYS.values())


def _number(value: Any, column: str) -> int | float:
    """A history value as the local CSVs hold it; a missing value is nan, as in train_loss at step 0."""
    if value is None:
        return float("nan")
    if column in _INT_COLUMNS:
        return int(value)
    return float(value)  # also parses "NaN" / "Infinity", which the API may return as strings


def history_rows(
    history: Iterable[Mapping[str, Any]],
    layer_order: list[str] | None = None,
    unit_order: list[int] | None = None,
) -> tuple[list[dict], list[dict]]:
    """(metrics rows, activation rows) from the run's history, ordered by step, then as activations.csv
    orders a step's rows: layers in `layer_order` (depth order), units in `unit_order` (probe.units).

    A step logged twice (a job resumed from a checkpoint logs the evaluations after it again) keeps its
    last row, as the local CSVs do.
    """
    metrics: dict[int, dict] = {}
    activations: dict[int, list[dict]] = {}
    for entry in history:
        if entry.get(STEP_KEY) is None:
            continue  # not one of our evaluation rows
        step = int(entry[STEP_KEY])
        metrics[step] = {c: _number(entry.get(metric_key(c)), c) for c in METRICS_COLUMNS}
        activations[step] = _activation_rows(step, entry)
    layer_rank = {layer: i for i, layer in enumerate(layer_order or [])}
    unit_rank = {unit: i for i, unit in enumerate(unit_order or [])}

    def order(row: dict) -> tuple:
        # Layers or units missing from the given order come after, in natural order (hidden2 < hidden10).
        layer, unit = row["layer"], row["unit"]
        natural = [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", layer)]
        return (layer_rank.get(layer, len(layer_rank)), natural, unit_rank.get(unit, len(unit_rank)), unit)

    steps = sorted(metrics)
    return [metrics[s] for s in steps], [row for s in steps for row in sorted(activations[s], key=order)]


def _activation_rows(step: int, entry: Mapping[str, Any]) -> list[dict]:
    units: dict[tuple[str, str], dict] = {}  # (layer, unit) -> its statistics
    layers: dict[str, dict] = {}
    for key, value in entry.items():
        if not key.startswith(ACT_PREFIX):
            continue
        head, stat = key[len(ACT_PREFIX) :].rsplit("/", 1)
        if stat in LAYER_STATS:
            layers.setdefault(head, {})[stat] = value
        elif stat in UNIT_STATS:
            layer, unit = head.rsplit("/", 1)
            units.setdefault((layer, unit), {})[stat] = value
    rows = []
    for (layer, unit), stats in units.items():
        values = {"step": step, "layer": layer, "unit": unit, **stats, **layers.get(layer, {})}
        rows.append(
            {c: values[c] if c == "layer" else _number(values.get(c), c) for c in ACTIVATIONS_COLUMNS}
        )
    return rows


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
    return key.startswith(("_", ACT_PREFIX, HIST_PREFIX)) or key in _LOGGED_KEYS


def run_dir_name(run) -> str:
    """<name>-<id>: readable side by side, unique in a project."""
    name = re.sub(r"[^A-Za-z0-9._=,+-]+", "_", run.name or "run").strip("_") or "run"
    return f"{name}-{run.id}"


def export_run(run, out_dir: Path) -> Path:
    """Write one run's summary.json, metrics.csv and activations.csv into out_dir/<name>-<id>/."""
    run_dir = Path(out_dir) / run_dir_name(run)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = run.config
    probe_units = run_config(config).get("probe", {}).get("units")
    metrics, activations = history_rows(run.scan_history(), config.get(PROBE_LAYERS_KEY), probe_units)
    for name, columns, rows in ((METRICS_FILE, METRICS_COLUMNS, metrics),
                                (ACTIVATIONS_FILE, ACTIVATIONS_COLUMNS, activations)):  # fmt: skip
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
