"""Read an offline wandb run back from its transaction log (run-<id>.wandb), for the tests; and the
`wandb_env` fixture that keeps wandb offline, in tmp dirs.

wandb writes no config.yaml or summary file for an offline run; everything is in the .wandb file: a
LevelDB-style log (32 KiB blocks of records with a 7-byte header: crc32, length, type) after a 7-byte
file header, each record a `wandb_internal_pb2.Record`. `OfflineRun` exposes what the public API's Run
would (.config, .summary_metrics, .scan_history(), ...), so the exporter can be tested on it offline.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import wandb
from wandb.proto import wandb_internal_pb2

_WANDB_ENV_KEPT_OUT = (
    "WANDB_MODE", "WANDB_API_KEY", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_DIR", "WANDB_RUN_ID",
    "WANDB_NAME", "WANDB_RUN_GROUP", "WANDB_JOB_TYPE", "WANDB_TAGS", "WANDB_RESUME", "WANDB_SWEEP_ID",
    "WANDB_SWEEP_PARAM_PATH", "WANDB_BASE_URL",
)  # fmt: skip


@pytest.fixture(name="wandb_env")
def isolated_wandb(tmp_path, monkeypatch):
    """wandb's own files under tmp_path (not ~/.config, ~/.cache), no API key anywhere, and a fresh wandb
    setup that reads this environment. Yields the environment, for subprocesses."""
    home = tmp_path / "wandb_home"
    for name in _WANDB_ENV_KEPT_OUT:
        monkeypatch.delenv(name, raising=False)
    for name, value in (("WANDB_SILENT", "true"), ("WANDB_CONFIG_DIR", home / "config"),
                        ("WANDB_CACHE_DIR", home / "cache"), ("WANDB_DATA_DIR", home / "data"),
                        ("NETRC", home / "netrc")):  # fmt: skip
        monkeypatch.setenv(name, str(value))
    wandb.teardown()  # wandb reads its environment once per setup
    yield dict(os.environ)
    wandb.teardown()


_FILE_HEADER = 7
_BLOCK = 32768
_RECORD_HEADER = 7
_FULL, _LAST = 1, 4


def read_records(path: Path) -> list:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb transaction log"
    records, pending, pos = [], b"", _FILE_HEADER
    while pos + _RECORD_HEADER <= len(data):
        room = _BLOCK - pos % _BLOCK
        if room < _RECORD_HEADER:  # a block's tail too short for a header is padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _RECORD_HEADER])
        if kind == 0:  # zero padding up to the end of the block
            pos += room
            continue
        pending += data[pos + _RECORD_HEADER : pos + _RECORD_HEADER + length]
        pos += _RECORD_HEADER + length
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _set(target: dict, item) -> None:
    path = list(item.nested_key) or [item.key]
    node = target
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = json.loads(item.value_json)


@dataclass
class OfflineRun:
    id: str
    name: str
    group: str
    project: str
    job_type: str
    tags: list[str]
    config: dict[str, Any] = field(default_factory=dict)
    summary_metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    exit_code: int | None = None
    entity: str | None = None
    state: str = "finished"
    url: str | None = None

    def scan_history(self):
        return iter(self.history)


def read_offline_run(run_dir: Path) -> OfflineRun:
    """The run in wandb's offline-run-* dir `run_dir`."""
    (log_file,) = Path(run_dir).glob("run-*.wandb")
    run = None
    for record in read_records(log_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run = OfflineRun(id=r.run_id, name=r.display_name, group=r.run_group, project=r.project,
                             job_type=r.job_type, tags=list(r.tags))  # fmt: skip
            for item in r.config.update:
                _set(run.config, item)
        elif kind == "config":
            for item in record.config.update:
                _set(run.config, item)
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _set(row, item)
            run.history.append(row)
        elif kind == "summary":
            for item in record.summary.update:
                _set(run.summary_metrics, item)
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    assert run is not None, f"no run record in {log_file}"
    run.config.pop("_wandb", None)
    return run


def offline_runs(root: Path) -> list[Path]:
    """Every offline-run-* dir wandb wrote under root (one per wandb run)."""
    return sorted(Path(root).rglob("offline-run-*"))


def only_offline_run(root: Path) -> OfflineRun:
    """The one offline run under root, read once wandb has written all of it."""
    wandb.teardown()  # run.finish() returns before wandb's service has written the last records
    runs = offline_runs(root)
    assert len(runs) == 1, runs
    return read_offline_run(runs[0])
