"""Santurkar et al. 2018 ("How Does Batch Normalization Help Optimization?", arXiv 1805.11604): figures
and tables from run dirs that carry the measurements of bn_repro/measures/ (local files only, headless).

    python scripts/santurkar_figures.py /tmp/res/santurkar_vgg /tmp/res/santurkar_vgg_noisy --out figures
    report = make_santurkar_figures(["multirun/"], "figures")      # the same from Python

Runs are grouped by `experiment_name` (one set of figures and one table each). Within an experiment,
a variant is the norm's registry label (no BN, BN (builtin), noisy BN, ...), plus the learning rate when
the experiment's runs differ in it, plus any other setting that differs (model.*, data.batch_size,
trainer.max_steps, norm options within a norm): seeds of a variant are merged, variants never are.
Curves are the mean over the variant's seeds at the steps all of them share, with a band of +- one
sample std over seeds. Runs that did not finish (diverged, failed, still running) are left out of a
variant that has finished runs (each one named in the report's notes); a variant with none is drawn
from what its runs have, labelled "not finished".

Per experiment `<exp>` (files in the output folder):

- `<exp>_curves.png`: train/test loss and accuracy (metrics.csv).
- `<exp>_activations.png` (Fig. 2 style): for a probed layer, per variant: the 15th/50th/85th
  percentiles of one unit's input to the nonlinearity (activations.csv: the probe's mode, eval by
  default, in which noisy BN adds no noise) and, below, the training-mode drift of the probed units'
  means since the first measurement (the running sum of ics_distribution.csv's mean_shift: what the
  next layer sees during training, noise included). One run (the lowest finished seed), as the paper.
- `<exp>_ics_gradient.png` (Fig. 3 style): gradient ICS l2_diff (log scale) and cosine over training,
  for a few layers and the average over layers. The first layer is left out of every average and
  table: it has no earlier layer, so its G' is G by definition (l2 0, cosine 1).
- `<exp>_landscape.png` (Fig. 4 style): the loss band (loss_min..loss_max along the gradient), the
  gradient predictiveness (grad_diff_min..grad_diff_max) and the effective beta-smoothness.
- `<exp>_ics_distribution.png`: Ioffe's distribution shift (ics_distribution.csv, per layer the mean
  over probed units of |mean_shift|, |log std_ratio| and the Wasserstein-1 distance) next to the
  gradient ICS, over training (averaged over layers) and per layer (averaged over measured steps).
- `<exp>_table.md` / `<exp>_table.csv`: per variant, mean +- std over seeds of: final and best test
  accuracy; gradient ICS l2 and cosine (mean over layers) at the last measured step, and averaged over
  the measured steps (all of them, and those of the second half of training, which leaves out e.g. a
  no-BN net's plateau at chance); the distribution shift; the loss band width, grad_diff_max and
  beta-smoothness (same two averages); each measurement's cost in ms per call (summary.json) and the
  measurements' share of the run's wall time. `<exp>_layers.csv` (and the .md's last table): the
  per-layer gradient ICS at the last measured step.

A run that lacks a measurement a figure needs is an error (MissingMeasurementError) naming the file and
the `measure.<name>.every` to set; with allow_missing=True that figure is skipped with a note instead.
"""

from __future__ import annotations

import csv
import math
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, StrMethodFormatter

from bn_repro.analysis.figures import PNG_DPI, NoRunsError, Report, RunData, load_all
from bn_repro.analysis.runs_table import flatten
from bn_repro.records.run_files import METRICS_FILE, SUMMARY_FILE, measurement_file

__all__ = [
    "MEASUREMENTS",
    "MissingMeasurementError",
    "NoRunsError",
    "Variant",
    "collect_runs",
    "make_santurkar_figures",
    "table_rows",
    "variants_of",
]

MEASUREMENTS = ("activations", "ics_gradient", "ics_distribution", "landscape")
# Settings besides the norm and the lr that change what a curve means (never merged over).
SPLIT_SETTINGS = ("optim.", "model.", "data.batch_size", "data.augment", "data.name", "trainer.max_steps")
NORM_ORDER = ("none", "builtin", "custom", "noisy_bn")
NORM_COLORS = {"none": "C0", "builtin": "C1", "custom": "C3", "noisy_bn": "C2"}
LR_STYLES = ("-", "--", ":", "-.")
# The ICS layers drawn one by one in the Fig. 3 style figure (besides the average over layers).
ICS_PANELS = 4
MAX_SMALL_LOG_RATIO = 30.0  # a y range spanning more than this factor is drawn on a log scale
# <key>: the mean over all measured steps; <key>_late: over the second half of training (steps >
# max_steps / 2), which leaves out the start (e.g. a no-BN net's plateau at chance).
PER_STEP_KEYS = (
    "ics_l2", "ics_cos", "dist_mean_shift", "dist_log_std_ratio", "dist_wasserstein", "loss_band",
    "grad_diff_max", "beta",
)  # fmt: skip
NUMBER_KEYS = (
    "final_acc", "best_acc", "final_train_acc", "population_acc", "ics_l2_last", "ics_cos_last",
    *(k + suffix for k in PER_STEP_KEYS for suffix in ("", "_late")),
    *(f"{m}_ms_per_call" for m in MEASUREMENTS), "measure_share",
)  # fmt: skip
TABLE_COLUMNS = (
    "experiment", "variant", "norm", "lr", "seeds", "runs", "finished",
    *(f"{k}_{s}" for k in NUMBER_KEYS for s in ("mean", "std")),
)  # fmt: skip
LAYER_COLUMNS = ("experiment", "variant", "layer_index", "layer", "l2_mean", "l2_std", "cos_mean", "cos_std")


class MissingMeasurementError(FileNotFoundError):
    """A run lacks (or has no rows in) a measurement file that a figure or the table needs."""


# ---------------------------------------------------------------------------------------------- grouping


@dataclass
class Variant:
    """The runs of one curve: one norm (and lr, and settings) of one experiment, over seeds."""

    label: str
    norm_kind: str
    lr: float | None
    runs: list[RunData]  # what the curves and the table use
    left_out: list[RunData] = field(default_factory=list)  # not finished, beside finished seeds
    lr_rank: int = 0

    @property
    def finished(self) -> bool:
        return all(not r.stopped_early for r in self.runs)

    @property
    def color(self) -> str:
        return NORM_COLORS.get(self.norm_kind, "C4")

    @property
    def style(self) -> str:
        return LR_STYLES[self.lr_rank % len(LR_STYLES)]

    @property
    def seeds(self) -> list[int]:
        return sorted(r.seed for r in self.runs if r.seed is not None)

    def legend(self) -> str:
        n = len(self.runs)
        text = f"{self.label} ({n} seed{'s' if n != 1 else ''}"
        for run in self.left_out:
            text += f"; seed {run.seed} {run.run.status}, left out"
        return text + ")" if self.finished else f"{text}), not finished"

    def typical_run(self) -> RunData:
        """The lowest seed: the run drawn where the paper draws one run."""
        return min(self.runs, key=lambda r: r.seed if r.seed is not None else 0)


def _differing(flats: Sequence[dict[str, Any]], keep: Callable[[str], bool]) -> list[str]:
    keys = sorted({k for f in flats for k in f if keep(k)})
    return [k for k in keys if len({repr(f.get(k)) for f in flats}) > 1]


def _lr(run: RunData) -> float | None:
    lr = run.config.get("optim", {}).get("lr")
    return float(lr) if lr is not None else None


def _lr_text(lr: float | None) -> str:
    return "?" if lr is None else f"{lr:g}"


def by_experiment(runs: Sequence[RunData]) -> dict[str, list[RunData]]:
    groups: dict[str, list[RunData]] = {}
    for run in runs:
        groups.setdefault(run.experiment_name, []).append(run)
    return dict(sorted(groups.items()))


def variants_of(runs: Sequence[RunData]) -> list[Variant]:
    """The runs of one experiment by variant (module docstring), in the order no BN, BN, noisy BN, others,
    each by lr."""
    flats = {id(r): flatten(r.config) for r in runs}
    several_lrs = len({_lr(r) for r in runs}) > 1
    others = _differing(list(flats.values()), lambda k: k.startswith(SPLIT_SETTINGS) and k != "optim.lr")
    # A norm's own options (e.g. noisy BN's ramp_steps) split the runs of that norm only.
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_kind.setdefault(run.norm_kind, []).append(flats[id(run)])
    norm_keys = {
        kind: _differing(fs, lambda k: k.startswith("norm.") and k != "norm.kind")
        for kind, fs in by_kind.items()
    }
    groups: dict[tuple, list[RunData]] = {}
    for run in runs:
        flat = flats[id(run)]
        settings = tuple(f"{k}={flat.get(k)}" for k in [*others, *norm_keys[run.norm_kind]])
        groups.setdefault((run.norm_kind, _lr(run), settings), []).append(run)
    lrs = sorted({lr for _, lr, _ in groups if lr is not None})
    variants = []
    for (kind, lr, settings), group in groups.items():
        label = group[0].norm_label + (f", lr {_lr_text(lr)}" if several_lrs else "")
        if settings:
            label += " [" + ", ".join(settings) + "]"
        finished = [r for r in group if not r.stopped_early]
        variants.append(
            Variant(
                label=label,
                norm_kind=kind,
                lr=lr,
                runs=sorted(finished or group, key=lambda r: r.seed if r.seed is not None else 0),
                left_out=[r for r in group if r.stopped_early] if finished else [],
                lr_rank=lrs.index(lr) if lr in lrs else 0,
            )
        )

    def order(v: Variant):
        rank = NORM_ORDER.index(v.norm_kind) if v.norm_kind in NORM_ORDER else len(NORM_ORDER)
        return (rank, v.norm_kind, v.lr if v.lr is not None else math.inf, v.label)

    return sorted(variants, key=order)


# ---------------------------------------------------------------------------------------------- checks


def _cadence_hint(name: str) -> str:
    if name == "activations":
        return "measure.activations.every (the default follows trainer.eval_every; 0 switches it off)"
    return f"measure.{name}.every=N (N > 0; it is 0, off, by default)"


def require(variants: Sequence[Variant], name: str) -> None:
    """Raise MissingMeasurementError when a run the figures use has no rows of measurement `name`."""
    for variant in variants:
        for run in variant.runs:
            if run.measurement(name):
                continue
            path = run.run.run_dir / measurement_file(name)
            if not path.exists():
                raise MissingMeasurementError(
                    f"{run.run.run_dir} ({run.experiment_name}, {variant.label}, seed {run.seed}) has no "
                    f"{measurement_file(name)}: it was trained without the {name} measurement. Train it "
                    f"with {_cadence_hint(name)}, or leave the run out"
                )
            every = run.config.get("measure", {}).get(name, {}).get("every")
            raise MissingMeasurementError(
                f"{path} has no rows (measure.{name}.every={every}, the run stopped at step "
                f"{run.summary.get('steps')}): train longer than the first measured step or lower "
                f"measure.{name}.every"
            )


# ---------------------------------------------------------------------------------------------- series


@dataclass(frozen=True)
class Band:
    """A seed-mean series at the steps every seed has, with the sample std over seeds (0 with one)."""

    steps: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    n: int


def band(series: Sequence[dict[int, float]]) -> Band:
    series = [s for s in series if s]
    if not series:
        return Band(np.array([]), np.array([]), np.array([]), 0)
    steps = sorted(set.intersection(*(set(s) for s in series)))
    values = np.array([[s[t] for t in steps] for s in series], dtype=float)
    with np.errstate(invalid="ignore"):  # a NaN or inf (a dead net's cosine) stays a gap in the curve
        std = values.std(axis=0, ddof=1) if len(series) > 1 else np.zeros(len(steps))
    return Band(np.array(steps), values.mean(axis=0), std, len(series))


def _mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample std over seeds of the values that are numbers (std None with fewer than two)."""
    xs = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if not len(xs):
        return None, None
    if not np.isfinite(xs).all():  # e.g. |log std ratio| of a layer whose units died (std 0)
        return float(xs[~np.isfinite(xs)][0]), None
    return float(xs.mean()), float(xs.std(ddof=1)) if len(xs) > 1 else None


def metric_series(run: RunData, column: str) -> dict[int, float]:
    path = run.run.run_dir / METRICS_FILE
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    series = {}
    for row in rows:
        value = float(row[column]) if row.get(column) not in (None, "") else math.nan
        if not math.isnan(value):
            series[int(row["step"])] = value
    return series


def ics_layers(run: RunData) -> list[str]:
    """ics_gradient's layers in depth order (the order of a step's rows)."""
    return list(dict.fromkeys(r["layer"] for r in run.measurement("ics_gradient")))


def ics_series(run: RunData, column: str, layer: str | None = None) -> dict[int, float]:
    """{step: value} of one layer, or (layer None) the mean over the layers after the first."""
    rows = run.measurement("ics_gradient")
    if layer is not None:
        return {r["step"]: float(r[column]) for r in rows if r["layer"] == layer}
    first = ics_layers(run)[0]
    per_step: dict[int, list[float]] = {}
    for r in rows:
        if r["layer"] != first:
            per_step.setdefault(r["step"], []).append(float(r[column]))
    return {step: float(np.mean(v)) for step, v in per_step.items()}


def ics_profile(run: RunData, column: str, last_only: bool) -> dict[int, float]:
    """{layer index: value} at the last measured step (last_only) or averaged over measured steps."""
    rows = run.measurement("ics_gradient")
    last = max(r["step"] for r in rows)
    index = {layer: i for i, layer in enumerate(ics_layers(run))}
    per_layer: dict[int, list[float]] = {}
    for r in rows:
        if not last_only or r["step"] == last:
            per_layer.setdefault(index[r["layer"]], []).append(float(r[column]))
    return {i: float(np.mean(v)) for i, v in per_layer.items()}


DIST_STATS = ("mean_shift", "log_std_ratio", "wasserstein")
DIST_LABELS = {
    "mean_shift": "|mean shift|",
    "log_std_ratio": "|log std ratio|",
    "wasserstein": "Wasserstein-1",
}


def _dist_value(row: dict[str, Any], stat: str) -> float:
    if stat == "mean_shift":
        return abs(float(row["mean_shift"]))
    if stat == "log_std_ratio":
        ratio = float(row["std_ratio"])
        return abs(math.log(ratio)) if ratio > 0 else math.inf
    return float(row["wasserstein"])


def dist_layers(run: RunData) -> list[str]:
    return list(dict.fromkeys(r["layer"] for r in run.measurement("ics_distribution")))


def dist_series(run: RunData, stat: str, layer: str | None = None) -> dict[int, float]:
    """{step: mean over units (and layers, when layer is None) of the stat}."""
    per_step: dict[int, list[float]] = {}
    for r in run.measurement("ics_distribution"):
        if layer is None or r["layer"] == layer:
            per_step.setdefault(r["step"], []).append(_dist_value(r, stat))
    return {step: float(np.mean(v)) for step, v in per_step.items()}


def dist_profile(run: RunData, stat: str) -> dict[int, float]:
    """{probed layer index: mean over units and measured steps of the stat}."""
    index = {layer: i for i, layer in enumerate(dist_layers(run))}
    per_layer: dict[int, list[float]] = {}
    for r in run.measurement("ics_distribution"):
        per_layer.setdefault(index[r["layer"]], []).append(_dist_value(r, stat))
    return {i: float(np.mean(v)) for i, v in per_layer.items()}


def landscape_series(run: RunData, column: str) -> dict[int, float]:
    """{step: value}; column `loss_band` is loss_max - loss_min."""
    rows = run.measurement("landscape")
    if column == "loss_band":
        return {r["step"]: float(r["loss_max"]) - float(r["loss_min"]) for r in rows}
    return {r["step"]: float(r[column]) for r in rows}


def _finite_mean(values: Iterable[float]) -> float | None:
    xs = [v for v in values if not math.isnan(v)]
    return float(np.mean(xs)) if xs else None


# ---------------------------------------------------------------------------------------------- drawing


def _save(fig: Figure, out_dir: Path, stem: str, report: Report) -> None:
    path = out_dir / f"{stem}.png"
    fig.savefig(path, dpi=PNG_DPI, bbox_inches="tight")
    report.written.append(path)


def _steps_axis(ax, label: bool = True) -> None:
    """Thousands separators; the label only where asked (a panel above another with the same x has none)."""
    if label:
        ax.set_xlabel("training steps")
    ax.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    ax.grid(alpha=0.3)


def _nonlinearity(run: RunData) -> str:
    """What the probed values feed: the model's activation, or (a linear net) the next layer."""
    model = run.config.get("model", {})
    if model.get("name") == "linear_deep":
        return "input to the next layer (linear net: no nonlinearity)"
    return f"input to the {model.get('activation', 'nonlinearity')}"


def _log_if_wide(ax, values: Iterable[float]) -> None:
    """A log y scale when the positive values span more than MAX_SMALL_LOG_RATIO. Values <= 0 (exact
    zeros: a dead net's gradients) cannot be drawn there; the panel then says so."""
    xs = np.array([v for v in values if np.isfinite(v)], dtype=float)
    positive = xs[xs > 0]
    if len(positive) and positive.max() / positive.min() > MAX_SMALL_LOG_RATIO:
        ax.set_yscale("log")
        if (xs <= 0).any():
            ax.text(0.02, 0.02, "values <= 0 not drawn (log scale)", transform=ax.transAxes, fontsize=7,
                    color="gray")  # fmt: skip


def _draw_band(
    ax, variant: Variant, b: Band, scale: float = 1.0, label: str | None = None, high: float | None = None
) -> list[float]:
    """The seed mean (line) and +- one std (shaded, at most `high`: a cosine's band stops at 1); returns
    the values drawn (for the scale choice)."""
    if not b.n:
        return []
    mean, std = scale * b.mean, scale * b.std
    ax.plot(b.steps, mean, color=variant.color, ls=variant.style, lw=1.5, label=label or variant.legend())
    if b.n > 1:
        low = mean - std
        # On a log scale a band reaching 0 or below would hide the line: clip it to the line's scale.
        low = np.where(low > 0, low, np.where(mean > 0, mean / 10, low))
        top = mean + std if high is None else np.minimum(mean + std, high)
        ax.fill_between(b.steps, low, top, color=variant.color, alpha=0.18, lw=0)
    return [*mean, *(mean + std)]


def _variant_legend(fig: Figure, ax) -> None:
    """One legend of the variants for the whole figure, below the panels (it hides no curve)."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 3), fontsize=8)


def _title(exp: str, variants: Sequence[Variant]) -> str:
    run = variants[0].runs[0]
    dataset = run.dataset
    model = run.config.get("model", {}).get("name", "")
    seeds = sorted({s for v in variants for s in v.seeds})
    seed_text = f"seeds {seeds[0]}-{seeds[-1]}" if len(seeds) > 1 else f"seed {seeds[0]}" if seeds else ""
    return f"{exp}: {model + ', ' if model else ''}{dataset}, {run.max_steps:,} steps, {seed_text}"


def plot_curves(exp: str, variants: Sequence[Variant], out_dir: Path, report: Report) -> None:
    fig = Figure(figsize=(11.0, 7.4), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True)
    panels = (
        (axes[0, 0], "train_loss", "train loss (training mode, running mean)", 1.0),
        (axes[0, 1], "test_loss", "test loss (eval mode)", 1.0),
        (axes[1, 0], "train_acc", "train accuracy (%, training mode)", 100.0),
        (axes[1, 1], "test_acc", "test accuracy (%, eval mode)", 100.0),
    )
    for ax, column, ylabel, scale in panels:
        drawn = []
        for v in variants:
            drawn += _draw_band(ax, v, band([metric_series(r, column) for r in v.runs]), scale)
        if scale == 1.0:
            _log_if_wide(ax, drawn)
        ax.set_ylabel(ylabel)
        _steps_axis(ax, label=ax in axes[1])
    _variant_legend(fig, axes[1, 1])
    fig.suptitle(f"{_title(exp, variants)}\nloss and accuracy: mean over seeds, band +- 1 std", fontsize=10)
    _save(fig, out_dir, f"{exp}_curves", report)


def _activation_layer(run: RunData, layer: str | None) -> str:
    layers = list(dict.fromkeys(r["layer"] for r in run.activations))
    if layer is None:
        return layers[-1]
    if layer not in layers:
        raise ValueError(f"layer {layer!r} is not probed in {run.run.run_dir}; probed: {', '.join(layers)}")
    return layer


def plot_activations(
    exp: str, variants: Sequence[Variant], out_dir: Path, report: Report, layer: str | None = None
) -> None:
    with_drift = all(r.measurement("ics_distribution") for v in variants for r in [v.typical_run()])
    rows = 2 if with_drift else 1
    fig = Figure(figsize=(max(3.8 * len(variants), 7.0), 3.2 * rows + 0.8), layout="constrained")
    axes = fig.subplots(rows, len(variants), sharex=True, sharey="row", squeeze=False)
    described = set()
    for col, v in enumerate(variants):
        run = v.typical_run()
        name = _activation_layer(run, layer)
        unit = next(r["unit"] for r in run.activations if r["layer"] == name)
        described.add((name, unit))
        probe = sorted(
            (r for r in run.activations if r["layer"] == name and r["unit"] == unit), key=lambda r: r["step"]
        )
        steps = [r["step"] for r in probe]
        ax = axes[0, col]
        p15, p50, p85 = ([r[k] for r in probe] for k in ("p15", "p50", "p85"))
        ax.fill_between(steps, p15, p85, color=v.color, alpha=0.25, lw=0, label="15-85th percentile")
        ax.plot(steps, p50, color=v.color, lw=1.5, label="median")
        ax.set_title(f"{v.label}, seed {run.seed}", fontsize=9)
        _steps_axis(ax, label=not with_drift)
        if with_drift:
            ax = axes[1, col]
            every = run.config.get("measure", {}).get("ics_distribution", {}).get("every", 0)
            rows_ = [r for r in run.measurement("ics_distribution") if r["layer"] == name]
            units = list(dict.fromkeys(r["unit"] for r in rows_))
            for u in units:
                series = sorted((r["step"], r["mean_shift"]) for r in rows_ if r["unit"] == u)
                start = max(series[0][0] - (every or 0), 0)
                xs = [start, *(s for s, _ in series)]
                ys = np.concatenate([[0.0], np.cumsum([m for _, m in series])])
                main = u == unit
                ax.plot(xs, ys, color=v.color if main else "gray", lw=1.5 if main else 0.7,
                        alpha=1.0 if main else 0.6, label=f"unit {u}" if main else None)  # fmt: skip
            ax.plot([], [], color="gray", lw=0.7, label="other probed units")
            ax.axhline(0, color="black", lw=0.5)
            _steps_axis(ax)
    probe_cfg = variants[0].runs[0].config.get("probe", {})
    nonlinearity = _nonlinearity(variants[0].runs[0]).replace(" (", "\n(")
    axes[0, 0].set_ylabel(f"{nonlinearity}\n(probe: {probe_cfg.get('mode', '?')} mode)", fontsize=8)
    axes[0, -1].legend(fontsize=8, loc="best")
    if with_drift:
        mode = variants[0].runs[0].config.get("measure", {}).get("ics_distribution", {}).get("mode", "?")
        axes[1, 0].set_ylabel(f"mean now - mean at the first\nmeasurement ({mode} mode)", fontsize=8)
        axes[1, -1].legend(fontsize=8, loc="best")
    where = "; ".join(f"layer {n}, unit {u}" for n, u in sorted(described))
    text = f"{probe_cfg.get('num_examples', '?')} test images"
    lower = ", below: drift of the probed units' means (running sum of ics_distribution's mean_shift)"
    fig.suptitle(
        f"Fig. 2 style: {_title(exp, variants)}\n{where}: 15/50/85th percentiles over {text}"
        + (f";\n{lower.removeprefix(', ')}" if with_drift else ""),
        fontsize=10,
    )
    _save(fig, out_dir, f"{exp}_activations", report)


def _panel_layers(layers: Sequence[str], k: int = ICS_PANELS) -> list[str]:
    """Up to k layers after the first, evenly spread, the last included."""
    rest = list(layers[1:])
    if len(rest) <= k:
        return rest
    picks = np.unique(np.round(np.linspace(0, len(rest) - 1, k)).astype(int))
    return [rest[i] for i in picks]


def plot_ics_gradient(exp: str, variants: Sequence[Variant], out_dir: Path, report: Report) -> None:
    layers = ics_layers(variants[0].runs[0])
    panels: list[str | None] = [*_panel_layers(layers), None]
    fig = Figure(figsize=(3.4 * len(panels), 6.4), layout="constrained")
    axes = fig.subplots(2, len(panels), sharex=True, squeeze=False)
    for col, layer in enumerate(panels):
        for row, column in enumerate(("l2_diff", "cosine")):
            ax = axes[row, col]
            drawn = []
            for v in variants:
                high = 1.0 if column == "cosine" else None
                drawn += _draw_band(ax, v, band([ics_series(r, column, layer) for r in v.runs]), high=high)
            if column == "l2_diff":
                _log_if_wide(ax, drawn)
            else:
                ax.axhline(1.0, color="black", lw=0.5, ls=":")
            _steps_axis(ax, label=row == 1)
            if row == 0:
                name = (
                    f"mean over layers 2-{len(layers)}"
                    if layer is None
                    else f"layer {layers.index(layer) + 1}: {layer}"
                )
                ax.set_title(name, fontsize=9)
    axes[0, 0].set_ylabel("||G - G'||_2")
    axes[1, 0].set_ylabel("cos(G, G')")
    _variant_legend(fig, axes[1, -1])
    fig.suptitle(
        f"Fig. 3 style: {_title(exp, variants)}\ngradient ICS (Santurkar et al. Def. 2.1): G' = layer's "
        "gradient after the earlier layers' update; mean over seeds, band +- 1 std",
        fontsize=10,
    )
    _save(fig, out_dir, f"{exp}_ics_gradient", report)


def plot_landscape(exp: str, variants: Sequence[Variant], out_dir: Path, report: Report) -> None:
    fig = Figure(figsize=(15.0, 4.6), layout="constrained")
    axes = fig.subplots(1, 3, sharex=True)
    ranges = (
        (axes[0], "loss_min", "loss_max", "loss along the gradient"),
        (axes[1], "grad_diff_min", "grad_diff_max", "||grad L(theta - eta g) - g||_2"),
    )
    for ax, low, high, ylabel in ranges:
        drawn = []
        for v in variants:
            lo = band([landscape_series(r, low) for r in v.runs])
            hi = band([landscape_series(r, high) for r in v.runs])
            if not lo.n:
                continue
            ax.fill_between(lo.steps, lo.mean, hi.mean, color=v.color, alpha=0.3, lw=0)
            ax.plot(lo.steps, lo.mean, color=v.color, ls=v.style, lw=0.8)
            ax.plot(hi.steps, hi.mean, color=v.color, ls=v.style, lw=0.8, label=v.legend())
            drawn += [*lo.mean, *hi.mean]
        if low != "loss_min":  # the loss band stays linear (as the paper's): its width is the point
            _log_if_wide(ax, drawn)
        ax.set_ylabel(ylabel)
        _steps_axis(ax)
    axes[0].set_title("(a) loss landscape: min-max over the step sizes", fontsize=9)
    axes[1].set_title("(b) gradient predictiveness: min-max over the step sizes", fontsize=9)
    drawn = []
    for v in variants:
        drawn += _draw_band(axes[2], v, band([landscape_series(r, "beta_smoothness") for r in v.runs]))
    _log_if_wide(axes[2], drawn)
    axes[2].set_ylabel("max ||grad change|| / ||parameter change||")
    axes[2].set_title("(c) effective beta-smoothness: mean over seeds, +- 1 std", fontsize=9)
    _steps_axis(axes[2])
    _variant_legend(fig, axes[0])
    cfg = variants[0].runs[0].config.get("measure", {}).get("landscape", {})
    sizes = cfg.get("step_sizes") or []
    what = "x the run's lr" if cfg.get("relative", True) else "(absolute)"
    size_text = f"step sizes {min(sizes):g}..{max(sizes):g} {what}" if sizes else "the configured step sizes"
    fig.suptitle(
        f"Fig. 4 style: {_title(exp, variants)}\nalong -g on the step's batch, {size_text}; "
        "(a), (b): band between the seed means of the min and the max",
        fontsize=10,
    )
    _save(fig, out_dir, f"{exp}_landscape", report)


def plot_ics_distribution(exp: str, variants: Sequence[Variant], out_dir: Path, report: Report) -> None:
    with_gradient = all(r.measurement("ics_gradient") for v in variants for r in v.runs)
    quantities: list[tuple[str, str]] = [("dist", s) for s in DIST_STATS]
    if with_gradient:
        quantities += [("grad", "l2_diff"), ("grad", "cosine")]
    fig = Figure(figsize=(3.5 * len(quantities), 7.0), layout="constrained")
    axes = fig.subplots(2, len(quantities), squeeze=False)
    for col, (kind, stat) in enumerate(quantities):
        top, bottom = axes[0, col], axes[1, col]
        drawn_top, drawn_bottom = [], []
        for v in variants:
            if kind == "dist":
                over_time = band([dist_series(r, stat) for r in v.runs])
                per_layer = band([dist_profile(r, stat) for r in v.runs])
            else:
                over_time = band([ics_series(r, stat) for r in v.runs])
                profiles = [ics_profile(r, stat, last_only=False) for r in v.runs]
                per_layer = band([{i: x for i, x in p.items() if i > 0} for p in profiles])
            high = 1.0 if stat == "cosine" else None
            drawn_top += _draw_band(top, v, over_time, high=high)
            if per_layer.n:
                per_layer = Band(per_layer.steps + 1, per_layer.mean, per_layer.std, per_layer.n)
                drawn_bottom += _draw_band(bottom, v, per_layer, high=high)
                bottom.plot(per_layer.steps, per_layer.mean, color=v.color, ls="none", marker="o", ms=3)
        if stat == "cosine":
            for ax in (top, bottom):
                ax.axhline(1.0, color="black", lw=0.5, ls=":")
        else:
            _log_if_wide(top, drawn_top)
            _log_if_wide(bottom, drawn_bottom)
        _steps_axis(top)
        bottom.set_xlabel("layer (depth order, 1 = first)")
        bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
        bottom.grid(alpha=0.3)
        if kind == "dist":
            name = f"Ioffe: {DIST_LABELS[stat]}"
            top.set_title(f"{name}\nmean over units and probed layers", fontsize=9)
            bottom.set_title(f"{name}\nper probed layer, mean over measured steps", fontsize=9)
        else:
            name = "Santurkar: ||G - G'||_2" if stat == "l2_diff" else "Santurkar: cos(G, G')"
            top.set_title(f"{name}\nmean over layers 2..L", fontsize=9)
            bottom.set_title(f"{name}\nper weight layer, mean over measured steps", fontsize=9)
    _variant_legend(fig, axes[0, -1])
    mode = variants[0].runs[0].config.get("measure", {}).get("ics_distribution", {}).get("mode", "?")
    fig.suptitle(
        f"{_title(exp, variants)}\ntwo notions of ICS: the change of each probed layer's input distribution "
        f"between measurements ({mode} mode, fixed probe set) and the gradient ICS; "
        "mean over seeds, band +- 1 std",
        fontsize=10,
    )
    _save(fig, out_dir, f"{exp}_ics_distribution", report)


# ---------------------------------------------------------------------------------------------- tables


def _run_numbers(run: RunData) -> dict[str, float | None]:
    """One run's table numbers (None where the run lacks the measurement)."""
    s = run.summary
    out: dict[str, float | None] = {
        "final_acc": s.get("final_test_acc"),
        "best_acc": s.get("best_test_acc"),
        # Algorithm 2's population statistics (noisy BN's recomputed without its noise): the test
        # accuracy of the network inference runs, beside the moving averages' (final_acc).
        "population_acc": s.get("final_test_acc_population_stats"),
    }
    # Training mode (noisy BN's noise, batch statistics): the running mean at the last evaluation.
    train_acc = metric_series(run, "train_acc")
    out["final_train_acc"] = train_acc[max(train_acc)] if train_acc else None
    half = run.max_steps / 2

    def put(key: str, series: dict[int, float]) -> None:
        out[key] = _finite_mean(series.values())
        out[f"{key}_late"] = _finite_mean(v for step, v in series.items() if step > half)

    if run.measurement("ics_gradient"):
        for key, column in (("ics_l2", "l2_diff"), ("ics_cos", "cosine")):
            last = ics_profile(run, column, last_only=True)
            out[f"{key}_last"] = _finite_mean(v for i, v in last.items() if i > 0)
            put(key, ics_series(run, column))
    if run.measurement("ics_distribution"):
        for stat in DIST_STATS:
            put(f"dist_{stat}", dist_series(run, stat))
    if run.measurement("landscape"):
        for key, column in (("loss_band", "loss_band"), ("grad_diff_max", "grad_diff_max"),
                            ("beta", "beta_smoothness")):  # fmt: skip
            put(key, landscape_series(run, column))
    ms = s.get("measure_ms_per_call") or {}
    for m in MEASUREMENTS:
        out[f"{m}_ms_per_call"] = ms.get(m)
    spent, wall = s.get("measure_time_s") or {}, s.get("wall_time_s")
    out["measure_share"] = sum(spent.values()) / wall if spent and wall else None
    return out


def table_rows(exp: str, variants: Sequence[Variant]) -> list[dict[str, Any]]:
    """One row per variant (TABLE_COLUMNS): mean and sample std over its seeds."""
    rows = []
    for v in variants:
        per_run = [_run_numbers(r) for r in v.runs]
        row: dict[str, Any] = {
            "experiment": exp,
            "variant": v.label,
            "norm": v.norm_kind,
            "lr": v.lr,
            "seeds": " ".join(map(str, v.seeds)),
            "runs": len(v.runs) + len(v.left_out),
            "finished": sum(not r.stopped_early for r in v.runs),
        }
        for key in NUMBER_KEYS:
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std(n.get(key) for n in per_run)
        rows.append(row)
    return rows


def layer_rows(exp: str, variants: Sequence[Variant]) -> list[dict[str, Any]]:
    """Per variant and weight layer: gradient ICS at the last measured step, mean and std over seeds."""
    rows = []
    for v in variants:
        runs = [r for r in v.runs if r.measurement("ics_gradient")]
        if not runs:
            continue
        layers = ics_layers(runs[0])
        l2 = [ics_profile(r, "l2_diff", last_only=True) for r in runs]
        cos = [ics_profile(r, "cosine", last_only=True) for r in runs]
        for i, layer in enumerate(layers):
            l2_mean, l2_std = _mean_std(p.get(i) for p in l2)
            cos_mean, cos_std = _mean_std(p.get(i) for p in cos)
            rows.append({
                "experiment": exp, "variant": v.label, "layer_index": i + 1, "layer": layer,
                "l2_mean": l2_mean, "l2_std": l2_std, "cos_mean": cos_mean, "cos_std": cos_std,
            })  # fmt: skip
    return rows


def _num(mean: float | None, std: float | None, digits: int = 3) -> str:
    if mean is None:
        return "-"
    text = f"{mean:.{digits}g}"
    return text + (f" +- {std:.2g}" if std is not None else "")


def _pct(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{100 * mean:.2f}%" + (f" +- {100 * std:.2f}" if std is not None else "")


def _cos(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.4f}" + (f" +- {std:.4f}" if std is not None else "")


def _md_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(cells) + " |" for cells in body),
        "",
    ]


def write_table(exp: str, variants: Sequence[Variant], out_dir: Path, report: Report) -> list[dict[str, Any]]:
    rows = table_rows(exp, variants)
    by_layer = layer_rows(exp, variants)

    def m(row, key, fmt=_num):
        return fmt(row[f"{key}_mean"], row[f"{key}_std"])

    lines = [f"**{_title(exp, variants)}**", ""]
    lines += [
        "Training (test accuracy in eval mode, final: at the last evaluation, best: over evaluations; "
        "train accuracy: training mode, noisy BN's noise included, at the last evaluation; population "
        "stats: the final test accuracy with Algorithm 2's statistics from 100 training batches, recomputed "
        "without noisy BN's noise):",
        "",
    ]
    lines += _md_table(
        ("variant", "seeds", "finished", "final test acc", "best test acc", "final train acc",
         "test acc, population stats"),
        [(r["variant"], r["seeds"], f"{r['finished']}/{r['runs']}", m(r, "final_acc", _pct),
          m(r, "best_acc", _pct), m(r, "final_train_acc", _pct), m(r, "population_acc", _pct)) for r in rows],
    )  # fmt: skip
    lines += [
        "Internal covariate shift. Gradient ICS (ics_gradient.csv): ||G - G'||_2 and cos(G, G') averaged "
        "over the weight layers after the first, at the last measured step and over the measured steps of "
        "the second half of training (2nd half). Distribution shift (ics_distribution.csv, Ioffe's sense): "
        "per probed unit between consecutive measurements, |mean shift|, |log std ratio| and the "
        "Wasserstein-1 distance, averaged over units, layers and the measured steps of the 2nd half "
        "(means over all measured steps: the .csv).",
        "",
    ]
    lines += _md_table(
        ("variant", "l2 (last)", "cosine (last)", "l2 (2nd half)", "cosine (2nd half)", "|mean shift|",
         "|log std ratio|", "Wasserstein-1"),
        [(r["variant"], m(r, "ics_l2_last"), m(r, "ics_cos_last", _cos), m(r, "ics_l2_late"),
          m(r, "ics_cos_late", _cos), m(r, "dist_mean_shift_late"), m(r, "dist_log_std_ratio_late"),
          m(r, "dist_wasserstein_late")) for r in rows],
    )  # fmt: skip
    lines += [
        "Loss landscape along the gradient (landscape.csv): the loss band (loss_max - loss_min), the "
        "gradient predictiveness (grad_diff_max: the largest ||grad change||) and the effective "
        "beta-smoothness, means over all measured steps and over those of the 2nd half of training.",
        "",
    ]
    lines += _md_table(
        ("variant", "loss band (all)", "loss band (2nd half)", "grad_diff_max (all)",
         "grad_diff_max (2nd half)", "beta (all)", "beta (2nd half)"),
        [(r["variant"], m(r, "loss_band"), m(r, "loss_band_late"), m(r, "grad_diff_max"),
          m(r, "grad_diff_max_late"), m(r, "beta"), m(r, "beta_late")) for r in rows],
    )  # fmt: skip
    lines += [
        "Measurement cost (summary.json's measure_ms_per_call: ms per measured step, one CPU thread where "
        "the runs were made) and the measurements' share of the run's wall time:",
        "",
    ]
    lines += _md_table(
        ("variant", *(f"{name} ms/call" for name in MEASUREMENTS), "share of wall time"),
        [(r["variant"], *(m(r, f"{name}_ms_per_call") for name in MEASUREMENTS), m(r, "measure_share", _pct))
         for r in rows],
    )  # fmt: skip
    if by_layer:
        labels = [v.label for v in variants if any(x["variant"] == v.label for x in by_layer)]
        layers = list(dict.fromkeys((x["layer_index"], x["layer"]) for x in by_layer))
        cell = {(x["variant"], x["layer_index"]): x for x in by_layer}
        body = []
        for index, layer in layers:
            cells = [f"{index}: {layer}"]
            for label in labels:
                x = cell.get((label, index))
                cells += (
                    ["-", "-"]
                    if x is None
                    else [_num(x["l2_mean"], x["l2_std"]), _cos(x["cos_mean"], x["cos_std"])]
                )
            body.append(cells)
        lines += [
            "Gradient ICS per weight layer at the last measured step (layer 1: G' = G by definition):",
            "",
        ]
        lines += _md_table(("layer", *(f"{label}: {k}" for label in labels for k in ("l2", "cosine"))), body)
    lines += ["Mean +- sample std over seeds (no std with one seed)."]
    md_path, csv_path, layer_path = (out_dir / f"{exp}_{n}" for n in ("table.md", "table.csv", "layers.csv"))
    md_path.write_text("\n".join(lines) + "\n")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=TABLE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    report.written += [md_path, csv_path]
    if by_layer:
        with open(layer_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=LAYER_COLUMNS)
            writer.writeheader()
            writer.writerows(by_layer)
        report.written.append(layer_path)
    return rows


# ---------------------------------------------------------------------------------------------- entry

# Each figure and the measurements it needs (all of them, or it is skipped / an error).
FIGURES: tuple[tuple[str, Callable, tuple[str, ...]], ...] = (
    ("curves", plot_curves, ()),
    ("activations", plot_activations, ("activations",)),
    ("ics_gradient", plot_ics_gradient, ("ics_gradient",)),
    ("landscape", plot_landscape, ("landscape",)),
    ("ics_distribution", plot_ics_distribution, ("ics_distribution",)),
)


def make_santurkar_figures(
    paths: Iterable[str | Path],
    out_dir: str | Path,
    allow_missing: bool = False,
    layer: str | None = None,
    experiments: Sequence[str] | None = None,
) -> Report:
    """The figures and tables of every experiment in `paths` (run dirs, or folders searched for them).

    Raises NoRunsError without runs, MissingMeasurementError when a run lacks a measurement a figure
    needs (allow_missing: skip that figure with a note); `layer`: the probed layer of the activations
    figure (default: the last one); `experiments`: only these experiment names.
    """
    runs = load_all(paths)
    groups = by_experiment(runs)
    if experiments:
        unknown = sorted(set(experiments) - set(groups))
        if unknown:
            raise NoRunsError(
                f"no runs of experiment {', '.join(unknown)} found; found: {', '.join(groups) or 'none'}"
            )
        groups = {k: v for k, v in groups.items() if k in experiments}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = Report()
    planned = []
    for exp, group in groups.items():
        variants = variants_of(group)
        figures = []
        for name, plot, needs in FIGURES:
            try:  # every check before any drawing: a missing file fails fast
                for need in needs:
                    require(variants, need)
            except MissingMeasurementError as error:
                if not allow_missing:
                    raise
                report.notes.append(f"{exp}_{name}.png skipped: {error}")
                continue
            if name == "activations":
                for v in variants:
                    _activation_layer(v.typical_run(), layer)  # an unknown layer fails before drawing
            figures.append((name, plot))
        planned.append((exp, variants, figures))
    for exp, variants, figures in planned:
        for v in variants:
            for run in v.left_out:
                report.notes.append(
                    f"{run.run.run_dir}: {exp}, {v.label}, seed {run.seed} is {run.run.status} at step "
                    f"{run.summary.get('steps')}; left out (the variant has finished seeds)"
                )
            if not v.finished:
                report.notes.append(f"{exp}, {v.label}: no finished run; drawn from unfinished ones")
        for name, plot in figures:
            if name == "activations":
                plot(exp, variants, out_dir, report, layer=layer)
            else:
                plot(exp, variants, out_dir, report)
        write_table(exp, variants, out_dir, report)
    return report


# ---------------------------------------------------------------------------------------------- results

COPIED_FILES = (SUMMARY_FILE, METRICS_FILE, *(measurement_file(m) for m in MEASUREMENTS))
MAX_LOG_BYTES = 50_000
# A diverged run is a result (e.g. no BN at a large lr); a running or failed one is not (yet).
KEPT_STATUSES = ("finished", "diverged")


def run_name(run: RunData, with_lr: bool) -> str:
    """<norm>[_lr<lr>]_seed<seed>: the name of a run's dir under results/<experiment_name>/."""
    return f"{run.norm_kind}" + (f"_lr{_lr_text(_lr(run))}" if with_lr else "") + f"_seed{run.seed}"


def collect_runs(paths: Iterable[str | Path], dest: str | Path) -> tuple[list[Path], list[str]]:
    """Copy each finished or diverged run to dest/<experiment_name>/<norm>[_lr<lr>]_seed<seed>/ (lr when
    the experiment has runs at several): summary.json, metrics.csv, the measurement CSVs and a train.log
    under 50 KB. Running and failed runs are skipped (named in the notes); two runs that would take one
    name are an error. Returns (dirs written, notes)."""
    runs = load_all(paths)
    dest = Path(dest)
    notes, plan = [], {}
    for exp, group in by_experiment(runs).items():
        with_lr = len({_lr(r) for r in group}) > 1
        for run in group:
            if run.run.status not in KEPT_STATUSES:
                notes.append(
                    f"{run.run.run_dir}: {run.run.status} at step {run.summary.get('steps')}, not copied"
                )
                continue
            target = dest / exp / run_name(run, with_lr)
            if target in plan:
                raise ValueError(
                    f"{plan[target].run.run_dir} and {run.run.run_dir} would both be copied to {target}: "
                    "they differ in a setting the name does not carry; copy them by hand"
                )
            plan[target] = run
    for target, run in plan.items():
        target.mkdir(parents=True, exist_ok=True)
        for name in COPIED_FILES:
            if (run.run.run_dir / name).exists():
                shutil.copy2(run.run.run_dir / name, target / name)
        log = run.run.run_dir / "train.log"
        if log.exists() and log.stat().st_size < MAX_LOG_BYTES:
            shutil.copy2(log, target / "train.log")
    return sorted(plan), notes
