"""At the end of a multirun: one line per job that did not finish (diverged, interrupted, failed), and
the counts, read from the jobs' summary.json files (so it works for every launcher, SLURM included).

Registered as a Hydra callback in configs/hydra/default.yaml; no torch needed.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def job_statuses(sweep_dir: Path) -> list[tuple[Path, str]]:
    """(job dir, status) for each job dir under `sweep_dir` that has a summary.json."""
    out = []
    for summary in sorted(Path(sweep_dir).glob("**/summary.json")):
        try:
            status = json.loads(summary.read_text()).get("status", "unknown")
        except (OSError, ValueError):
            status = "unreadable"
        out.append((summary.parent, status))
    return out


def _overrides(job_dir: Path) -> str:
    path = job_dir / ".hydra" / "overrides.yaml"
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return ""
    return " ".join(line[2:] for line in lines if line.startswith("- "))


class SweepReport(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        statuses = job_statuses(sweep_dir)
        counts = Counter(status for _, status in statuses)
        for job_dir, status in statuses:
            if status != "finished":
                print(f"  {status}: {job_dir} ({_overrides(job_dir)})", flush=True)
        summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        print(f"sweep {sweep_dir}: {summary}", flush=True)
        from bn_repro.job import stop_sweep

        stop_sweep(sweep_dir)  # when a signal stopped the jobs in a launcher's workers
