"""Santurkar et al. 2018 ("How Does Batch Normalization Help Optimization?", arXiv 1805.11604): figures
and tables from run dirs that carry the measurements of bn_repro/measures/ (local files only, headless).

    python scripts/santurkar_figures.py /tmp/res/santurkar_vgg /tmp/res/santurkar_vgg_noisy --out figures
    report = make_santurkar_figures(["multirun/"], "figures")      # the same from Python

Runs are grouped by `experiment_name` (one set of figures and one table each; the files are listed in
results/README.md's Santurkar section, each table's text says what its numbers are). Within an
experiment, a variant is the norm's registry label, plus the learning rate when the experiment's runs
differ in it, plus any other setting that differs (SPLIT_SETTINGS, norm options within a norm): seeds of
a variant are merged, variants never are. Curves are the mean over the variant's seeds at the steps all of
them share, with a band of +- one sample std over seeds. Runs that did not finish are left out of a
variant that has finished runs (each named in the report's notes); a variant with none is drawn from
what its runs have, labelled "not finished". The first ics_gradient layer is left out of every average
and table: it has no earlier layer, so its G' is G by definition (l2 0, cosine 1).

A run that lacks a measurement a figure needs is an error (MissingMeasurementError) naming the file and
the `measure.<name>.every` to set; with allow_missing=True that figure is skipped with a note instead.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from bn_repro.analysis.figures import NoRunsError, Report, RunData, differing, load_all, unit_series
from bn_repro.analysis.plots import save, steps_axis
from bn_repro.analysis.runs_table import flatten
from bn_repro.analysis.stats import numpy_mean_std
from bn_repro.analysis.tables import markdown_table, spread, write_csv
from bn_repro.records.run_files import METRICS_FILE, SUMMARY_FILE, measurement_file, read_csv

__all__ = ["MEASUREMENTS", "MissingMeasurementError", "NoRunsError", "Variant", "collect_runs",
           "make_santurkar_figures", "table_rows", "variants_of"]  # fmt: skip

MEASUREMENTS = ("activations", "ics_gradient", "ics_distribution", "landscape")
# Settings besides the norm and the lr that change what a curve means (never merged over).
SPLIT_SETTINGS = ("optim.", "model.", "data.batch_size", "data.augment", "data.name", "trainer.max_steps")
NORM_ORDER = ("none", "builtin", "custom", "noisy_bn")
NORM_COLORS = {"none": "C0", "builtin": "C1", "custom": "C3", "noisy_bn": "C2"}
LR_STYLES = ("-", "--", ":", "-.")
# The ICS layers drawn one by one in the Fig. 3 style figure (besides the average over layers).
ICS_PANELS = 4
MAX_SMALL_LOG_RATIO = 30.0  # a y range spanning more than this factor is drawn on a log scale
DIST_STATS = ("mean_shift", "log_std_ratio", "wasserstein")
# The table's keys averaged over measured steps and the quantity (SOURCES) each averages. <key>: the mean
# over all measured steps; <key>_late: over the second half of training (steps > max_steps / 2), which
# leaves out the start (e.g. a no-BN net's plateau at chance).
PER_STEP = {
    "ics_l2": "l2_diff", "ics_cos": "cosine", **{f"dist_{s}": s for s in DIST_STATS},
    "loss_band": "loss_band", "grad_diff_max": "grad_diff_max", "beta": "beta_smoothness",
}  # fmt: skip
NUMBER_KEYS = (
    "final_acc", "best_acc", "final_train_acc", "population_acc", "ics_l2_last", "ics_cos_last",
    *(k + suffix for k in PER_STEP for suffix in ("", "_late")),
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


def _seed_order(run: RunData) -> int:
    return run.seed if run.seed is not None else 0


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
        return min(self.runs, key=_seed_order)


def _lr(run: RunData) -> float | None:
    lr = run.config.get("optim", {}).get("lr")
    return float(lr) if lr is not None else None


def _lr_text(lr: float | None) -> str:
    return "?" if lr is None else f"{lr:g}"


def by_experiment(runs: Sequence[RunData]) -> dict[str, list[RunData]]:
    names = sorted({r.experiment_name for r in runs})
    return {name: [r for r in runs if r.experiment_name == name] for name in names}


def variants_of(runs: Sequence[RunData]) -> list[Variant]:
    """The runs of one experiment by variant (module docstring), in the order no BN, BN, noisy BN, others,
    each by lr."""
    flats = [flatten(r.config) for r in runs]
    several_lrs = len({_lr(r) for r in runs}) > 1
    others = differing(flats, lambda k: k.startswith(SPLIT_SETTINGS) and k != "optim.lr")
    groups: dict[tuple, list[RunData]] = {}
    for run, flat in zip(runs, flats, strict=True):
        # A norm's own options (e.g. noisy BN's ramp_steps) split the runs of that norm only.
        of_norm = [f for r, f in zip(runs, flats, strict=True) if r.norm_kind == run.norm_kind]
        keys = [*others, *differing(of_norm, lambda k: k.startswith("norm.") and k != "norm.kind")]
        settings = tuple(f"{k}={flat.get(k)}" for k in keys)
        groups.setdefault((run.norm_kind, _lr(run), settings), []).append(run)
    lrs = sorted({lr for _, lr, _ in groups if lr is not None})
    variants = []
    for (kind, lr, settings), group in groups.items():
        label = group[0].norm_label + (f", lr {_lr_text(lr)}" if several_lrs else "")
        label += " [" + ", ".join(settings) + "]" if settings else ""
        finished = [r for r in group if not r.stopped_early]
        left_out = [r for r in group if r.stopped_early] if finished else []
        rank = lrs.index(lr) if lr in lrs else 0
        variants.append(Variant(label, kind, lr, sorted(finished or group, key=_seed_order), left_out, rank))

    def order(v: Variant):
        rank = NORM_ORDER.index(v.norm_kind) if v.norm_kind in NORM_ORDER else len(NORM_ORDER)
        return (rank, v.norm_kind, v.lr if v.lr is not None else math.inf, v.label)

    return sorted(variants, key=order)


def require(variants: Sequence[Variant], name: str) -> None:
    """Raise MissingMeasurementError when a run the figures use has no rows of measurement `name`."""
    for variant, run in ((v, r) for v in variants for r in v.runs if not r.measurement(name)):
        path = run.run.run_dir / measurement_file(name)
        if not path.exists():
            hint = (
                "measure.activations.every (the default follows trainer.eval_every; 0 switches it off)"
                if name == "activations"
                else f"measure.{name}.every=N (N > 0; it is 0, off, by default)"
            )
            raise MissingMeasurementError(
                f"{run.run.run_dir} ({run.experiment_name}, {variant.label}, seed {run.seed}) has no "
                f"{path.name}: it was trained without the {name} measurement. Train it with {hint}, or "
                "leave the run out"
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


def _finite_mean(values: Iterable[float]) -> float | None:
    xs = [v for v in values if not math.isnan(v)]
    return float(np.mean(xs)) if xs else None


def metric_series(run: RunData, column: str) -> dict[int, float]:
    """{step: value} of a metrics.csv column at the steps that have one (read as text: a cell that an
    unfinished run left empty or cut off is no value, not an error)."""
    path = run.run.run_dir / METRICS_FILE
    values = ((r["step"], r.get(column)) for r in (read_csv(path) if path.exists() else []))
    return {int(step): float(v) for step, v in values if v not in (None, "") and not math.isnan(float(v))}


def _layers(rows: Iterable[dict[str, Any]]) -> list[str]:
    """A measurement's layers in depth order (the order of a step's rows)."""
    return list(dict.fromkeys(r["layer"] for r in rows))


def _column(name: str) -> Callable[[dict[str, Any]], float]:
    return lambda row: float(row[name])


# Each quantity drawn or tabled: its measurement and its value in one of the measurement's rows.
SOURCES: dict[str, tuple[str, Callable[[dict[str, Any]], float]]] = {
    **{c: ("ics_gradient", _column(c)) for c in ("l2_diff", "cosine")},
    "mean_shift": ("ics_distribution", lambda r: abs(float(r["mean_shift"]))),
    # A unit whose std went to 0 (it died): an infinite shift.
    "log_std_ratio": (
        "ics_distribution",
        lambda r: abs(math.log(r["std_ratio"])) if r["std_ratio"] > 0 else math.inf,
    ),
    "wasserstein": ("ics_distribution", _column("wasserstein")),
    "loss_band": ("landscape", lambda r: float(r["loss_max"]) - float(r["loss_min"])),
    **{c: ("landscape", _column(c)) for c in ("loss_min", "loss_max", "grad_diff_min", "grad_diff_max")},
    "beta_smoothness": ("landscape", _column("beta_smoothness")),
}
LABELS = {
    "mean_shift": "Ioffe: |mean shift|", "log_std_ratio": "Ioffe: |log std ratio|",
    "wasserstein": "Ioffe: Wasserstein-1", "l2_diff": "Santurkar: ||G - G'||_2",
    "cosine": "Santurkar: cos(G, G')",
}  # fmt: skip


def _means(rows, key: Callable, value: Callable, keep: Callable) -> dict[Any, float]:
    """{key(row): mean of value(row)} over the rows kept, in the order of the rows."""
    groups: dict[Any, list[float]] = {}
    for r in filter(keep, rows):
        groups.setdefault(key(r), []).append(value(r))
    return {k: float(np.mean(v)) for k, v in groups.items()}


def series(run: RunData, quantity: str, layer: str | None = None) -> dict[int, float]:
    """{step: value} of one layer, or (layer None) the mean over units and layers. Averages over
    ics_gradient's layers leave out the first: it has no earlier layer (G' = G, l2 0, cosine 1)."""
    name, value = SOURCES[quantity]
    rows = run.measurement(name)
    first = rows[0]["layer"] if name == "ics_gradient" and rows else None

    def keep(r: dict[str, Any]) -> bool:
        return r["layer"] == layer if layer is not None else first is None or r["layer"] != first

    return _means(rows, lambda r: r["step"], value, keep)


def profile(run: RunData, quantity: str, last_only: bool = False, first: bool = True) -> dict[int, float]:
    """{layer index: value} at the last measured step (last_only) or averaged over measured steps (and
    units); first=False leaves out the first layer (index 0)."""
    name, value = SOURCES[quantity]
    rows = run.measurement(name)
    index = {layer: i for i, layer in enumerate(_layers(rows))}
    last = max((r["step"] for r in rows), default=None)

    def keep(r: dict[str, Any]) -> bool:
        return (first or index[r["layer"]] > 0) and (not last_only or r["step"] == last)

    return _means(rows, lambda r: index[r["layer"]], value, keep)


# ---------------------------------------------------------------------------------------------- drawing


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


def _band_panel(ax, variants: Sequence[Variant], of_run: Callable, kind: str = "log", scale: float = 1.0,
                per_layer: bool = False) -> None:  # fmt: skip
    """Per variant, the seed mean of of_run(run) ({step: value}) as a line and +- one std shaded. kind
    "log": a log y scale when the values drawn span a wide range; "cosine": the band stops at 1, a dotted
    line at 1; "linear". per_layer: of_run gives {layer index from 0: value}, drawn from 1 with markers."""
    drawn = []
    for v in variants:
        b = band([of_run(r) for r in v.runs])
        if not b.n:
            continue
        steps, mean, std = b.steps + 1 if per_layer else b.steps, scale * b.mean, scale * b.std
        ax.plot(steps, mean, color=v.color, ls=v.style, lw=1.5, label=v.legend())
        if b.n > 1:
            low = mean - std
            # On a log scale a band reaching 0 or below would hide the line: clip it to the line's scale.
            low = np.where(low > 0, low, np.where(mean > 0, mean / 10, low))
            top = np.minimum(mean + std, 1.0) if kind == "cosine" else mean + std
            ax.fill_between(steps, low, top, color=v.color, alpha=0.18, lw=0)
        if per_layer:
            ax.plot(steps, mean, color=v.color, ls="none", marker="o", ms=3)
        drawn += [*mean, *(mean + std)]
    if kind == "cosine":
        ax.axhline(1.0, color="black", lw=0.5, ls=":")
    elif kind == "log":
        _log_if_wide(ax, drawn)


def _variant_legend(fig: Figure, ax) -> None:
    """One legend of the variants for the whole figure, below the panels (it hides no curve)."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 3), fontsize=8)


def _title(exp: str, variants: Sequence[Variant]) -> str:
    run = variants[0].runs[0]
    model = run.config.get("model", {}).get("name", "")
    seeds = sorted({s for v in variants for s in v.seeds})
    seed_text = f"seeds {seeds[0]}-{seeds[-1]}" if len(seeds) > 1 else f"seed {seeds[0]}" if seeds else ""
    return f"{exp}: {model + ', ' if model else ''}{run.dataset}, {run.max_steps:,} steps, {seed_text}"


# Each plot_* draws one figure's panels and returns the figure with its title's second line.
def plot_curves(variants: Sequence[Variant]) -> tuple[Figure, str]:
    fig = Figure(figsize=(11.0, 7.4), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True)
    panels = (
        ("train_loss", "train loss (training mode, running mean)"), ("test_loss", "test loss (eval mode)"),
        ("train_acc", "train accuracy (%, training mode)"), ("test_acc", "test accuracy (%, eval mode)"),
    )  # fmt: skip
    for ax, (column, ylabel) in zip(axes.flat, panels, strict=True):
        acc = column.endswith("_acc")  # in %, on a linear scale
        _band_panel(ax, variants, partial(metric_series, column=column), "linear" if acc else "log",
                    100.0 if acc else 1.0)  # fmt: skip
        ax.set_ylabel(ylabel)
        steps_axis(ax, label=ax in axes[1])
    _variant_legend(fig, axes[1, 1])
    return fig, "loss and accuracy: mean over seeds, band +- 1 std"


def _activation_layer(run: RunData, layer: str | None) -> str:
    layers = _layers(run.activations)
    if layer is not None and layer not in layers:
        raise ValueError(f"layer {layer!r} is not probed in {run.run.run_dir}; probed: {', '.join(layers)}")
    return layers[-1] if layer is None else layer


def plot_activations(variants: Sequence[Variant], layer: str | None = None) -> tuple[Figure, str]:
    with_drift = all(v.typical_run().measurement("ics_distribution") for v in variants)
    rows = 2 if with_drift else 1
    fig = Figure(figsize=(max(3.8 * len(variants), 7.0), 3.2 * rows + 0.8), layout="constrained")
    axes = fig.subplots(rows, len(variants), sharex=True, sharey="row", squeeze=False)
    described = set()
    for col, v in enumerate(variants):
        run = v.typical_run()
        name, unit, probe = unit_series(run, _activation_layer(run, layer))
        described.add((name, unit))
        steps, p15, p50, p85 = (probe[k] for k in ("step", "p15", "p50", "p85"))
        ax = axes[0, col]
        ax.fill_between(steps, p15, p85, color=v.color, alpha=0.25, lw=0, label="15-85th percentile")
        ax.plot(steps, p50, color=v.color, lw=1.5, label="median")
        ax.set_title(f"{v.label}, seed {run.seed}", fontsize=9)
        steps_axis(ax, label=not with_drift)
        if not with_drift:
            continue
        ax = axes[1, col]
        every = run.config.get("measure", {}).get("ics_distribution", {}).get("every", 0)
        shifts = [r for r in run.measurement("ics_distribution") if r["layer"] == name]
        for u in dict.fromkeys(r["unit"] for r in shifts):
            drift = sorted((r["step"], r["mean_shift"]) for r in shifts if r["unit"] == u)
            xs = [max(drift[0][0] - (every or 0), 0), *(s for s, _ in drift)]
            ys = np.concatenate([[0.0], np.cumsum([m for _, m in drift])])
            main = u == unit
            ax.plot(xs, ys, color=v.color if main else "gray", lw=1.5 if main else 0.7,
                    alpha=1.0 if main else 0.6, label=f"unit {u}" if main else None)  # fmt: skip
        ax.plot([], [], color="gray", lw=0.7, label="other probed units")
        ax.axhline(0, color="black", lw=0.5)
        steps_axis(ax)
    config = variants[0].runs[0].config
    probe_cfg, model = config.get("probe", {}), config.get("model", {})
    # What the probed values feed: the model's activation, or (a linear net) the next layer.
    nonlinearity = (
        "input to the next layer\n(linear net: no nonlinearity)"
        if model.get("name") == "linear_deep"
        else f"input to the {model.get('activation', 'nonlinearity')}"
    )
    axes[0, 0].set_ylabel(f"{nonlinearity}\n(probe: {probe_cfg.get('mode', '?')} mode)", fontsize=8)
    axes[0, -1].legend(fontsize=8, loc="best")
    if with_drift:
        mode = config.get("measure", {}).get("ics_distribution", {}).get("mode", "?")
        axes[1, 0].set_ylabel(f"mean now - mean at the first\nmeasurement ({mode} mode)", fontsize=8)
        axes[1, -1].legend(fontsize=8, loc="best")
    where = "; ".join(f"layer {n}, unit {u}" for n, u in sorted(described))
    lower = ";\nbelow: drift of the probed units' means (running sum of ics_distribution's mean_shift)"
    text = f"{where}: 15/50/85th percentiles over {probe_cfg.get('num_examples', '?')} test images"
    return fig, text + (lower if with_drift else "")


def _panel_layers(layers: Sequence[str], k: int = ICS_PANELS) -> list[str]:
    """Up to k layers after the first, evenly spread, the last included."""
    rest = list(layers[1:])
    if len(rest) <= k:
        return rest
    picks = np.unique(np.round(np.linspace(0, len(rest) - 1, k)).astype(int))
    return [rest[i] for i in picks]


def plot_ics_gradient(variants: Sequence[Variant]) -> tuple[Figure, str]:
    layers = _layers(variants[0].runs[0].measurement("ics_gradient"))
    panels: list[str | None] = [*_panel_layers(layers), None]
    fig = Figure(figsize=(3.4 * len(panels), 6.4), layout="constrained")
    axes = fig.subplots(2, len(panels), sharex=True, squeeze=False)
    for col, layer in enumerate(panels):
        for row, quantity in enumerate(("l2_diff", "cosine")):
            of_run = partial(series, quantity=quantity, layer=layer)
            _band_panel(axes[row, col], variants, of_run, "cosine" if quantity == "cosine" else "log")
            steps_axis(axes[row, col], label=row == 1)
        name = f"layer {layers.index(layer) + 1}: {layer}" if layer else f"mean over layers 2-{len(layers)}"
        axes[0, col].set_title(name, fontsize=9)
    axes[0, 0].set_ylabel("||G - G'||_2")
    axes[1, 0].set_ylabel("cos(G, G')")
    _variant_legend(fig, axes[1, -1])
    return fig, (
        "gradient ICS (Santurkar et al. Def. 2.1): G' = layer's gradient after the earlier layers' update; "
        "mean over seeds, band +- 1 std"
    )


def plot_landscape(variants: Sequence[Variant]) -> tuple[Figure, str]:
    fig = Figure(figsize=(15.0, 4.6), layout="constrained")
    axes = fig.subplots(1, 3, sharex=True)
    ranges = (
        ("loss_min", "loss_max", "loss along the gradient", "(a) loss landscape"),
        ("grad_diff_min", "grad_diff_max", "||grad L(theta - eta g) - g||_2", "(b) gradient predictiveness"),
    )
    for ax, (low, high, ylabel, title) in zip(axes, ranges, strict=False):
        drawn = []
        for v in variants:
            lo, hi = (band([series(r, q) for r in v.runs]) for q in (low, high))
            if not lo.n:
                continue
            ax.fill_between(lo.steps, lo.mean, hi.mean, color=v.color, alpha=0.3, lw=0)
            ax.plot(lo.steps, lo.mean, color=v.color, ls=v.style, lw=0.8)
            ax.plot(hi.steps, hi.mean, color=v.color, ls=v.style, lw=0.8, label=v.legend())
            drawn += [*lo.mean, *hi.mean]
        if low != "loss_min":  # the loss band stays linear (as the paper's): its width is the point
            _log_if_wide(ax, drawn)
        ax.set_ylabel(ylabel)
        steps_axis(ax)
        ax.set_title(f"{title}: min-max over the step sizes", fontsize=9)
    _band_panel(axes[2], variants, partial(series, quantity="beta_smoothness"))
    axes[2].set_ylabel("max ||grad change|| / ||parameter change||")
    axes[2].set_title("(c) effective beta-smoothness: mean over seeds, +- 1 std", fontsize=9)
    steps_axis(axes[2])
    _variant_legend(fig, axes[0])
    cfg = variants[0].runs[0].config.get("measure", {}).get("landscape", {})
    sizes = cfg.get("step_sizes") or []
    what = "x the run's lr" if cfg.get("relative", True) else "(absolute)"
    size_text = f"step sizes {min(sizes):g}..{max(sizes):g} {what}" if sizes else "the configured step sizes"
    return fig, (
        f"along -g on the step's batch, {size_text}; (a), (b): band between the seed means of the min and "
        "the max"
    )


def plot_ics_distribution(variants: Sequence[Variant]) -> tuple[Figure, str]:
    with_gradient = all(r.measurement("ics_gradient") for v in variants for r in v.runs)
    quantities = [*DIST_STATS, *(("l2_diff", "cosine") if with_gradient else ())]
    fig = Figure(figsize=(3.5 * len(quantities), 7.0), layout="constrained")
    axes = fig.subplots(2, len(quantities), squeeze=False)
    for (top, bottom), quantity in zip(axes.T, quantities, strict=True):
        kind, dist = "cosine" if quantity == "cosine" else "log", quantity in DIST_STATS
        _band_panel(top, variants, partial(series, quantity=quantity), kind)
        _band_panel(bottom, variants, partial(profile, quantity=quantity, first=dist), kind, per_layer=True)
        steps_axis(top)
        bottom.set_xlabel("layer (depth order, 1 = first)")
        bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
        bottom.grid(alpha=0.3)
        over, each = ("units and probed layers", "probed") if dist else ("layers 2..L", "weight")
        top.set_title(f"{LABELS[quantity]}\nmean over {over}", fontsize=9)
        bottom.set_title(f"{LABELS[quantity]}\nper {each} layer, mean over measured steps", fontsize=9)
    _variant_legend(fig, axes[0, -1])
    mode = variants[0].runs[0].config.get("measure", {}).get("ics_distribution", {}).get("mode", "?")
    return fig, (
        "two notions of ICS: the change of each probed layer's input distribution between measurements "
        f"({mode} mode, fixed probe set) and the gradient ICS; mean over seeds, band +- 1 std"
    )


# ---------------------------------------------------------------------------------------------- tables


def _run_numbers(run: RunData) -> dict[str, float | None]:
    """One run's table numbers (None where the run lacks the measurement)."""
    s = run.summary
    # Training mode (noisy BN's noise, batch statistics): the running mean at the last evaluation.
    train_acc = metric_series(run, "train_acc")
    ms, spent, wall = s.get("measure_ms_per_call") or {}, s.get("measure_time_s") or {}, s.get("wall_time_s")
    out: dict[str, float | None] = {
        "final_acc": s.get("final_test_acc"),
        "best_acc": s.get("best_test_acc"),
        "final_train_acc": train_acc[max(train_acc)] if train_acc else None,
        # Algorithm 2's population statistics (noisy BN's recomputed without its noise): the test
        # accuracy of the network inference runs, beside the moving averages' (final_acc).
        "population_acc": s.get("final_test_acc_population_stats"),
        **{f"{m}_ms_per_call": ms.get(m) for m in MEASUREMENTS},
        "measure_share": sum(spent.values()) / wall if spent and wall else None,
    }
    for key in ("ics_l2", "ics_cos"):
        out[f"{key}_last"] = _finite_mean(profile(run, PER_STEP[key], last_only=True, first=False).values())
    half = run.max_steps / 2
    for key, quantity in PER_STEP.items():
        values = series(run, quantity)
        out[key] = _finite_mean(values.values())
        out[f"{key}_late"] = _finite_mean(v for step, v in values.items() if step > half)
    return out


def table_rows(exp: str, variants: Sequence[Variant]) -> list[dict[str, Any]]:
    """One row per variant (TABLE_COLUMNS): mean and sample std over its seeds."""
    rows = []
    for v in variants:
        per_run = [_run_numbers(r) for r in v.runs]
        row: dict[str, Any] = {
            "experiment": exp, "variant": v.label, "norm": v.norm_kind, "lr": v.lr,
            "seeds": " ".join(map(str, v.seeds)), "runs": len(v.runs) + len(v.left_out),
            "finished": sum(not r.stopped_early for r in v.runs),
        }  # fmt: skip
        for key in NUMBER_KEYS:
            row[f"{key}_mean"], row[f"{key}_std"] = numpy_mean_std(n[key] for n in per_run)
        rows.append(row)
    return rows


def layer_rows(exp: str, variants: Sequence[Variant]) -> list[dict[str, Any]]:
    """Per variant and weight layer: gradient ICS at the last measured step, mean and std over seeds."""
    rows = []
    for v in variants:
        runs = [r for r in v.runs if r.measurement("ics_gradient")]
        l2, cos = ([profile(r, q, last_only=True) for r in runs] for q in ("l2_diff", "cosine"))
        for i, layer in enumerate(_layers(runs[0].measurement("ics_gradient")) if runs else []):
            row = {"experiment": exp, "variant": v.label, "layer_index": i + 1, "layer": layer}
            row["l2_mean"], row["l2_std"] = numpy_mean_std(p.get(i) for p in l2)
            row["cos_mean"], row["cos_std"] = numpy_mean_std(p.get(i) for p in cos)
            rows.append(row)
    return rows


# A cell's format: the scale of the numbers, the mean's format and the std's (after "+-").
CELL_FORMATS = {
    "num": (1, "{:.3g}", "{:.2g}"),
    "pct": (100, "{:.2f}%", "{:.2f}"),
    "cos": (1, "{:.4f}", "{:.4f}"),
}


def _cell(row: dict[str, Any], key: str, kind: str = "num") -> str:
    """`<key>_mean +- <key>_std` of a table row ("-" without a mean, no std with one seed)."""
    scale, fmt, std_fmt = CELL_FORMATS[kind]
    return spread(row[f"{key}_mean"], row[f"{key}_std"], fmt, scale, std_fmt)


def _stat(key: str, kind: str = "num") -> Callable[[dict[str, Any]], str]:
    return lambda row: _cell(row, key, kind)


# The .md's tables of the variants: the text above each and its columns (header: the row's cell).
MD_TABLES = (
    (
        "Training (test accuracy in eval mode, final: at the last evaluation, best: over evaluations; "
        "train accuracy: training mode, noisy BN's noise included, at the last evaluation; population "
        "stats: the final test accuracy with Algorithm 2's statistics from 100 training batches, recomputed "
        "without noisy BN's noise):",
        {"seeds": lambda row: row["seeds"], "finished": lambda row: f"{row['finished']}/{row['runs']}",
         "final test acc": _stat("final_acc", "pct"), "best test acc": _stat("best_acc", "pct"),
         "final train acc": _stat("final_train_acc", "pct"),
         "test acc, population stats": _stat("population_acc", "pct")},
    ),
    (
        "Internal covariate shift. Gradient ICS (ics_gradient.csv): ||G - G'||_2 and cos(G, G') averaged "
        "over the weight layers after the first, at the last measured step and over the measured steps of "
        "the second half of training (2nd half). Distribution shift (ics_distribution.csv, Ioffe's sense): "
        "per probed unit between consecutive measurements, |mean shift|, |log std ratio| and the "
        "Wasserstein-1 distance, averaged over units, layers and the measured steps of the 2nd half "
        "(means over all measured steps: the .csv).",
        {"l2 (last)": _stat("ics_l2_last"), "cosine (last)": _stat("ics_cos_last", "cos"),
         "l2 (2nd half)": _stat("ics_l2_late"), "cosine (2nd half)": _stat("ics_cos_late", "cos"),
         **{LABELS[s].removeprefix("Ioffe: "): _stat(f"dist_{s}_late") for s in DIST_STATS}},
    ),
    (
        "Loss landscape along the gradient (landscape.csv): the loss band (loss_max - loss_min), the "
        "gradient predictiveness (grad_diff_max: the largest ||grad change||) and the effective "
        "beta-smoothness, means over all measured steps and over those of the 2nd half of training.",
        {f"{name} ({part})": _stat(key + suffix)
         for name, key in (("loss band", "loss_band"), ("grad_diff_max", "grad_diff_max"), ("beta", "beta"))
         for part, suffix in (("all", ""), ("2nd half", "_late"))},
    ),
    (
        "Measurement cost (summary.json's measure_ms_per_call: ms per measured step, one CPU thread where "
        "the runs were made) and the measurements' share of the run's wall time:",
        {**{f"{name} ms/call": _stat(f"{name}_ms_per_call") for name in MEASUREMENTS},
         "share of wall time": _stat("measure_share", "pct")},
    ),
)  # fmt: skip


def write_table(exp: str, variants: Sequence[Variant], out_dir: Path, report: Report) -> list[dict[str, Any]]:
    rows, by_layer = table_rows(exp, variants), layer_rows(exp, variants)
    lines = [f"**{_title(exp, variants)}**", ""]
    for text, columns in MD_TABLES:
        body = [(r["variant"], *(cell(r) for cell in columns.values())) for r in rows]
        lines += [text, "", *markdown_table(("variant", *columns), body), ""]
    if by_layer:
        labels = [v.label for v in variants if any(x["variant"] == v.label for x in by_layer)]
        cell = {(x["variant"], x["layer_index"]): x for x in by_layer}
        body = []
        for index, layer in dict.fromkeys((x["layer_index"], x["layer"]) for x in by_layer):
            found = [cell.get((label, index)) for label in labels]
            pairs = [("-", "-") if x is None else (_cell(x, "l2"), _cell(x, "cos", "cos")) for x in found]
            body.append([f"{index}: {layer}", *(c for pair in pairs for c in pair)])
        lines += [
            "Gradient ICS per weight layer at the last measured step (layer 1: G' = G by definition):",
            "",
        ]
        header = ("layer", *(f"{label}: {k}" for label in labels for k in ("l2", "cosine")))
        lines += [*markdown_table(header, body), ""]
    md_path = out_dir / f"{exp}_table.md"
    md_path.write_text("\n".join([*lines, "Mean +- sample std over seeds (no std with one seed)."]) + "\n")
    report.written.append(md_path)
    report.written.append(write_csv(out_dir / f"{exp}_table.csv", TABLE_COLUMNS, rows))
    if by_layer:
        report.written.append(write_csv(out_dir / f"{exp}_layers.csv", LAYER_COLUMNS, by_layer))
    return rows


# ---------------------------------------------------------------------------------------------- entry

# Each figure, the measurements it needs (all of them, or it is skipped / an error), its title's prefix.
FIGURES: tuple[tuple[str, Callable, tuple[str, ...], str], ...] = (
    ("curves", plot_curves, (), ""),
    ("activations", plot_activations, ("activations",), "Fig. 2 style: "),
    ("ics_gradient", plot_ics_gradient, ("ics_gradient",), "Fig. 3 style: "),
    ("landscape", plot_landscape, ("landscape",), "Fig. 4 style: "),
    ("ics_distribution", plot_ics_distribution, ("ics_distribution",), ""),
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
    groups = by_experiment(load_all(paths))
    unknown = sorted(set(experiments or ()) - set(groups))
    if unknown:
        raise NoRunsError(
            f"no runs of experiment {', '.join(unknown)} found; found: {', '.join(groups) or 'none'}"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = Report()
    planned = []
    for exp, group in groups.items():
        if experiments and exp not in experiments:
            continue
        variants, figures = variants_of(group), []
        for name, plot, needs, prefix in FIGURES:
            try:  # every check before any drawing: a missing file fails fast
                for need in needs:
                    require(variants, need)
            except MissingMeasurementError as error:
                if not allow_missing:
                    raise
                report.notes.append(f"{exp}_{name}.png skipped: {error}")
                continue
            if name == "activations":
                plot = partial(plot, layer=layer)
                for v in variants:
                    _activation_layer(v.typical_run(), layer)  # an unknown layer fails before drawing
            figures.append((name, plot, prefix))
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
        for name, plot, prefix in figures:
            fig, text = plot(variants)
            fig.suptitle(f"{prefix}{_title(exp, variants)}\n{text}", fontsize=10)
            save(fig, out_dir, f"{exp}_{name}", report.written)
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
