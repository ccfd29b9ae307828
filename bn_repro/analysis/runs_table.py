"""Run dirs as one tidy table: a row per run x step x metric (or measurement value), config as columns.

    table = load_runs(["results/fig1_10seeds_fashion_mnist/momentum"])            # metrics.csv only
    table = load_runs(["results/scale_jacobian_fashion_mnist/runs"], files=ALL_FILES)
    final = table[table.metric == "test_acc"].groupby(["norm.kind", "seed"]).value.last()

Columns: `run` (the run dir), `file` (metrics, or a measurement's name: activations, eval_stats, ...),
`step`, `metric` (a CSV column), `value` (a float), the measurement's index columns where it has them
(`layer`, `unit`, `stats`, `n`: what tells a step's rows apart, bn_repro/measures/), the resolved config
flattened to dotted columns (`norm.kind`, `seed`, `optim.lr`, `model.init_std`, ...), `experiment_name`
and `status`, and summary.json's other numbers prefixed `summary.` (`summary.final_test_acc`, ...).
`run_table(paths)` is the same with one row per run and no values.

A run dir is what the train app leaves (bn_repro/records/README.md): summary.json with the resolved config,
metrics.csv and one CSV per measurement. scripts/export_wandb.py (bn_repro/records/wandb_export.py) writes
that same layout from a team's wandb project, so an exported folder loads here as it is.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from bn_repro.records.run_files import METRICS_FILE, SUMMARY_FILE, read_measurement

METRICS = "metrics"
ALL_FILES = None  # `files=ALL_FILES`: metrics.csv and every measurement CSV a run has
RUN_COLUMNS = ("run", "experiment_name", "status")
VALUE_COLUMNS = ("file", "step", "metric", "value")


def find_run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """Each path that holds a summary.json, and every folder below the others that does."""
    found: set[Path] = set()
    for path in map(Path, paths):
        if (path / SUMMARY_FILE).is_file():
            found.add(path)
        elif path.is_dir():
            found.update(p.parent for p in path.rglob(SUMMARY_FILE))
        else:
            raise FileNotFoundError(f"{path} is neither a run dir nor a folder of run dirs")
    return sorted(found)


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / SUMMARY_FILE).read_text())


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 0.1}} -> {"optim.lr": 0.1}; a list becomes its JSON text (a hashable cell)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.dumps(value, sort_keys=True) if isinstance(value, list) else value
    return flat


def run_record(run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """One run's row of the run table: its dir, name, status, flattened config and summary numbers."""
    record: dict[str, Any] = {"run": str(run_dir)}
    record.update({key: summary.get(key) for key in RUN_COLUMNS[1:]})
    record.update(flatten(summary.get("config") or {}))
    for key, value in summary.items():
        if key != "config" and not isinstance(value, dict | list):
            record[f"summary.{key}"] = value
    return record


def _index_columns(name: str, rows: list[dict]) -> tuple[str, ...]:
    """The columns that tell a step's rows apart: the measurement's own, else its leading string columns."""
    if name == METRICS:
        return ()
    from bn_repro import measures  # torch comes with it: only when a measurement file is read

    if name in measures.names():
        return measures.get(name).index_columns(rows)
    return tuple(c for c in rows[0] if c != "step" and isinstance(rows[0][c], str))


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan  # an empty cell (train_loss at step 0)


def value_rows(run_dir: Path, name: str) -> list[dict[str, Any]]:
    """One file's rows melted to (file, step, index columns..., metric, value)."""
    rows = read_measurement(run_dir, name)  # numbers parsed, [] when absent
    if not rows:
        return []
    index = _index_columns(name, rows)
    out = []
    for row in rows:
        keys = {"file": name, "step": int(row["step"]), **{c: row[c] for c in index}}
        for column, value in row.items():
            if column != "step" and column not in index:
                out.append({**keys, "metric": column, "value": _as_float(value)})
    return out


def _files_of(run_dir: Path, files: Sequence[str] | None) -> list[str]:
    if files is not None:
        return list(files)
    measured = sorted(p.stem for p in run_dir.glob("*.csv") if p.name != METRICS_FILE)
    return [METRICS, *measured]


def run_table(paths: Iterable[str | Path]) -> pd.DataFrame:
    """One row per run (RUN_COLUMNS, the config's and summary's columns); FileNotFoundError without runs."""
    paths = list(paths)
    dirs = find_run_dirs(paths)
    if not dirs:
        raise FileNotFoundError(f"no {SUMMARY_FILE} found in {', '.join(map(str, paths))}")
    return pd.DataFrame([run_record(d, read_summary(d)) for d in dirs])


def load_runs(paths: Iterable[str | Path], files: Sequence[str] | None = (METRICS,)) -> pd.DataFrame:
    """The tidy table of the runs under `paths` (module docstring). `files`: which of a run's files to
    read (metrics, measurement names), or ALL_FILES. Runs with no rows in them keep one row (no values)."""
    runs = run_table(paths)
    values = [
        {"run": run, **row} for run in runs["run"] for name in _files_of(Path(run), files)
        for row in value_rows(Path(run), name)
    ]  # fmt: skip
    columns = ["run", *VALUE_COLUMNS]
    table = pd.DataFrame(values, columns=columns if not values else None)
    return table.merge(runs, on="run", how="right")


def per_seed(table: pd.DataFrame, column: str = "value") -> dict[int, float]:
    """{seed: value} of a table holding one row per seed (an error otherwise: a selection left open)."""
    if table["seed"].duplicated().any():
        raise ValueError(f"several rows per seed: {sorted(table['seed'])}; narrow the selection")
    return {int(s): float(v) for s, v in zip(table["seed"], table[column], strict=True)}


def select(table: pd.DataFrame, **where: Any) -> pd.DataFrame:
    """The rows whose columns equal the given values; dotted columns are written with `__` for `.`
    (select(t, norm__kind="builtin", optim__lr=0.1))."""
    mask = pd.Series(True, index=table.index)
    for key, value in where.items():
        column = key.replace("__", ".")
        mask &= table[column].isna() if value is None else table[column] == value
    return table[mask]


def last_values(table: pd.DataFrame, metric: str, file: str = METRICS) -> pd.DataFrame:
    """Each run's value of `metric` at its last step of `file` (one row per run, with its config)."""
    rows = table[(table["file"] == file) & (table["metric"] == metric)]
    return rows.sort_values("step").groupby("run", sort=False).tail(1)
