"""Section 3.3's claims on a learning rate x init std grid: heatmaps, tables, the area where each trains.

    cells = grid_cells(load_all(["results/lr_init_grid_fashion_mnist/runs"]))   # (protocol, norm, std, lr)
    rows = cell_rows(cells)                                                      # one dict per cell
    report = write_all(rows, "results/lr_init_grid_fashion_mnist")               # figures, tables, summary

The runs are those of configs/experiment/lr_init_grid.yaml (setup and findings: results/README.md,
"Section 3.3"). Definitions:

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

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure

from bn_repro.analysis.figures import DATASET_NAMES, Report, RunData, load_all, split_curves
from bn_repro.analysis.plots import PNG_DPI
from bn_repro.analysis.runs_table import flatten
from bn_repro.analysis.speedup import steps_to_target_per_run
from bn_repro.analysis.stats import t_interval
from bn_repro.analysis.tables import markdown_table, spread, write_csv

TARGET = 0.8
AREA_LEVELS = (0.8, 0.5)
STEM = "lr_init_grid"
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
Row = dict[str, Any]  # one cell's numbers (cell_row), or one row of the area or spread table


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


def _steps_text(steps: float | None, half: float | None = None) -> str:
    """1,500 or 1,500 +- 300."""
    return spread(steps, half, "{:,.0f}")


def _short_steps(steps: float) -> str:
    """500, 1.7k, 10k."""
    return f"{steps:.0f}" if steps < 1000 else f"{steps / 1000:.3g}k"


def _pct(value: float | None, half: float | None = None) -> str:
    """87.39% or 87.39% +- 0.25."""
    return spread(value, half, "{:.2f}%", 100, "{:.2f}")


def _lr_span(lrs: Sequence[float]) -> str:
    if not lrs:
        return "none"
    return f"{min(lrs):g}" if len(lrs) == 1 else f"{min(lrs):g}-{max(lrs):g} ({len(lrs)} values)"


def _run_text(rows: Sequence[Row]) -> str:
    dataset = DATASET_NAMES.get(rows[0]["dataset"], rows[0]["dataset"])
    seeds = sorted({s for r in rows for s in r["seeds"] if s is not None})
    return f"{dataset}, {rows[0]['max_steps']:,} steps, {len(seeds)} seeds per cell"


# ---------------------------------------------------------------------------------------------- cells


def grid_cells(runs: Sequence[RunData]) -> dict[CellKey, list[RunData]]:
    """The runs by cell, sorted (protocol: momentum first, then plain SGD; no BN first; init std; lr)."""
    for what, attribute in (("datasets", "dataset"), ("planned lengths", "max_steps")):
        values = {getattr(r, attribute) for r in runs}
        if len(values) > 1:
            raise ValueError(f"the runs mix {what} ({', '.join(map(str, sorted(values)))}); pass one grid")
    cells: dict[CellKey, list[RunData]] = {}
    labels: dict[CellKey, str] = {}
    for label, group in split_curves(runs, lambda r: r.norm_kind).items():
        config = flatten(group[0].config)
        std, momentum = config.get("model.init_std"), float(config.get("optim.momentum", 0.0))
        key = CellKey(
            momentum, group[0].norm_kind, None if std is None else float(std), float(config["optim.lr"])
        )
        if key in cells:
            raise ValueError(
                f"runs of one grid cell ({key}) differ in another setting: {labels[key]!r} vs {label!r}"
            )
        cells[key], labels[key] = group, label
    order = sorted(
        cells, key=lambda k: (-k.momentum, k.norm != "none", k.norm, _init_order(k.init_std), k.lr)
    )
    return {k: sorted(cells[k], key=lambda r: (r.seed is None, r.seed or 0)) for k in order}


def _final_acc(run: RunData) -> float:
    """The last evaluation's test accuracy (a diverged run's: the one at which it stopped)."""
    acc = run.run.test_acc[-1] if run.run.test_acc else run.summary.get("final_test_acc")
    acc = float("nan") if acc is None else float(acc)
    return acc if math.isfinite(acc) else 0.0  # an accuracy that is not a number: not trained


def _best_acc(run: RunData) -> float:
    finite = [a for a in run.run.test_acc if math.isfinite(a)]
    return max(finite) if finite else _final_acc(run)


def cell_row(key: CellKey, runs: Sequence[RunData], target: float = TARGET) -> Row:
    """One cell's numbers (CELL_COLUMNS, and its dataset)."""
    counted = [r for r in runs if r.run.status in ("finished", "diverged")]
    finished = [r.run for r in counted if r.run.status == "finished"]
    # Diverged runs never reach the target: they are not trained.
    reached = dict(zip((r.run_dir for r in finished), steps_to_target_per_run(finished, target), strict=True))
    per_seed = [reached.get(r.run.run_dir) for r in counted]
    row = {
        "protocol": protocol_tag(key.momentum), **asdict(key), "norm_label": norm_label(key.norm),
        "runs": len(counted), "diverged": sum(r.run.diverged for r in counted),
        "incomplete": len(runs) - len(counted), "target_acc": target,
        "seeds_reaching_target": sum(s is not None for s in per_seed),
        "final_acc_per_seed": [_final_acc(r) for r in counted], "steps_to_target_per_seed": per_seed,
        "seeds": [r.seed for r in counted], "max_steps": runs[0].max_steps, "dataset": runs[0].dataset,
    }  # fmt: skip
    for name, values in (
        ("final_acc", row["final_acc_per_seed"]),
        ("best_acc", [_best_acc(r) for r in counted]),
        ("steps_to_target", [s for s in per_seed if s is not None]),
    ):
        row[f"{name}_mean"], row[f"{name}_ci95"] = t_interval(values)  # the mean, its 95% half-width
    return row


def cell_rows(cells: dict[CellKey, list[RunData]], target: float = TARGET) -> list[Row]:
    return [cell_row(key, runs, target) for key, runs in cells.items()]


def _groups(rows: Iterable[Row], *keys: str) -> dict[tuple, list[Row]]:
    """The rows by their values of `keys`, in the rows' order (cell_rows': protocols momentum first, no BN
    first in each, then init stds and lrs ascending)."""
    out: dict[tuple, list[Row]] = {}
    for row in rows:
        out.setdefault(tuple(row[k] for k in keys), []).append(row)
    return out


def _axes_values(rows: Sequence[Row]) -> tuple[list[float | None], list[float]]:
    """The grid's init stds (rows) and learning rates (columns) over all these cells."""
    return sorted({r["init_std"] for r in rows}, key=_init_order), sorted({r["lr"] for r in rows})


# ---------------------------------------------------------------------------------------------- area, spread


def _trains(row: Row, level: float) -> bool:
    return row["final_acc_mean"] is not None and row["final_acc_mean"] >= level


def area_rows(rows: Sequence[Row], levels: Sequence[float] = AREA_LEVELS) -> list[Row]:
    """Per protocol and norm: the whole grid (init_std "all") and each init std (area_columns(levels); the
    trains_<level> columns are named after round(100 * level))."""
    out = []
    for (momentum, norm), norm_rows in _groups(rows, "momentum", "norm").items():
        stds, _ = _axes_values([r for r in rows if r["momentum"] == momentum])
        subsets = [("all", norm_rows), *((s, [r for r in norm_rows if r["init_std"] == s]) for s in stds)]
        for std, cells in subsets:
            with_acc = [r for r in cells if r["final_acc_mean"] is not None]
            best = max(with_acc, key=lambda r: r["final_acc_mean"], default=None)
            # The fastest cell among those every seed of which reaches the target (a cell where one
            # lucky seed of five reaches it is not fast).
            reaching = [r for r in cells if r["runs"] and r["seeds_reaching_target"] == r["runs"]]
            fastest = min(reaching, key=lambda r: (r["steps_to_target_mean"], r["lr"]), default=None)
            row = {
                "protocol": protocol_tag(momentum), "momentum": momentum, "norm": norm, "init_std": std,
                "cells": len(cells),
                **{f"trains_{round(100 * v)}": sum(_trains(r, v) for r in cells) for v in levels},
                # The learning rates at which it trains (at some init std, in the "all" row).
                "lrs_trains": sorted({r["lr"] for r in cells if _trains(r, levels[0])}),
                "runs": sum(r["runs"] for r in cells), "diverged": sum(r["diverged"] for r in cells),
                "best_final_acc": None, "best_final_acc_lr": None,
                "fewest_steps_to_target": None, "fewest_steps_lr": None,
            }  # fmt: skip
            # The *_init_std keys only where there is such a cell (None in them: PyTorch's default).
            if best:
                row.update(best_final_acc=best["final_acc_mean"], best_final_acc_lr=best["lr"])
                row["best_final_acc_init_std"] = best["init_std"]
            if fastest:
                row.update(
                    fewest_steps_to_target=fastest["steps_to_target_mean"], fewest_steps_lr=fastest["lr"]
                )
                row["fewest_steps_init_std"] = fastest["init_std"]
            out.append(row)
    return out


def spread_rows(rows: Sequence[Row]) -> list[Row]:
    """Per protocol, norm and lr: how much the init std moves the cell (SPREAD_COLUMNS)."""
    out = []
    for (momentum, norm), norm_rows in _groups(rows, "momentum", "norm").items():
        for (lr,), cells in sorted(_groups(norm_rows, "lr").items()):
            cells = [r for r in cells if r["final_acc_mean"] is not None]
            finals, bests = [r["final_acc_mean"] for r in cells], [r["best_acc_mean"] for r in cells]
            steps = [r["steps_to_target_mean"] for r in cells if r["steps_to_target_mean"] is not None]
            out.append({
                "protocol": protocol_tag(momentum), "momentum": momentum, "norm": norm, "lr": lr,
                "init_stds": len(cells), "final_acc_min": min(finals, default=None),
                "final_acc_max": max(finals, default=None),
                "final_acc_spread": max(finals) - min(finals) if finals else None,
                "best_acc_spread": max(bests) - min(bests) if bests else None,
                "init_stds_reaching_target": len(steps), "steps_to_target_min": min(steps, default=None),
                "steps_to_target_max": max(steps, default=None),
            })  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------- heatmaps


def _heatmap(rows: Sequence[Row], kind: str, path: Path, title: str, target: float) -> None:
    """kind "acc": mean final accuracy; "steps": mean steps to the target. No BN and BN side by side."""
    stds, lrs = _axes_values(rows)
    field = "final_acc_mean" if kind == "acc" else "steps_to_target_mean"
    max_steps = max(r["max_steps"] for r in rows)
    grids = {
        norm: {(r["init_std"], r["lr"]): r for r in cells} for (norm,), cells in _groups(rows, "norm").items()
    }
    values = {  # NaN where there is no cell or no value
        norm: np.array([[grid.get((s, lr), {}).get(field) for lr in lrs] for s in stds], dtype=float)
        for norm, grid in grids.items()
    }
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
        for (i, std), (j, lr) in itertools.product(enumerate(stds), enumerate(lrs)):
            cell, value = grids[norm].get((std, lr)), grid_values[i, j]
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
    bar = fig.colorbar(image, ax=list(axes), shrink=0.9)
    bar.set_label("mean final test acc (%)" if kind == "acc" else f"mean steps to {100 * target:g}%")
    if kind == "acc":
        bar.set_ticks([0, 0.2, 0.4, 0.6, 0.8, 1.0], labels=["0", "20", "40", "60", "80", "100"])
    else:  # a few round ticks across the range, whether or not it spans a power of 10
        ticks = sorted({float(f"{t:.2g}") for t in np.geomspace(scale.vmin, scale.vmax, 5)})
        bar.set_ticks(ticks, labels=[f"{t:,.0f}" for t in ticks])
        bar.ax.minorticks_off()
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=PNG_DPI)


def write_heatmaps(rows: Sequence[Row], out_dir: Path, report: Report) -> None:
    for (momentum,), cells in _groups(rows, "momentum").items():
        target, context = cells[0]["target_acc"], f"{protocol_label(momentum)}; {_run_text(cells)}"
        for kind, name, title in (
            ("acc", "final_acc", "Final test accuracy (%), mean over seeds\n"),
            (
                "steps",
                f"steps_to_{round(100 * target)}",
                f"Steps to {100 * target:g}% test accuracy, mean over the seeds that reach it (reaching/n;\n"
                "diverged seeds count as not reaching; '>': no seed reaches it)\n",
            ),
        ):
            path = out_dir / f"{STEM}_{name}_{protocol_tag(momentum)}.png"
            _heatmap(cells, kind, path, title + context, target)
            report.written.append(path)


# ---------------------------------------------------------------------------------------------- tables


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[Row]) -> None:
    # An init std that is present and None: PyTorch's default init, "null" as in the preset.
    nulls = [{k: "null" if v is None and k.endswith("init_std") else v for k, v in r.items()} for r in rows]
    write_csv(path, columns, nulls)


def _markdown(header: Sequence[str], rows: Iterable[Sequence[Any]], before: str = "", after: str = "") -> str:
    """A markdown table, with a paragraph before and after it where given."""
    lines = markdown_table(header, rows)
    return "\n".join([*([before, ""] if before else []), *lines, *(["", after] if after else [])]) + "\n"


def cell_markdown(rows: Sequence[Row]) -> str:
    """One protocol's cells: final accuracy, steps to the target, diverged."""
    tgt = f"{100 * rows[0]['target_acc']:g}%"
    table = []
    for r in rows:
        steps = _steps_text(r["steps_to_target_mean"], r["steps_to_target_ci95"])
        steps = f">{r['max_steps']:,}" if r["steps_to_target_mean"] is None else steps
        n = f"{r['runs']}" + (f", {r['incomplete']} incomplete" if r["incomplete"] else "")
        table.append([
            r["norm_label"], init_label(r["init_std"]), f"{r['lr']:g}",
            f"{_pct(r['final_acc_mean'], r['final_acc_ci95'])} ({n})",
            f"{steps} ({r['seeds_reaching_target']}/{r['runs']})", r["diverged"],
        ])  # fmt: skip
    header = (
        "norm",
        "init std",
        "lr",
        "final test acc (n)",
        f"steps to {tgt} (seeds reaching / n)",
        "diverged",
    )
    notes = (
        "Final test accuracy: the last evaluation of each run (a diverged run's: where it stopped), mean +- "
        "the half-width of the 95% t-interval over the n seeds. Steps to the target: each seed's first "
        f"evaluation at or above {tgt}, mean +- 95% t-interval over the seeds that reach it; a diverged seed "
        "counts as not reaching it."
    )
    return _markdown(header, table, f"**{protocol_label(rows[0]['momentum'])}: {_run_text(rows)}**", notes)


def _cell_at(a: Row, prefix: str, init: str = "init") -> str:
    """Where an area row's best or fastest cell (prefix) is: its lr, and its init std in the whole grid's."""
    where = f"lr {a[f'{prefix}_lr']:g}"
    return where + (f", {init} {init_label(a[f'{prefix}_init_std'])}" if a["init_std"] == "all" else "")


def area_markdown(area: Sequence[Row], levels: Sequence[float] = AREA_LEVELS) -> str:
    hi, lo = (round(100 * v) for v in levels)
    table = []
    for a in area:
        best, fast = a["best_final_acc"], a["fewest_steps_to_target"]
        best = "-" if best is None else f"{_pct(best)} ({_cell_at(a, 'best_final_acc')})"
        fast = "-" if fast is None else f"{_steps_text(fast)} ({_cell_at(a, 'fewest_steps')})"
        table.append([
            protocol_label(a["momentum"]), norm_label(a["norm"]),
            "all" if a["init_std"] == "all" else init_label(a["init_std"]),
            f"{a[f'trains_{hi}']}/{a['cells']}", f"{a[f'trains_{lo}']}/{a['cells']}",
            ", ".join(f"{lr:g}" for lr in a["lrs_trains"]) or "none", best, fast,
            f"{a['diverged']}/{a['runs']}",
        ])  # fmt: skip
    header = (
        "protocol", "norm", "init std", f"cells >= {hi}%", f"cells >= {lo}%", f"lrs >= {hi}%",
        "best final acc", "fewest mean steps to the target (of cells every seed of which reaches it)",
        "diverged runs",
    )  # fmt: skip
    notes = (
        "A cell trains when its mean final test accuracy over seeds is at or above the level; `all` counts "
        "the grid's (init std, lr) cells, the other rows one init std's learning rates."
    )
    return _markdown(header, table, after=notes)


def spread_markdown(spread: Sequence[Row]) -> str:
    table = []
    for s in spread:
        lo, hi, width = (s[f"final_acc_{k}"] for k in ("min", "max", "spread"))
        accs = "-" if lo is None else f"{100 * lo:.1f}-{100 * hi:.1f}% ({100 * width:.1f})"
        best = "-" if s["best_acc_spread"] is None else f"{100 * s['best_acc_spread']:.1f}"
        steps = f"{_steps_text(s['steps_to_target_min'])}-{_steps_text(s['steps_to_target_max'])}"
        table.append([
            protocol_label(s["momentum"]), norm_label(s["norm"]), f"{s['lr']:g}", accs, best,
            f"{s['init_stds_reaching_target']}/{s['init_stds']}",
            "-" if s["steps_to_target_min"] is None else steps,
        ])  # fmt: skip
    header = (
        "protocol", "norm", "lr", "mean final acc across init stds: min-max (spread, points)",
        "best acc spread (points)", "init stds where a seed reaches the target",
        "their mean steps to it: min-max",
    )  # fmt: skip
    return _markdown(header, table)


# ---------------------------------------------------------------------------------------------- summary


def summary_text(rows: Sequence[Row], area: Sequence[Row], spread: Sequence[Row], levels=AREA_LEVELS) -> str:
    """A paragraph per protocol, every number from the rows."""
    hi, lo = (round(100 * v) for v in levels)
    target = f"{100 * rows[0]['target_acc']:g}%"
    stds, lrs = _axes_values(rows)
    paragraphs = [
        f"Learning rate x init std grid ({_run_text(rows)}; learning rates {', '.join(f'{x:g}' for x in lrs)}"
        f"; init stds {', '.join(init_label(s) for s in stds)}). A cell trains when its mean final test "
        f"accuracy is >= {hi}%; a diverged run counts as not trained."
    ]
    for (momentum,), protocol_rows in _groups(rows, "momentum").items():
        parts = []
        for a in (x for x in area if x["momentum"] == momentum and x["init_std"] == "all"):
            norm, fewest = a["norm"], a["fewest_steps_to_target"]
            per_std = [
                x for x in area if (x["momentum"], x["norm"]) == (momentum, norm) and x["init_std"] != "all"
            ]
            bests = [x["best_final_acc"] for x in per_std if x["best_final_acc"] is not None]
            spreads = [
                x["final_acc_spread"] for x in spread if (x["momentum"], x["norm"]) == (momentum, norm)
            ]
            spreads = [x for x in spreads if x is not None]
            by_lr = _groups((r for r in protocol_rows if r["norm"] == norm), "lr")
            lrs_all = sorted(lr for (lr,), at in by_lr.items() if all(_trains(r, levels[0]) for r in at))
            clauses = [
                f"{norm_label(norm)} trains in {a[f'trains_{hi}']} of {a['cells']} cells (>= {lo}%: "
                f"{a[f'trains_{lo}']})",
                # The "all" row's lrs_trains: the learning rates at which some init std trains.
                f"learning rates at which some init std trains: {_lr_span(a['lrs_trains'])}, at which every "
                f"init std does: {_lr_span(lrs_all)}",
            ]
            if a["best_final_acc"] is not None:
                best = _cell_at(a, "best_final_acc", "init std")
                clauses.append(f"best cell {_pct(a['best_final_acc'])} ({best})")
            if bests:
                clauses.append(
                    f"the best over learning rates at each init std spans {100 * min(bests):.1f}-"
                    f"{100 * max(bests):.1f}%"
                )
            if spreads:
                clauses.append(
                    "at one lr, the mean final accuracy varies across init stds by "
                    f"{100 * float(np.mean(spreads)):.1f} points on average (at most "
                    f"{100 * max(spreads):.1f})"
                )
            if fewest is None:
                clauses.append(f"no cell has every seed reach {target}")
            else:
                clauses.append(
                    f"fewest mean steps to {target} (of the cells whose every seed reaches it): "
                    f"{_steps_text(fewest)} ({_cell_at(a, 'fewest_steps', 'init std')})"
                )
            clauses.append(f"{a['diverged']} of {a['runs']} runs diverged")
            parts.append("; ".join(clauses))
        paragraphs.append(f"**{protocol_label(momentum)}**: " + ". ".join(parts) + ".")
    return "\n\n".join(paragraphs) + "\n"


# ---------------------------------------------------------------------------------------------- entry


def write_all(rows: Sequence[Row], out_dir: str | Path, levels: Sequence[float] = AREA_LEVELS) -> Report:
    """Heatmaps, the per-protocol tables, the area and spread tables (markdown and CSV), the summary and
    one markdown file holding all of them (lr_init_grid.md) into out_dir."""
    if not rows:
        raise ValueError("no grid cells to report")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = Report()
    write_heatmaps(rows, out, report)
    area, spread = area_rows(rows, levels), spread_rows(rows)
    # {file name part: (markdown, CSV columns, CSV rows)}; names, not with_suffix: momentum0.9 holds a dot.
    tables = {
        f"table_{protocol_tag(momentum)}": (cell_markdown(cells), CELL_COLUMNS, cells)
        for (momentum,), cells in _groups(rows, "momentum").items()
    }
    cells_md = "\n".join(text for text, _, _ in tables.values())
    tables["area"] = (area_markdown(area, levels), area_columns(levels), area)
    tables["init_spread"] = (spread_markdown(spread), SPREAD_COLUMNS, spread)
    summary = summary_text(rows, area, spread, levels)
    document = [
        "# Learning rate x init std (paper section 3.3)", "", summary,
        "## Area of the grid where each trains", "", tables["area"][0],
        "## Dependence on the init scale, at each learning rate", "", tables["init_spread"][0],
        "## Cells", "", cells_md,
        "## Figures", "", *(f"![{p.stem}]({p.name})" for p in report.written if p.suffix == ".png"), "",
    ]  # fmt: skip
    for name, (text, columns, table_rows) in tables.items():
        (out / f"{STEM}_{name}.md").write_text(text)
        _write_csv(out / f"{STEM}_{name}.csv", columns, table_rows)
        report.written += [out / f"{STEM}_{name}.md", out / f"{STEM}_{name}.csv"]
    for path, text in ((out / f"{STEM}_summary.md", summary), (out / f"{STEM}.md", "\n".join(document))):
        path.write_text(text)
        report.written.append(path)
    incomplete, missing = sum(r["incomplete"] for r in rows), sum(r["runs"] == 0 for r in rows)
    if incomplete:
        report.notes.append(f"{incomplete} runs still running or failed: left out of every cell")
    if missing:
        report.notes.append(f"{missing} cells have no finished or diverged run")
    return report


def analyse(
    runs: Sequence[RunData],
    out_dir: str | Path,
    target: float = TARGET,
    levels: Sequence[float] = AREA_LEVELS,
) -> tuple[list[Row], Report]:
    """Cells, then every output; returns the cell rows and what was written."""
    rows = cell_rows(grid_cells(runs), target)
    return rows, write_all(rows, out_dir, levels)


def load_grid(paths: Iterable[str | Path]) -> list[RunData]:
    """The runs under `paths` (figures.load_all; figures.NoRunsError when there are none)."""
    return load_all(paths)
