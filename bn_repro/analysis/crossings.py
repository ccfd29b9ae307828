"""When does each seed's test accuracy first reach a level? (e.g. leave the plateau at chance)

    rows = crossing_rows(load_curves(["results/fig1_10seeds_fashion_mnist/plain_sgd_300k"]), [0.2, 0.8])

One row per curve (experiment_name and norm, split further by any setting its runs differ in, as the
figures split them) and level: each finished seed's first evaluation step at or above the level, their
mean +- the 95% t-interval over the seeds that reach it, the range, and the same step on the seed-mean
curve. Diverged and unfinished runs are left out and counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bn_repro.analysis import speedup
from bn_repro.analysis.figures import RunData, load_all, split_curves
from bn_repro.analysis.stats import t_interval
from bn_repro.analysis.tables import markdown_table, spread


def curve_label(run: RunData) -> str:
    kind = run.norm_kind + (f" ({run.backward})" if run.norm_kind == "custom" else "")
    return f"{run.experiment_name}, norm={kind}"


def load_curves(paths: Iterable[str | Path]) -> dict[str, list[RunData]]:
    """The runs under `paths` by curve (figures.NoRunsError, a FileNotFoundError, when there are none)."""
    return split_curves(load_all(paths), curve_label)


def crossing_rows(curves: dict[str, list[RunData]], levels: Sequence[float]) -> list[dict[str, Any]]:
    rows = []
    for label, runs in curves.items():
        finished = sorted((r for r in runs if not r.stopped_early), key=lambda r: (r.seed is None, r.seed))
        mean = speedup.mean_curve([r.run for r in finished])
        for level in levels:
            per_run = speedup.steps_to_target_per_run([r.run for r in finished], level)
            reached = [s for s in per_run if s is not None]
            steps_mean, half = t_interval(reached)
            on_mean = speedup.steps_to_target(mean.steps, mean.test_acc, level) if mean else None
            rows.append({
                "curve": label, "level": level, "runs": len(runs), "finished": len(finished),
                "seeds_reaching": len(reached), "steps_mean": steps_mean, "steps_ci95": half,
                "steps_min": min(reached, default=None), "steps_max": max(reached, default=None),
                "mean_curve_steps": on_mean,
                "per_seed": {r.seed: s for r, s in zip(finished, per_run, strict=True)},
            })  # fmt: skip
    return rows


def crossings_markdown(rows: Sequence[dict[str, Any]]) -> str:
    columns = ("curve", "test acc level", "seeds reaching it (finished)", "steps, mean +- 95% t-interval")
    cells = [
        (r["curve"], f"{100 * r['level']:.2f}%", f"{r['seeds_reaching']} ({r['finished']})",
         spread(r["steps_mean"], r["steps_ci95"], "{:,.0f}"),
         f"{r['steps_min']:,.0f}-{r['steps_max']:,.0f}" if r["seeds_reaching"] else "-",
         spread(r["mean_curve_steps"], None, "{:,.0f}"))
        for r in rows
    ]  # fmt: skip
    return "\n".join(markdown_table((*columns, "range", "seed-mean curve"), cells)) + "\n"
