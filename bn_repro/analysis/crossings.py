"""When does each seed's test accuracy first reach a level? (e.g. leave the plateau at chance)

    rows = crossing_rows(load_runs(["results/fig1_10seeds_fashion_mnist/plain_sgd_300k"]), [0.2, 0.8])

One row per curve (experiment_name and norm) and level: each finished seed's first evaluation step at
or above the level (`speedup.steps_to_target`), their mean +- the 95% t-interval over the seeds that
reach it, the range, and the same step on the seed-mean curve. Diverged and unfinished runs are left
out and counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bn_repro.analysis.speedup import find_run_dirs, load_run, mean_curve, read_summary, steps_to_target
from bn_repro.analysis.stats import t_interval

COLUMNS = (
    "curve", "level", "runs", "finished", "seeds_reaching", "steps_mean", "steps_ci95", "steps_min",
    "steps_max", "mean_curve_steps", "per_seed",
)  # fmt: skip


def curve_label(summary: dict[str, Any]) -> str:
    norm = summary.get("config", {}).get("norm", {})
    kind = norm.get("kind", "?")
    if kind == "custom":
        kind += f" ({norm.get('backward')})"
    return f"{summary['experiment_name']}, norm={kind}"


def load_curves(paths: Iterable[str | Path]) -> dict[str, list]:
    """The runs under `paths`, by curve label, in the order first found."""
    curves: dict[str, list] = {}
    for run_dir in find_run_dirs(paths):
        summary = read_summary(run_dir)
        curves.setdefault(curve_label(summary), []).append(load_run(run_dir, summary))
    if not curves:
        raise FileNotFoundError(f"no run dirs under {', '.join(map(str, paths))}")
    return curves


def crossing_rows(curves: dict[str, list], levels: Sequence[float]) -> list[dict[str, Any]]:
    rows = []
    for label, runs in curves.items():
        finished = sorted((r for r in runs if r.status == "finished"), key=lambda r: (r.seed is None, r.seed))
        mean = mean_curve(finished)
        for level in levels:
            per_seed = {r.seed: steps_to_target(r.steps, r.test_acc, level) for r in finished}
            reached = [s for s in per_seed.values() if s is not None]
            steps_mean, half = t_interval(reached)
            rows.append({
                "curve": label, "level": level, "runs": len(runs), "finished": len(finished),
                "seeds_reaching": len(reached), "steps_mean": steps_mean, "steps_ci95": half,
                "steps_min": min(reached, default=None), "steps_max": max(reached, default=None),
                "mean_curve_steps": steps_to_target(mean.steps, mean.test_acc, level) if mean else None,
                "per_seed": per_seed,
            })  # fmt: skip
    return rows


def _steps(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def crossings_markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| curve | test acc level | seeds reaching it (finished) | steps, mean +- 95% t-interval | range "
        "| seed-mean curve |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        interval = _steps(r["steps_mean"]) + (
            f" +- {_steps(r['steps_ci95'])}" if r["steps_ci95"] is not None else ""
        )
        span = f"{_steps(r['steps_min'])}-{_steps(r['steps_max'])}" if r["seeds_reaching"] else "-"
        lines.append(
            f"| {r['curve']} | {100 * r['level']:.2f}% | {r['seeds_reaching']} ({r['finished']}) "
            f"| {interval} | {span} | {_steps(r['mean_curve_steps'])} |"
        )
    return "\n".join(lines) + "\n"
