"""The paper's figures and the Fig. 3 table, drawn from run dirs (local files only, headless).

    python scripts/make_figures.py                                   # results/ -> results/figures/
    report = make_figures(["multirun/"], "figures")                 # the same from Python

bn_repro/records/README.md ("Figures and the Fig. 3 table from runs") lists the files and what each
draws. Runs named fig2_* or fig2cpu_* (the CPU-scale family: `cpu_scale_` before the dataset in their
names) make Fig. 2 and Fig. 3; every other run is a Fig. 1 run. A figure is one (dataset, planned length)
group. Fig. 1(a)'s band is the 95% t-interval of the seed mean; fig1_table_<dataset>.md/.csv (and
_differences.csv) hold, per norm, final and best test accuracy over the seeds that finished, the steps to
the no-BN curve's best with the speedup that gives (the Fig. 3 measure applied to Fig. 1), and each norm
minus torch's BN, paired by seed.

Curves never mix runs that differ in a CURVE_SETTINGS setting (their labels name it). Runs that diverged
or stopped early are drawn on their own, dashed, and left out of every mean (a diverged run's accuracy
falls to chance and would drag the mean of its seeds down), as speedup.mean_curve does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from bn_repro import norms
from bn_repro.analysis import speedup, stats
from bn_repro.analysis.plots import PNG_DPI as PNG_DPI  # a public name here before plots.py
from bn_repro.analysis.plots import min_max_band, save, steps_axis
from bn_repro.analysis.runs_table import find_run_dirs, flatten, read_summary
from bn_repro.analysis.tables import markdown_table, spread, write_csv
from bn_repro.records.run_files import SUMMARY_FILE, measurement_file, read_measurement

DATASET_NAMES = {
    "mnist": "MNIST",
    "fashion_mnist": "Fashion-MNIST",
    "cifar10": "CIFAR-10",
    "synthetic": "synthetic",
}
# Figure/table file name part of each speedup preset family (bn_repro/analysis/speedup.py FAMILIES).
FAMILY_TAGS = {"fig2_": "", "fig2cpu_": "cpu_scale_"}


def variant_label(experiment_name: str) -> str:
    """The paper's name of a speedup variant, whichever family its preset is in (else the variant)."""
    variant = speedup.variant_of(experiment_name)
    return speedup.PAPER_VARIANTS.get(variant, (variant,))[0]


# Settings that change what a curve means: runs that differ in one of these are never averaged together.
CURVE_SETTINGS = ("optim.", "model.", "data.batch_size", "data.augment")
SUMMARY_COLUMNS = (
    "experiment_name", "dataset", "norm", "backward", "seed", "steps", "max_steps", "final_test_acc",
    "best_test_acc", "diverged", "status", "wall_time_s", "steps_per_s", "run_dir",
)  # fmt: skip
FIG1_COLUMNS = (
    "curve", "runs", "finished", "final_acc_mean", "final_acc_std", "best_acc_mean", "best_acc_std",
    "target_acc", "steps_to_target", "speedup",
    # 95% t-intervals over the finished seeds (bn_repro/analysis/stats.py): half-widths.
    "final_acc_ci95", "best_acc_ci95",
    # Each seed's own curve against the same target: how many reach it, and their steps' mean and interval.
    "seeds_reaching_target", "seed_steps_to_target_mean", "seed_steps_to_target_ci95",
)  # fmt: skip
# One row per curve against the reference BN (torch's, norm.kind=builtin), paired by seed.
FIG1_DIFFERENCE_COLUMNS = (
    "curve", "reference", "pairs", "final_acc_diff_mean", "final_acc_diff_ci95", "best_acc_diff_mean",
    "best_acc_diff_ci95", "interval_excludes_zero",
)  # fmt: skip
REFERENCE_NORM = "builtin"
ACCURACIES = ("final_test_acc", "best_test_acc")  # summary.json's, per seed
IMAGE_FORMATS = ("png", "pdf")


class NoRunsError(FileNotFoundError):
    """No run dir (a folder holding summary.json) was found where the figures were asked for."""


@dataclass(frozen=True)
class RunData:
    """One run dir: the metrics as bn_repro.analysis.speedup reads them, the summary, and the rows of
    each measurement the run wrote (read on first use)."""

    run: speedup.Run
    summary: dict[str, Any]

    def measurement(self, name: str) -> tuple[dict[str, Any], ...]:
        """The rows of measurement `name` (bn_repro/measures/), numbers parsed; () when absent."""
        cache = self.__dict__.setdefault("_measurements", {})
        if name not in cache:
            cache[name] = tuple(read_measurement(self.run.run_dir, name))
        return cache[name]

    @property
    def activations(self) -> tuple[dict[str, Any], ...]:
        """The activation probe's rows (Fig. 1(b,c))."""
        return self.measurement("activations")

    @property
    def config(self) -> dict[str, Any]:
        return self.summary.get("config") or {}

    @property
    def experiment_name(self) -> str:
        return self.run.experiment_name

    @property
    def dataset(self) -> str:
        provenance = self.summary.get("provenance", {})
        return self.config.get("data", {}).get("name") or provenance.get("dataset", "?")

    @property
    def norm_kind(self) -> str:
        return self.config.get("norm", {}).get("kind", "?")

    @property
    def backward(self) -> str:
        """The norm's `backward` option (the custom BN's autograd | explicit); empty for the others."""
        return self.config.get("norm", {}).get("backward", "")

    @property
    def norm_label(self) -> str:
        """The registry's label for the run's norm (an unregistered kind prints as its name)."""
        return norms.label(self.config.get("norm") or {"kind": "?"})

    @property
    def without_norm(self) -> bool:
        """The no-norm baseline (norm.kind=none): drawn first, the target of the Fig. 1 table."""
        return self.norm_kind in norms.names() and norms.get(self.norm_kind).identity

    @property
    def seed(self) -> int | None:
        return self.run.seed

    @property
    def max_steps(self) -> int:
        """The planned length (what the figure title names); a stopped run has fewer `steps`."""
        planned = self.config.get("trainer", {}).get("max_steps")
        return int(planned) if planned is not None else (self.run.steps[-1] if self.run.steps else 0)

    @property
    def stopped_early(self) -> bool:
        """Diverged, failed or still running: drawn on its own, never part of a mean."""
        return self.run.status != "finished"


@dataclass
class Report:
    written: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def load_run_data(run_dir: str | Path) -> RunData:
    summary = read_summary(run_dir)
    return RunData(run=speedup.load_run(run_dir, summary), summary=summary)


def load_all(paths: Iterable[str | Path]) -> list[RunData]:
    """Every run in `paths` (run dirs, or folders searched recursively for them)."""
    paths = [Path(p) for p in paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise NoRunsError(f"no such run dir or folder: {', '.join(missing)}")
    run_dirs = find_run_dirs(paths)
    if not run_dirs:
        raise NoRunsError(
            f"no run dirs (folders holding {SUMMARY_FILE}) found in {', '.join(map(str, paths))}; train some "
            "first (python -m bn_repro.train -m experiment=fig1_fashion_mnist_sweep) or pass their dirs"
        )
    return [load_run_data(d) for d in run_dirs]


# ---------------------------------------------------------------------------------------------- grouping


def differing(flats: Sequence[dict[str, Any]], keep: Callable[[str], bool]) -> list[str]:
    """The keys `keep` selects whose values differ between these flattened configs, sorted."""
    keys = sorted({k for f in flats for k in f if keep(k)})
    return [k for k in keys if len({repr(f.get(k)) for f in flats}) > 1]


def split_curves(runs: Sequence[RunData], label_of) -> dict[str, list[RunData]]:
    """Runs by curve: `label_of(run)`, plus the CURVE_SETTINGS keys whose value differs between the runs,
    if any."""
    flats = [flatten(r.config) for r in runs]
    keys = differing(flats, lambda k: k.startswith(CURVE_SETTINGS))
    curves: dict[str, list[RunData]] = {}
    for run, flat in zip(runs, flats, strict=True):
        label = label_of(run)
        if keys:
            label += " [" + ", ".join(f"{k}={flat.get(k)}" for k in keys) + "]"
        curves.setdefault(label, []).append(run)
    return curves


def _norm_curves(runs: Sequence[RunData]) -> dict[str, list[RunData]]:
    """The Fig. 1 curves (split_curves by the norm's label): the no-norm baseline first, then by label."""
    curves = split_curves(runs, lambda r: r.norm_label)
    return dict(sorted(curves.items(), key=lambda item: (not item[1][0].without_norm, item[0])))


def _figure_groups(runs: Sequence[RunData]) -> dict[str, list[RunData]]:
    """Runs by (dataset, planned steps), keyed by the file name suffix of their figure."""
    by_dataset: dict[str, dict[int, list[RunData]]] = {}
    for run in runs:
        # The speedup families (fig2_, fig2cpu_) are separate experiments: never in one figure.
        family = FAMILY_TAGS.get(speedup.family_of(run.experiment_name), "")
        by_dataset.setdefault(family + run.dataset, {}).setdefault(run.max_steps, []).append(run)
    groups = {}
    for dataset, by_steps in sorted(by_dataset.items()):
        for steps, group in sorted(by_steps.items()):
            groups[dataset if len(by_steps) == 1 else f"{dataset}_{steps}steps"] = group
    return groups


# ---------------------------------------------------------------------------------------------- text


def _seed_text(runs: Sequence[RunData]) -> str:
    seeds = sorted({r.seed for r in runs if r.seed is not None})
    if not seeds:
        return "seed unknown"
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    if seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"seeds {seeds[0]}-{seeds[-1]}"
    return "seeds " + ", ".join(map(str, seeds))


def _title(runs: Sequence[RunData]) -> str:
    """E.g. 'Fashion-MNIST, 50,000 steps, seeds 0-2'."""
    dataset = DATASET_NAMES.get(runs[0].dataset, runs[0].dataset)
    return f"{dataset}, {runs[0].max_steps:,} steps, {_seed_text(runs)}"


def _stop_text(run: RunData) -> str:
    last = run.run.steps[-1] if run.run.steps else 0
    verb = "diverged" if run.run.diverged else f"stopped ({run.run.status})"
    return f"seed {run.seed}: {verb} at step {last:,}"


# ---------------------------------------------------------------------------------------------- drawing


def _draw_accuracy(ax, label: str, runs: Sequence[RunData], color, band: str | None) -> speedup.Curve | None:
    """The mean test accuracy of the finished runs, and each stopped run. `band` around the mean:
    "minmax" (the range over seeds), "ci95" (the 95% t-interval of the mean) or None."""
    curve = speedup.mean_curve([r.run for r in runs])
    if curve is not None:
        steps = np.array(curve.steps)
        n = len(curve.runs)
        mean_label = f"{label} (mean of {n} seeds)" if n > 1 else f"{label} (seed {curve.runs[0].seed})"
        ax.plot(steps, 100 * np.array(curve.test_acc), color=color, lw=1.6, label=mean_label)
        if band and n > 1:
            per_run = np.array(
                [[dict(zip(r.steps, r.test_acc, strict=True))[s] for s in curve.steps] for r in curve.runs]
            )
            if band == "ci95":
                half = np.array([stats.t_interval(column)[1] for column in per_run.T])
                low, high = per_run.mean(0) - half, per_run.mean(0) + half
            else:
                low, high = per_run.min(0), per_run.max(0)
            ax.fill_between(steps, 100 * low, 100 * high, color=color, alpha=0.2, lw=0)
    for run in runs:
        if run.stopped_early and run.run.steps:
            acc = 100 * np.array(run.run.test_acc)
            ax.plot(run.run.steps, acc, color=color, lw=1.0, ls="--", label=f"{label}, {_stop_text(run)}")
    return curve


def _accuracy_axes(ax, **legend) -> None:
    """Axis labels and the legend (`legend`: where; Fig. 2's long one goes to the right of the axes)."""
    steps_axis(ax)
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=8, **legend)


def plot_fig1a(runs: Sequence[RunData], out_dir: Path, stem: str, report: Report) -> None:
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.add_subplot()
    for i, (label, group) in enumerate(_norm_curves(runs).items()):
        _draw_accuracy(ax, label, group, f"C{i}", band="ci95")
    ax.set_title(
        f"Fig. 1(a): {_title(runs)}\ntest accuracy, mean over seeds, band: 95% t-interval of the mean",
        fontsize=10,
    )
    _accuracy_axes(ax, loc="lower right")
    save(fig, out_dir, stem, report.written, IMAGE_FORMATS)


def _typical_run(runs: Sequence[RunData]) -> RunData | None:
    """The lowest seed that finished with probe rows, else the lowest seed with any."""
    probed = [r for r in runs if r.activations]
    return min(probed, key=lambda r: (r.stopped_early, r.seed if r.seed is not None else 0), default=None)


def unit_series(run: RunData, layer: str | None = None) -> tuple[str, int, dict[str, np.ndarray]]:
    """(layer, unit, {step, p15, p50, p85}) of the first probed unit of `layer`, by default the last hidden
    layer: activations.csv lists a step's layers in depth order (model.probe_points()), so the last layer
    to appear is the last hidden one.
    """
    layer = layer or list(dict.fromkeys(r["layer"] for r in run.activations))[-1]
    unit = next(r["unit"] for r in run.activations if r["layer"] == layer)
    rows = sorted(
        (r for r in run.activations if r["layer"] == layer and r["unit"] == unit), key=lambda r: r["step"]
    )
    return layer, unit, {k: np.array([r[k] for r in rows]) for k in ("step", "p15", "p50", "p85")}


def _p50_over_seeds(runs: Sequence[RunData]) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps, p50 per seed: (seeds, steps)) of the Fig. 1(b,c) unit in every finished run with probe
    rows, at the steps all of them probed; None with fewer than two such runs."""
    series = [unit_series(r)[2] for r in runs if r.activations and not r.stopped_early]
    if len(series) < 2:
        return None
    steps = sorted(set(series[0]["step"].tolist()).intersection(*(s["step"].tolist() for s in series[1:])))
    by_step = [dict(zip(s["step"].tolist(), s["p50"], strict=True)) for s in series]
    return np.array(steps), np.array([[points[t] for t in steps] for points in by_step])


def plot_fig1bc(runs: Sequence[RunData], out_dir: Path, stem: str, report: Report) -> bool:
    """One panel per norm, shared axes; False (nothing written) when no run has probe rows. With
    several seeds, a last panel draws the spread of the 50th percentile over seeds, per norm."""
    curves = _norm_curves(runs)
    panels = [(label, run) for label, group in curves.items() if (run := _typical_run(group)) is not None]
    if not panels:
        return False
    spreads = {label: p50 for label, group in curves.items() if (p50 := _p50_over_seeds(group)) is not None}
    columns = len(panels) + bool(spreads)
    fig = Figure(figsize=(max(4.2 * columns, 6.4), 4.0), layout="constrained")
    axes = fig.subplots(1, columns, sharex=True, sharey=True, squeeze=False)[0]
    described = set()
    for ax, (label, run) in zip(axes, panels, strict=False):
        layer, unit, series = unit_series(run)
        described.add((layer, unit))
        for p, style, width in (("p85", "--", 1.0), ("p50", "-", 1.6), ("p15", ":", 1.2)):
            ax.plot(series["step"], series[p], color="C0", ls=style, lw=width, label=f"{p[1:]}th percentile")
        note = f", {_stop_text(run)}" if run.stopped_early else f", seed {run.seed}"
        ax.set_title(("without BN" if run.without_norm else f"with {label}") + note, fontsize=9)
        steps_axis(ax)
    activation = runs[0].config.get("model", {}).get("activation", "nonlinearity")
    axes[0].set_ylabel(f"input to the {activation}")
    axes[len(panels) - 1].legend(fontsize=8, loc="best")
    if spreads:
        ax = axes[-1]
        for label, (steps, values) in spreads.items():
            color = f"C{list(curves).index(label)}"  # the norm's colour in Fig. 1(a)
            min_max_band(ax, steps, values, color, f"{label} ({len(values)} seeds)", lw=1.6)
        ax.set_title("50th percentile over seeds: mean, band min-max", fontsize=9)
        steps_axis(ax)
        ax.legend(fontsize=8, loc="best")
    where = "; ".join(f"unit {u} of {layer} (last hidden layer)" for layer, u in sorted(described))
    probe = runs[0].config.get("probe", {})
    probe_text = f"{probe['num_examples']} test images, {probe['mode']} mode" if probe else "the probe set"
    drawn = _title([run for _, run in panels])
    fig.suptitle(
        f"Fig. 1(b,c): {drawn}\n{where}:\n{{15, 50, 85}}th percentiles over {probe_text}", fontsize=10
    )
    save(fig, out_dir, stem, report.written, IMAGE_FORMATS)
    return True


def plot_fig2(runs: Sequence[RunData], out_dir: Path, stem: str, report: Report) -> None:
    fig = Figure(figsize=(9.0, 4.6), layout="constrained")
    ax = fig.add_subplot()
    baseline = speedup.baseline_of({r.experiment_name for r in runs})
    variants = speedup.group_by_variant(runs, baseline)  # RunData, by experiment_name as speedup's Runs
    color = 0
    for name, group in variants.items():
        label = variant_label(name)
        curves = split_curves(group, lambda _run, label=label: label)
        for curve_label, curve_runs in curves.items():
            # With several seeds, the band is their min-max range around the mean curve.
            _draw_accuracy(ax, curve_label, curve_runs, f"C{color % 10}", band="minmax")
            color += 1
    # The line is the Fig. 3 target: the best of the baseline's curve as speedup.fig3_table computes it.
    baseline_curve = speedup.mean_curve([r.run for r in variants.get(baseline, [])])
    if baseline_curve is not None:
        best = baseline_curve.max_acc
        label = f"{variant_label(baseline)}'s best: {100 * best:.2f}%"
        ax.axhline(100 * best, color="gray", lw=0.8, ls=":", label=label)
    spread_text = ", band: min-max over seeds" if max(len(g) for g in variants.values()) > 1 else ""
    ax.set_title(
        f"Fig. 2: {_title(runs)}\ntest accuracy of each variant, mean over seeds{spread_text}", fontsize=10
    )
    _accuracy_axes(ax, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    save(fig, out_dir, stem, report.written, IMAGE_FORMATS)


# ---------------------------------------------------------------------------------------------- tables


def write_fig3_table(runs: Sequence[RunData], out_dir: Path, stem: str, report: Report) -> None:
    """speedup.fig3_table for these runs as .md and .csv; without a usable baseline, a note instead."""
    heading = f"**Fig. 3: {_title(runs)}**\n\n"
    try:
        rows = speedup.fig3_table([r.run for r in runs])
    except ValueError as error:
        note = f"Fig. 3 table for {_title(runs)} not computed: {error}."
        report.notes.append(note)
        (out_dir / f"{stem}.md").write_text(heading + note + "\n")
        report.written.append(out_dir / f"{stem}.md")
        return
    md_path, csv_path = speedup.write_fig3(rows, out_dir, stem)
    md_path.write_text(heading + md_path.read_text())
    report.written += [md_path, csv_path]


def _accuracy_columns(finished: Sequence[RunData], kind: str) -> dict[str, Any]:
    """{kind}_acc_mean, _std (sample) and _ci95 (half-width) of summary.json's {kind}_test_acc over the
    finished seeds (None without values, the std and interval below two)."""
    values = [r.summary[f"{kind}_test_acc"] for r in finished]
    mean, std = stats.numpy_mean_std(values)
    return {f"{kind}_acc_mean": mean, f"{kind}_acc_std": std, f"{kind}_acc_ci95": stats.t_interval(values)[1]}


def fig1_rows(runs: Sequence[RunData]) -> list[dict[str, Any]]:
    """One row per Fig. 1 curve (FIG1_COLUMNS); the target is the best accuracy of the no-BN mean curve."""
    curves = _norm_curves(runs)
    means = {label: speedup.mean_curve([r.run for r in group]) for label, group in curves.items()}
    # The no-norm curve; when the curves differ in a setting (e.g. each norm at its own learning rate),
    # its label carries that setting, so it is found by its runs, not by its label.
    without = [label for label, group in curves.items() if group[0].without_norm]
    identity = next(norms.label({"kind": k}) for k in norms.names() if norms.get(k).identity)  # "no BN"
    baseline = means.get(without[0]) if len(without) == 1 else means.get(identity)
    target = baseline.max_acc if baseline else None
    base_steps = speedup.steps_to_target(baseline.steps, baseline.test_acc, target) if baseline else None
    rows = []
    for label, group in curves.items():
        finished = [r for r in group if not r.stopped_early]
        curve = means[label]
        steps = speedup.steps_to_target(curve.steps, curve.test_acc, target) if curve and target else None
        per_run = [] if target is None else speedup.steps_to_target_per_run([r.run for r in finished], target)
        reached = [s for s in per_run if s is not None]
        row = {
            "curve": label, "runs": len(group), "finished": len(finished),
            **_accuracy_columns(finished, "final"), **_accuracy_columns(finished, "best"),
            "target_acc": target, "steps_to_target": steps,
            # A curve reaching the target at step 0 has no finite speedup: left empty.
            "speedup": base_steps / steps if base_steps and steps else None,
            "seeds_reaching_target": len(reached) if target is not None else None,
        }  # fmt: skip
        row["seed_steps_to_target_mean"], row["seed_steps_to_target_ci95"] = stats.t_interval(reached)
        rows.append(row)
    return rows


def fig1_differences(runs: Sequence[RunData]) -> list[dict[str, Any]]:
    """Each other curve minus the reference BN curve (norm.kind=builtin, torch's), in final and best test
    accuracy, paired by seed, with the 95% t-interval of the mean difference (FIG1_DIFFERENCE_COLUMNS).
    Empty without exactly one reference curve. A custom BN that matches torch's has an interval around
    zero; the no-BN row is BN's effect."""
    curves = _norm_curves(runs)
    references = [label for label, group in curves.items() if group[0].norm_kind == REFERENCE_NORM]
    if len(references) != 1:
        return []

    def by_seed(label: str, key: str) -> dict[int, float]:
        finished = [r for r in curves[label] if not r.stopped_early and r.seed is not None]
        return {r.seed: float(r.summary[key]) for r in finished}

    rows = []
    for label in curves:
        if label == references[0]:
            continue
        final, best = (
            stats.paired_difference(by_seed(label, k), by_seed(references[0], k)) for k in ACCURACIES
        )
        rows.append({
            "curve": label, "reference": references[0], "pairs": final.pairs,
            "final_acc_diff_mean": final.mean, "final_acc_diff_ci95": final.ci,
            "best_acc_diff_mean": best.mean, "best_acc_diff_ci95": best.ci,
            "interval_excludes_zero": final.excludes_zero,
        })  # fmt: skip
    return rows


def _fig1_cells(row: dict[str, Any]) -> list[str]:
    """A Fig. 1 table row: accuracies as '88.63% +- 0.31 (std 0.40)' (95% half-width, sample std)."""
    accuracies = [
        spread(row[f"{k}_acc_mean"], row[f"{k}_acc_ci95"], "{:.2f}%", 100, "{:.2f}")
        + ("" if row[f"{k}_acc_std"] is None else f" (std {100 * row[f'{k}_acc_std']:.2f})")
        for k in ("final", "best")
    ]
    reaching = "-" if row["seeds_reaching_target"] is None else row["seeds_reaching_target"]
    per_seed = spread(row["seed_steps_to_target_mean"], row["seed_steps_to_target_ci95"], "{:,.0f}")
    return [
        row["curve"], f"{row['runs']} ({row['finished']})", *accuracies,
        spread(row["steps_to_target"], None, "{:,}"), spread(row["speedup"], None, "{:.1f}x"),
        f"{per_seed} ({reaching}/{row['finished']})",
    ]  # fmt: skip


def _difference_cells(row: dict[str, Any]) -> list[Any]:
    """A row of the paired differences: in accuracy points, mean +- 95% half-width."""
    excludes = row["interval_excludes_zero"]
    return [
        row["curve"], row["pairs"],
        *(spread(row[f"{k}_acc_diff_mean"], row[f"{k}_acc_diff_ci95"], "{:+.3f}", 100, "{:.3f}")
          for k in ("final", "best")),
        "-" if excludes is None else "yes" if excludes else "no",
    ]  # fmt: skip


def write_fig1_table(runs: Sequence[RunData], out_dir: Path, stem: str, report: Report) -> None:
    rows = fig1_rows(runs)
    target = rows[0]["target_acc"] if rows else None
    target_text = f"{100 * target:.2f}% (no-BN best)" if target else "the no-BN best (no no-BN runs)"
    columns = (
        "curve", "seeds (finished)", "final test acc", "best test acc", f"steps to {target_text}, mean curve",
        "speedup", "each seed's steps to it (seeds reaching it)",
    )  # fmt: skip
    lines = [
        f"**Fig. 1 numbers: {_title(runs)}**",
        "",
        *markdown_table(columns, map(_fig1_cells, rows)),
        "",
        "Mean +- the half-width of the 95% Student t-interval of the mean over the seeds that finished "
        "(sample std in brackets). Steps to the target: the first evaluation at or above it, on the "
        "seed-mean curve (and the speedup from it), and on each seed's own curve (mean +- 95% t-interval "
        "over the seeds that reach it).",
    ]
    differences = fig1_differences(runs)
    if differences:
        lines += [
            "",
            f"**Against {differences[0]['reference']}, paired by seed** (curve minus reference; mean +- "
            "95% t-interval of the per-seed difference, in accuracy points)",
            "",
        ]
        columns = ("curve", "seed pairs", "final test acc difference", "best test acc difference")
        lines += markdown_table((*columns, "interval excludes 0"), map(_difference_cells, differences))
        report.written.append(
            write_csv(out_dir / f"{stem}_differences.csv", FIG1_DIFFERENCE_COLUMNS, differences)
        )
    md_path = out_dir / f"{stem}.md"
    md_path.write_text("\n".join(lines) + "\n")
    report.written += [md_path, write_csv(out_dir / f"{stem}.csv", FIG1_COLUMNS, rows)]


def write_summary_csv(runs: Sequence[RunData], out_dir: Path) -> Path:
    ordered = sorted(
        runs, key=lambda r: (r.experiment_name, r.dataset, not r.without_norm, r.norm_label, r.seed or 0)
    )
    rows = [
        {
            "experiment_name": run.experiment_name, "dataset": run.dataset, "norm": run.norm_kind,
            "backward": run.backward, "seed": run.seed, "max_steps": run.max_steps,
            "diverged": run.run.diverged, "status": run.run.status,
            "run_dir": os.path.relpath(run.run.run_dir, out_dir),
            **{k: run.summary.get(k) for k in ("steps", *ACCURACIES, "wall_time_s", "steps_per_s")},
        }
        for run in ordered
    ]  # fmt: skip
    return write_csv(out_dir / "summary.csv", SUMMARY_COLUMNS, rows)


# ---------------------------------------------------------------------------------------------- entry


def make_figures(paths: Iterable[str | Path], out_dir: str | Path) -> Report:
    """Every figure and table the runs in `paths` allow, into `out_dir`; raises NoRunsError without runs."""
    runs = load_all(paths)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = Report()
    fig1_runs, fig2_runs = [], []
    for run in runs:  # a run of the speedup experiment (a fig2_* or fig2cpu_* preset) is a Fig. 2 run
        (fig2_runs if speedup.family_of(run.experiment_name) else fig1_runs).append(run)
    if not fig1_runs:
        report.notes.append("Fig. 1 skipped: no Fig. 1 runs (every run is a fig2_* one)")
    for suffix, group in _figure_groups(fig1_runs).items():
        plot_fig1a(group, out_dir, f"fig1a_test_accuracy_{suffix}", report)
        write_fig1_table(group, out_dir, f"fig1_table_{suffix}", report)
        if not plot_fig1bc(group, out_dir, f"fig1bc_activations_{suffix}", report):
            report.notes.append(
                f"Fig. 1(b,c) for {_title(group)} skipped: no run has {measurement_file('activations')} rows"
            )
    if not fig2_runs:
        report.notes.append("Fig. 2 and the Fig. 3 table skipped: no fig2_* runs")
    for suffix, group in _figure_groups(fig2_runs).items():
        plot_fig2(group, out_dir, f"fig2_speedup_{suffix}", report)
        write_fig3_table(group, out_dir, f"fig3_table_{suffix}", report)
    for run in runs:
        if run.stopped_early:
            report.notes.append(f"{run.run.run_dir}: {_stop_text(run)}; drawn alone, left out of the means")
    report.written.append(write_summary_csv(runs, out_dir))
    return report
