"""Section 3.3's claims on a learning rate x init std grid: heatmaps, tables, the area where each trains.

    cells = grid_cells(load_all(["results/lr_init_grid_fashion_mnist/runs"]))   # (protocol, norm, std, lr)
    rows = cell_rows(cells)                                                      # one dict per cell
    report = write_all(rows, "results/lr_init_grid_fashion_mnist")               # figures, tables, summary

The runs are those of configs/experiment/lr_init_grid.yaml ("BN allows higher learning rates" and "reduces
the dependence of gradients on the scale of the parameters or of their initial values", paper section 3.3):
the Fig. 1 MLP over norm.kind x optim.momentum x model.init_std x optim.lr x seed. Definitions:

- A cell is one (protocol = optim.momentum, norm.kind, model.init_std, optim.lr): its seeds. Runs are split
  into cells by figures.split_curves, so runs that differ in any other curve setting (optim.*, model.*,
  data.batch_size, data.augment) are never averaged together: two such groups in one cell are an error,
  and so are runs of several datasets or planned lengths.
- n: the cell's runs that finished or diverged. A diverged run (a loss explosion, stopped early) counts
  as not trained: its final accuracy is its last evaluation's (the one at which it stopped), and it does
  not reach the target even if it passed it before exploding. Runs still running or failed are left out
  of n and counted as incomplete.
- Final test accuracy: mean over the n runs +- the half-width of the 95% Student t-interval of the mean
  (bn_repro/analysis/stats.py). Best test accuracy likewise (each run's best evaluation).
- Steps to the target (default 80% test accuracy): each finished seed's first evaluation at or above it
  (speedup.steps_to_target_per_run); mean +- 95% t-interval over the seeds that reach it, and how many of
  n do. A cell no seed reaches is drawn as ">max_steps".
- Area where it trains: the cells (of the grid's init stds x learning rates) whose mean final accuracy is
  >= each level (80%, 50%), per protocol and norm, over the whole grid and per init std.
- Fewest steps to the target: the lowest mean steps among the cells every seed of which reaches it.
- Dependence on the init scale, at each learning rate: the spread (max - min) across init stds of the
  cells' mean final and best accuracy, and the range of their mean steps to the target.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure

from bn_repro.analysis.figures import DATASET_NAMES, Report, RunData, load_all, split_curves
from bn_repro.analysis.speedup import steps_to_target_per_run
from bn_repro.analysis.stats import t_interval

TARGET = 0.8
AREA_LEVELS = (0.8, 0.5)
STEM = "lr_init_grid"
PNG_DPI = 150
DEFAULT_INIT_LABEL = "PyTorch default"

CELL_COLUMNS = (
    "protocol", "momentum", "norm", "norm_label", "init_std", "lr", "runs", "diverged", "incomplete",
    "final_acc_mean", "final_acc_ci95", "best_acc_mean", "best_acc_ci95", "target_acc",
    "seeds_reaching_target", "steps_to_target_mean", "steps_to_target_ci95", "final_acc_per_seed",
    "steps_to_target_per_seed", "seeds", "max_steps",
)  # fmt: skip
SPREAD_COLUMNS = (
    "protocol", "norm", "lr", "init_stds", "final_acc_min", "final_acc_max", "final_acc_spread",
    "best_acc_spread", "init_stds_reaching_target", "steps_to_target_min", "steps_to_target_max",
)  # fmt: skip


def area_columns(levels: Sequence[float] = AREA_LEVELS) -> tuple[str, ...]:
    """The area table's columns: trains_<percent> per level; lrs_trains: the lrs at the first level."""
    return (
        "protocol", "norm", "init_std", "cells", *(f"trains_{round(100 * v)}" for v in levels), "lrs_trains",
        "best_final_acc", "best_final_acc_lr", "best_final_acc_init_std", "fewest_steps_to_target",
        "fewest_steps_lr", "fewest_steps_init_std", "runs", "diverged",
    )  # fmt: skip


@dataclass(frozen=True)
class CellKey:
    momentum: float
    norm: str
    init_std: float | None  # None: PyTorch's default init
    lr: float


# ---------------------------------------------------------------------------------------------- labels


def protocol_tag(momentum: float) -> str:
    """File name part: plain_sgd, momentum0.9."""
    return "plain_sgd" if momentum == 0 else f"momentum{momentum:g}"


def protocol_label(momentum: float) -> str:
    return "plain SGD (momentum 0)" if momentum == 0 else f"SGD with momentum {momentum:g}"


def init_label(init_std: float | None) -> str:
    return DEFAULT_INIT_LABEL if init_std is None else f"{init_std:g}"


def norm_label(norm: str) -> str:
    return "no BN" if norm == "none" else "BN" if norm == "builtin" else norm


def _init_order(init_std: float | None) -> tuple[bool, float]:
    """Numbers ascending, PyTorch's default last."""
    return (init_std is None, init_std or 0.0)


def _norm_order(norm: str) -> tuple[bool, str]:
    return (norm != "none", norm)


def _steps_text(steps: float | None) -> str:
    return "-" if steps is None else f"{steps:,.0f}"


def _short_steps(steps: float) -> str:
    """500, 1.7k, 10k."""
    return f"{steps:.0f}" if steps < 1000 else f"{steps / 1000:.3g}k"


def _pct(value: float | None, half: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f}%" + ("" if half is None else f" +- {100 * half:.2f}")


# ---------------------------------------------------------------------------------------------- cells


def _cell_key(run: RunData) -> CellKey:
    config = run.config
    init_std = config.get("model", {}).get("init_std")
    return CellKey(
        momentum=float(config.get("optim", {}).get("momentum", 0.0)),
        norm=run.norm_kind,
        init_std=None if init_std is None else float(init_std),
        lr=float(config.get("optim", {}).get("lr")),
    )


def grid_cells(runs: Sequence[RunData]) -> dict[CellKey, list[RunData]]:
    """The runs by cell, sorted (protocol: momentum first, then plain SGD; no BN first; init std; lr)."""
    for what, values in (
        ("datasets", {r.dataset for r in runs}),
        ("planned lengths", {r.max_steps for r in runs}),
    ):
        if len(values) > 1:
            raise ValueError(f"the runs mix {what} ({', '.join(map(str, sorted(values)))}); pass one grid")
    cells: dict[CellKey, list[RunData]] = {}
    labels: dict[CellKey, str] = {}
    for label, group in split_curves(runs, lambda r: r.norm_kind).items():
        key = _cell_key(group[0])
        if key in cells:
            raise ValueError(
                f"runs of one grid cell ({key}) differ in another setting: {labels[key]!r} vs {label!r}"
            )
        cells[key], labels[key] = group, label
    order = sorted(cells, key=lambda k: (-k.momentum, _norm_order(k.norm), _init_order(k.init_std), k.lr))
    return {k: sorted(cells[k], key=lambda r: (r.seed is None, r.seed or 0)) for k in order}


def _final_acc(run: RunData) -> float:
    """The last evaluation's test accuracy (a diverged run's: the one at which it stopped)."""
    acc = run.run.test_acc[-1] if run.run.test_acc else run.summary.get("final_test_acc")
    acc = float("nan") if acc is None else float(acc)
    return acc if math.isfinite(acc) else 0.0  # an accuracy that is not a number: not trained


def _best_acc(run: RunData) -> float:
    finite = [a for a in run.run.test_acc if math.isfinite(a)]
    return max(finite) if finite else _final_acc(run)


def cell_row(key: CellKey, runs: Sequence[RunData], target: float = TARGET) -> dict[str, Any]:
    """One cell's numbers (CELL_COLUMNS)."""
    counted = [r for r in runs if r.run.status in ("finished", "diverged")]
    finished = [r for r in counted if r.run.status == "finished"]
    final = [_final_acc(r) for r in counted]
    best = [_best_acc(r) for r in counted]
    # Diverged runs never reach the target: they are not trained.
    reached_by = dict(
        zip(
            (r.run.run_dir for r in finished),
            steps_to_target_per_run([r.run for r in finished], target),
            strict=True,
        )
    )
    per_seed = [reached_by.get(r.run.run_dir) for r in counted]
    reached = [s for s in per_seed if s is not None]
    final_mean, final_ci = t_interval(final)
    best_mean, best_ci = t_interval(best)
    steps_mean, steps_ci = t_interval(reached)
    return {
        "protocol": protocol_tag(key.momentum),
        "momentum": key.momentum,
        "norm": key.norm,
        "norm_label": norm_label(key.norm),
        "init_std": key.init_std,
        "lr": key.lr,
        "runs": len(counted),
        "diverged": sum(r.run.diverged for r in counted),
        "incomplete": len(runs) - len(counted),
        "final_acc_mean": final_mean,
        "final_acc_ci95": final_ci,
        "best_acc_mean": best_mean,
        "best_acc_ci95": best_ci,
        "target_acc": target,
        "seeds_reaching_target": len(reached),
        "steps_to_target_mean": steps_mean,
        "steps_to_target_ci95": steps_ci,
        "final_acc_per_seed": final,
        "steps_to_target_per_seed": per_seed,
        "seeds": [r.seed for r in counted],
        "max_steps": runs[0].max_steps,
        "dataset": runs[0].dataset,
    }


def cell_rows(cells: dict[CellKey, list[RunData]], target: float = TARGET) -> list[dict[str, Any]]:
    return [cell_row(key, runs, target) for key, runs in cells.items()]


def _by_protocol(rows: Sequence[dict[str, Any]]) -> dict[float, list[dict[str, Any]]]:
    out: dict[float, list[dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(row["momentum"], []).append(row)
    return out


def _by_norm(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for row in sorted(rows, key=lambda r: _norm_order(r["norm"])):
        out.setdefault(row["norm"], []).append(row)
    return out


def _axes_values(rows: Sequence[dict[str, Any]]) -> tuple[list[float | None], list[float]]:
    """The grid's init stds (rows) and learning rates (columns) over all these cells."""
    stds = sorted({r["init_std"] for r in rows}, key=_init_order)
    lrs = sorted({r["lr"] for r in rows})
    return stds, lrs


# ---------------------------------------------------------------------------------------------- area, spread


def _trains(row: dict[str, Any], level: float) -> bool:
    return row["final_acc_mean"] is not None and row["final_acc_mean"] >= level


def area_rows(rows: Sequence[dict[str, Any]], levels: Sequence[float] = AREA_LEVELS) -> list[dict[str, Any]]:
    """Per protocol and norm: the whole grid (init_std "all") and each init std (area_columns(levels); the
    trains_<level> columns are named after round(100 * level))."""
    out = []
    for momentum, protocol_rows in _by_protocol(rows).items():
        stds, _ = _axes_values(protocol_rows)
        for norm, norm_rows in _by_norm(protocol_rows).items():
            subsets = [("all", norm_rows)] + [(s, [r for r in norm_rows if r["init_std"] == s]) for s in stds]
            for std, subset in subsets:
                with_acc = [r for r in subset if r["final_acc_mean"] is not None]
                best = max(with_acc, key=lambda r: r["final_acc_mean"], default=None)
                # The fastest cell among those every seed of which reaches the target (a cell where one
                # lucky seed of five reaches it is not fast).
                reaching = [r for r in subset if r["runs"] and r["seeds_reaching_target"] == r["runs"]]
                fastest = min(reaching, key=lambda r: (r["steps_to_target_mean"], r["lr"]), default=None)
                row = {
                    "protocol": protocol_tag(momentum),
                    "momentum": momentum,
                    "norm": norm,
                    "init_std": std,
                    "cells": len(subset),
                    # The learning rates at which it trains (at some init std, in the "all" row).
                    "lrs_trains": sorted({r["lr"] for r in subset if _trains(r, levels[0])}),
                    "best_final_acc": None,
                    "best_final_acc_lr": None,
                    "fewest_steps_to_target": None,
                    "fewest_steps_lr": None,
                    "runs": sum(r["runs"] for r in subset),
                    "diverged": sum(r["diverged"] for r in subset),
                }
                # The *_init_std keys only where there is such a cell (None in them: PyTorch's default).
                if best:
                    row.update(
                        best_final_acc=best["final_acc_mean"],
                        best_final_acc_lr=best["lr"],
                        best_final_acc_init_std=best["init_std"],
                    )
                if fastest:
                    row.update(
                        fewest_steps_to_target=fastest["steps_to_target_mean"],
                        fewest_steps_lr=fastest["lr"],
                        fewest_steps_init_std=fastest["init_std"],
                    )
                for level in levels:
                    row[f"trains_{round(100 * level)}"] = sum(_trains(r, level) for r in subset)
                out.append(row)
    return out


def spread_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per protocol, norm and lr: how much the init std moves the cell (SPREAD_COLUMNS)."""
    out = []
    for momentum, protocol_rows in _by_protocol(rows).items():
        for norm, norm_rows in _by_norm(protocol_rows).items():
            for lr in sorted({r["lr"] for r in norm_rows}):
                at_lr = [r for r in norm_rows if r["lr"] == lr and r["final_acc_mean"] is not None]
                finals = [r["final_acc_mean"] for r in at_lr]
                bests = [r["best_acc_mean"] for r in at_lr]
                steps = [r["steps_to_target_mean"] for r in at_lr if r["steps_to_target_mean"] is not None]
                out.append(
                    {
                        "protocol": protocol_tag(momentum),
                        "momentum": momentum,
                        "norm": norm,
                        "lr": lr,
                        "init_stds": len(at_lr),
                        "final_acc_min": min(finals, default=None),
                        "final_acc_max": max(finals, default=None),
                        "final_acc_spread": max(finals) - min(finals) if finals else None,
                        "best_acc_spread": max(bests) - min(bests) if bests else None,
                        "init_stds_reaching_target": len(steps),
                        "steps_to_target_min": min(steps, default=None),
                        "steps_to_target_max": max(steps, default=None),
                    }
                )
    return out


# ---------------------------------------------------------------------------------------------- heatmaps


def _grid(rows: Sequence[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    return {(r["init_std"], r["lr"]): r for r in rows}


def _heatmap(rows: Sequence[dict[str, Any]], kind: str, path: Path, title: str, target: float) -> None:
    """kind "acc": mean final accuracy; "steps": mean steps to the target. No BN and BN side by side."""
    stds, lrs = _axes_values(rows)
    norms_rows = _by_norm(rows)
    max_steps = max(r["max_steps"] for r in rows)
    values = {}
    for norm, norm_rows in norms_rows.items():
        grid = _grid(norm_rows)
        field_name = "final_acc_mean" if kind == "acc" else "steps_to_target_mean"
        values[norm] = np.array(
            [
                [
                    np.nan if (c := grid.get((s, lr))) is None or c[field_name] is None else c[field_name]
                    for lr in lrs
                ]
                for s in stds
            ],
            dtype=float,
        )
    finite = np.concatenate([v[np.isfinite(v)] for v in values.values()])
    if kind == "acc":
        cmap, scale = "viridis", Normalize(vmin=0.0, vmax=1.0)
    else:
        cmap = "viridis_r"
        positive = finite[finite > 0]  # a cell at the target from step 0 on is off the log scale (gray)
        low = float(positive.min()) if positive.size else 1.0
        high = float(positive.max()) if positive.size else float(max(max_steps, 2))
        scale = LogNorm(vmin=low, vmax=max(high, 2 * low))
    cmap_obj = colormaps[cmap].copy()
    cmap_obj.set_bad("lightgray")
    columns = len(values)
    fig = Figure(
        figsize=(1.0 + 0.95 * len(lrs) * columns + 1.0, 0.9 + 0.75 * len(stds)), layout="constrained"
    )
    axes = fig.subplots(1, columns, squeeze=False, sharey=True)[0]
    image = None
    for ax, (norm, grid_values) in zip(axes, values.items(), strict=True):
        image = ax.imshow(np.ma.masked_invalid(grid_values), cmap=cmap_obj, norm=scale, aspect="auto")
        grid = _grid(norms_rows[norm])
        for i, std in enumerate(stds):
            for j, lr in enumerate(lrs):
                cell = grid.get((std, lr))
                value = grid_values[i, j]
                if cell is None:
                    text = "no runs"
                elif kind == "acc":
                    text = f"{100 * value:.1f}" if math.isfinite(value) else "-"
                elif math.isfinite(value):
                    text = f"{_short_steps(value)}\n({cell['seeds_reaching_target']}/{cell['runs']})"
                else:
                    text = f">{_short_steps(max_steps)}\n(0/{cell['runs']})"
                if cell is not None and cell["diverged"]:
                    text += f"\n{cell['diverged']} div."
                dark = math.isfinite(value) and np.mean(cmap_obj(scale(value))[:3]) < 0.5
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
        ax.set_xticks(range(len(lrs)), [f"{lr:g}" for lr in lrs])
        ax.set_yticks(range(len(stds)), [init_label(s) for s in stds])
        ax.set_title(norm_label(norm), fontsize=10)
    axes[0].set_ylabel("init std")
    fig.supxlabel("learning rate (log-spaced)", fontsize=10)
    label = "mean final test acc (%)" if kind == "acc" else f"mean steps to {100 * target:g}%"
    bar = fig.colorbar(image, ax=list(axes), shrink=0.9)
    bar.set_label(label)
    if kind == "acc":
        bar.set_ticks([0, 0.2, 0.4, 0.6, 0.8, 1.0], labels=["0", "20", "40", "60", "80", "100"])
    else:  # a few round ticks across the range, whether or not it spans a power of 10
        ticks = sorted({float(f"{t:.2g}") for t in np.geomspace(scale.vmin, scale.vmax, 5)})
        bar.set_ticks(ticks, labels=[f"{t:,.0f}" for t in ticks])
        bar.ax.minorticks_off()
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=PNG_DPI)


def _run_text(rows: Sequence[dict[str, Any]]) -> str:
    dataset = DATASET_NAMES.get(rows[0]["dataset"], rows[0]["dataset"])
    seeds = sorted({s for r in rows for s in r["seeds"] if s is not None})
    return f"{dataset}, {rows[0]['max_steps']:,} steps, {len(seeds)} seeds per cell"


def write_heatmaps(rows: Sequence[dict[str, Any]], out_dir: Path, report: Report) -> None:
    for momentum, protocol_rows in _by_protocol(rows).items():
        tag, label, target = protocol_tag(momentum), protocol_label(momentum), protocol_rows[0]["target_acc"]
        context = f"{label}; {_run_text(protocol_rows)}"
        path = out_dir / f"{STEM}_final_acc_{tag}.png"
        _heatmap(protocol_rows, "acc", path, f"Final test accuracy (%), mean over seeds\n{context}", target)
        report.written.append(path)
        path = out_dir / f"{STEM}_steps_to_{round(100 * target)}_{tag}.png"
        title = (
            f"Steps to {100 * target:g}% test accuracy, mean over the seeds that reach it "
            "(reaching/n;\ndiverged seeds count as not reaching; '>': no seed reaches it)\n"
            f"{context}"
        )
        _heatmap(protocol_rows, "steps", path, title, target)
        report.written.append(path)


# ---------------------------------------------------------------------------------------------- tables


def _csv_value(value: Any) -> Any:
    if isinstance(value, list):
        return ";".join("" if v is None else str(v) for v in value)
    return "" if value is None else value


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            out = {k: _csv_value(row.get(k)) for k in columns}
            # An init std that is present and None: PyTorch's default init, "null" as in the preset.
            for k in columns:
                if k.endswith("init_std") and k in row and row[k] is None:
                    out[k] = "null"
            writer.writerow(out)


def cell_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """One protocol's cells: final accuracy, steps to the target, diverged."""
    target = rows[0]["target_acc"]
    tgt = f"{100 * target:g}%"
    lines = [
        f"**{protocol_label(rows[0]['momentum'])}: {_run_text(rows)}**",
        "",
        f"| norm | init std | lr | final test acc (n) | steps to {tgt} (seeds reaching / n) | diverged |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        steps = (
            f">{r['max_steps']:,}"
            if r["steps_to_target_mean"] is None
            else _steps_text(r["steps_to_target_mean"])
            + ("" if r["steps_to_target_ci95"] is None else f" +- {_steps_text(r['steps_to_target_ci95'])}")
        )
        n = f"{r['runs']}" + (f", {r['incomplete']} incomplete" if r["incomplete"] else "")
        lines.append(
            f"| {r['norm_label']} | {init_label(r['init_std'])} | {r['lr']:g} "
            f"| {_pct(r['final_acc_mean'], r['final_acc_ci95'])} ({n}) "
            f"| {steps} ({r['seeds_reaching_target']}/{r['runs']}) | {r['diverged']} |"
        )
    lines += [
        "",
        "Final test accuracy: the last evaluation of each run (a diverged run's: where it stopped), mean +- "
        "the half-width of the 95% t-interval over the n seeds. Steps to the target: each seed's first "
        f"evaluation at or above {tgt}, mean +- 95% t-interval over the seeds that reach it; a diverged seed "
        "counts as not reaching it.",
    ]
    return "\n".join(lines) + "\n"


def area_markdown(area: Sequence[dict[str, Any]], levels: Sequence[float] = AREA_LEVELS) -> str:
    hi, lo = (round(100 * v) for v in levels)
    lines = [
        f"| protocol | norm | init std | cells >= {hi}% | cells >= {lo}% | lrs >= {hi}% "
        "| best final acc | fewest mean steps to the target (of cells every seed of which reaches it) "
        "| diverged runs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for a in area:
        std = "all" if a["init_std"] == "all" else init_label(a["init_std"])
        best = fast = "-"
        where = "all" if a["init_std"] == "all" else None  # the whole grid's row names the init std too
        if a["best_final_acc"] is not None:
            at = f"lr {a['best_final_acc_lr']:g}"
            at += f", init {init_label(a['best_final_acc_init_std'])}" if where else ""
            best = f"{_pct(a['best_final_acc'])} ({at})"
        if a["fewest_steps_to_target"] is not None:
            at = f"lr {a['fewest_steps_lr']:g}"
            at += f", init {init_label(a['fewest_steps_init_std'])}" if where else ""
            fast = f"{_steps_text(a['fewest_steps_to_target'])} ({at})"
        lrs = ", ".join(f"{lr:g}" for lr in a["lrs_trains"]) or "none"
        lines.append(
            f"| {protocol_label(a['momentum'])} | {norm_label(a['norm'])} | {std} "
            f"| {a[f'trains_{hi}']}/{a['cells']} | {a[f'trains_{lo}']}/{a['cells']} | {lrs} | {best} "
            f"| {fast} | {a['diverged']}/{a['runs']} |"
        )
    lines += [
        "",
        "A cell trains when its mean final test accuracy over seeds is at or above the level; `all` counts "
        "the grid's (init std, lr) cells, the other rows one init std's learning rates.",
    ]
    return "\n".join(lines) + "\n"


def spread_markdown(spread: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| protocol | norm | lr | mean final acc across init stds: min-max (spread, points) "
        "| best acc spread (points) | init stds where a seed reaches the target | their mean steps to it: "
        "min-max |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in spread:
        accs = (
            "-"
            if s["final_acc_min"] is None
            else (
                f"{100 * s['final_acc_min']:.1f}-{100 * s['final_acc_max']:.1f}% "
                f"({100 * s['final_acc_spread']:.1f})"
            )
        )
        best = "-" if s["best_acc_spread"] is None else f"{100 * s['best_acc_spread']:.1f}"
        steps = (
            "-"
            if s["steps_to_target_min"] is None
            else (f"{_steps_text(s['steps_to_target_min'])}-{_steps_text(s['steps_to_target_max'])}")
        )
        lines.append(
            f"| {protocol_label(s['momentum'])} | {norm_label(s['norm'])} | {s['lr']:g} | {accs} | {best} "
            f"| {s['init_stds_reaching_target']}/{s['init_stds']} | {steps} |"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- summary


def _lr_span(lrs: Sequence[float]) -> str:
    if not lrs:
        return "none"
    return f"{min(lrs):g}" if len(lrs) == 1 else f"{min(lrs):g}-{max(lrs):g} ({len(lrs)} values)"


def summary_text(
    rows: Sequence[dict[str, Any]],
    area: Sequence[dict[str, Any]],
    spread: Sequence[dict[str, Any]],
    levels: Sequence[float] = AREA_LEVELS,
) -> str:
    """A paragraph per protocol, every number from the rows."""
    hi, lo = (round(100 * v) for v in levels)
    target = f"{100 * rows[0]['target_acc']:g}%"
    stds, lrs = _axes_values(rows)
    paragraphs = [
        f"Learning rate x init std grid ({_run_text(rows)}; "
        f"learning rates {', '.join(f'{x:g}' for x in lrs)}; "
        f"init stds {', '.join(init_label(s) for s in stds)}). A cell trains when its mean final test "
        f"accuracy is >= {hi}%; a diverged run counts as not trained."
    ]
    for momentum, protocol_rows in _by_protocol(rows).items():
        tag = protocol_tag(momentum)
        parts = []
        whole = {a["norm"]: a for a in area if a["protocol"] == tag and a["init_std"] == "all"}
        for norm, a in whole.items():
            cells = [r for r in protocol_rows if r["norm"] == norm]
            lrs_some = sorted({r["lr"] for r in cells if _trains(r, levels[0])})
            lr_stds = {lr: [r for r in cells if r["lr"] == lr] for lr in sorted({r["lr"] for r in cells})}
            lrs_all = [lr for lr, at in lr_stds.items() if at and all(_trains(r, levels[0]) for r in at)]
            per_std = [
                x for x in area if x["protocol"] == tag and x["norm"] == norm and x["init_std"] != "all"
            ]
            bests = [x["best_final_acc"] for x in per_std if x["best_final_acc"] is not None]
            spreads = [
                s["final_acc_spread"]
                for s in spread
                if s["protocol"] == tag and s["norm"] == norm and s["final_acc_spread"] is not None
            ]
            text = (
                f"{norm_label(norm)} trains in {a[f'trains_{hi}']} of {a['cells']} cells (>= {lo}%: "
                f"{a[f'trains_{lo}']}); learning rates at which some init std trains: {_lr_span(lrs_some)}, "
                f"at which every init std does: {_lr_span(lrs_all)}"
            )
            if a["best_final_acc"] is not None:
                text += (
                    f"; best cell {_pct(a['best_final_acc'])} (lr {a['best_final_acc_lr']:g}, init std "
                    f"{init_label(a['best_final_acc_init_std'])})"
                )
            if bests:
                text += (
                    f"; the best over learning rates at each init std spans {100 * min(bests):.1f}-"
                    f"{100 * max(bests):.1f}%"
                )
            if spreads:
                text += (
                    f"; at one lr, the mean final accuracy varies across init stds by "
                    f"{100 * float(np.mean(spreads)):.1f} points on average (at most "
                    f"{100 * max(spreads):.1f})"
                )
            if a["fewest_steps_to_target"] is not None:
                text += (
                    f"; fewest mean steps to {target} (of the cells whose every seed reaches it): "
                    f"{_steps_text(a['fewest_steps_to_target'])} (lr "
                    f"{a['fewest_steps_lr']:g}, init std {init_label(a['fewest_steps_init_std'])})"
                )
            else:
                text += f"; no cell has every seed reach {target}"
            text += f"; {a['diverged']} of {a['runs']} runs diverged"
            parts.append(text)
        paragraphs.append(f"**{protocol_label(momentum)}**: " + ". ".join(parts) + ".")
    return "\n\n".join(paragraphs) + "\n"


# ---------------------------------------------------------------------------------------------- entry


def write_all(
    rows: Sequence[dict[str, Any]], out_dir: str | Path, levels: Sequence[float] = AREA_LEVELS
) -> Report:
    """Heatmaps, the per-protocol tables, the area and spread tables, the summary and one markdown file
    holding all of them (lr_init_grid.md) into out_dir."""
    if not rows:
        raise ValueError("no grid cells to report")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = Report()
    write_heatmaps(rows, out, report)
    sections = []
    for momentum, protocol_rows in _by_protocol(rows).items():
        stem = f"{STEM}_table_{protocol_tag(momentum)}"  # not with_suffix: momentum0.9 holds a dot
        md_path, csv_path = out / f"{stem}.md", out / f"{stem}.csv"
        text = cell_markdown(protocol_rows)
        md_path.write_text(text)
        _write_csv(csv_path, CELL_COLUMNS, protocol_rows)
        report.written += [md_path, csv_path]
        sections.append(text)
    area, spread = area_rows(rows, levels), spread_rows(rows)
    _write_csv(out / f"{STEM}_area.csv", area_columns(levels), area)
    _write_csv(out / f"{STEM}_init_spread.csv", SPREAD_COLUMNS, spread)
    summary = summary_text(rows, area, spread, levels)
    (out / f"{STEM}_summary.md").write_text(summary)
    area_md, spread_md = area_markdown(area, levels), spread_markdown(spread)
    (out / f"{STEM}_area.md").write_text(area_md)
    (out / f"{STEM}_init_spread.md").write_text(spread_md)
    document = "\n".join(
        [
            "# Learning rate x init std (paper section 3.3)",
            "",
            summary,
            "## Area of the grid where each trains",
            "",
            area_md,
            "## Dependence on the init scale, at each learning rate",
            "",
            spread_md,
            "## Cells",
            "",
            "\n".join(sections),
            "## Figures",
            "",
            *(f"![{p.stem}]({p.name})" for p in report.written if p.suffix == ".png"),
            "",
        ]
    )
    (out / f"{STEM}.md").write_text(document)
    report.written += [
        out / f"{STEM}_{name}"
        for name in ("area.csv", "init_spread.csv", "summary.md", "area.md", "init_spread.md")
    ]
    report.written.append(out / f"{STEM}.md")
    incomplete = sum(r["incomplete"] for r in rows)
    if incomplete:
        report.notes.append(f"{incomplete} runs still running or failed: left out of every cell")
    missing = [r for r in rows if r["runs"] == 0]
    if missing:
        report.notes.append(f"{len(missing)} cells have no finished or diverged run")
    return report


def analyse(
    runs: Sequence[RunData],
    out_dir: str | Path,
    target: float = TARGET,
    levels: Sequence[float] = AREA_LEVELS,
) -> tuple[list[dict[str, Any]], Report]:
    """Cells, then every output; returns the cell rows and what was written."""
    rows = cell_rows(grid_cells(runs), target)
    return rows, write_all(rows, out_dir, levels)


def load_grid(paths: Iterable[str | Path]) -> list[RunData]:
    """The runs under `paths` (figures.load_all; figures.NoRunsError when there are none)."""
    return load_all(paths)
