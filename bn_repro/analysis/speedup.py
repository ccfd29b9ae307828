"""Steps to reach the no-BN baseline's best accuracy, and the speedup: the paper's Fig. 3 table.

    runs = load_runs(["multirun/default/2026-01-01_00-00-00"])  # run dirs, or folders holding them
    rows = fig3_table(runs)                                      # one dict per variant
    write_fig3(rows, "results")         # results/fig3_table.md and results/fig3_table.csv

Definitions (the paper: "the number of training steps required to reach the maximum accuracy of
Inception"):
- A run is one Hydra job's dir (summary.json + metrics.csv). Runs are grouped into variants by
  `experiment_name`; the seeds of a variant are averaged.
- A variant's curve is the test accuracy at each evaluation step, averaged over the variant's runs
  that finished without diverging (at the evaluation steps all of them share). With one seed it is
  that run's curve. Runs that are still running or failed are left out and counted as `incomplete`.
- The target is the highest point of the baseline's seed-mean curve (fig2_inception: no BN, base LR;
  for the CPU-scale family fig2cpu_*, fig2cpu_inception).
- steps_to_target is the first evaluation step at which a variant's curve is >= the target, None
  when it never is (the paper's "-"); speedup = the baseline's steps_to_target / the variant's (both
  read on seed-mean curves).
- max_acc is the highest point of the variant's curve.
- Over seeds (the *_mean / *_std columns, sample std, empty with one seed): each finished seed's own
  curve against the same target. steps_to_target_mean/std over the seeds that reach it
  (reached_seeds of them); speedup_mean/std of the baseline curve's steps_to_target over each such
  seed's (the baseline's own seeds need not each reach its mean curve's best, so they are not paired);
  max_acc_mean/std of each seed's best accuracy.
- The paper's ImageNet numbers (Fig. 3, section 4.2) sit beside each row (paper_* columns).
- A variant whose runs all diverged has no curve: status "diverged". Diverged seeds of a variant
  that also has finished ones are counted in `diverged` and left out of its curve.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bn_repro.analysis.runs_table import METRICS, find_run_dirs, read_summary
from bn_repro.analysis.stats import mean_std
from bn_repro.analysis.tables import markdown_table, spread, write_csv
from bn_repro.records.run_files import SUMMARY_FILE, read_measurement

BASELINE = "fig2_inception"
# Preset families of the speedup experiment: fig2_* (the paper's schedules) and fig2cpu_* (the whole
# schedules at CPU scale). A family's baseline is its `inception` variant.
FAMILIES = ("fig2cpu_", "fig2_")
# The paper's variants (names without their family prefix) in its row order (Fig. 3), then its remarks
# (sigmoid Inception, Inception at BN-x5's lr); other variants follow alphabetically. Each with the paper's
# name for it and its ImageNet results (Fig. 3 and section 4.2.2): steps to 72.2% and max accuracy.
PAPER_VARIANTS = {
    "inception": ("Inception", "31.0e6", "72.2%"),
    "bn_baseline": ("BN-Baseline", "13.3e6", "72.7%"),
    "bn_x5": ("BN-x5", "2.1e6", "73.0%"),
    "bn_x30": ("BN-x30", "2.7e6", "74.8%"),
    "bn_x5_sigmoid": ("BN-x5-Sigmoid", "-", "69.8%"),
    "sigmoid": ("Inception-Sigmoid", "-", "never above 0.1%"),
    "inception_x5": ("Inception at BN-x5's lr", "-", "diverged"),
}
PAPER_ORDER = tuple(f"fig2_{v}" for v in list(PAPER_VARIANTS)[:6])
PAPER_IMAGENET = {variant: (steps, acc) for variant, (_, steps, acc) in PAPER_VARIANTS.items()}
FIG3_COLUMNS = (
    "variant", "lr", "runs", "diverged", "incomplete", "status", "target_acc", "steps_to_target", "speedup",
    "max_acc", "max_acc_step", "steps_to_target_per_seed", "best_acc_per_seed",
    # Over seeds (each seed's own curve against the target of the baseline's seed-mean curve):
    "reached_seeds", "steps_to_target_mean", "steps_to_target_std", "speedup_mean", "speedup_std",
    "max_acc_mean", "max_acc_std", "paper_steps_to_target", "paper_speedup", "paper_max_acc",
)  # fmt: skip


def family_of(experiment_name: str) -> str | None:
    return next((p for p in FAMILIES if experiment_name.startswith(p)), None)


def variant_of(experiment_name: str) -> str:
    """The variant without its family prefix: fig2cpu_bn_x5 -> bn_x5."""
    return experiment_name.removeprefix(family_of(experiment_name) or "")


def baseline_of(names: Iterable[str]) -> str:
    """The baseline among these experiment names: fig2_inception, else the one family's inception."""
    names = list(names)
    if BASELINE in names:
        return BASELINE
    found = sorted(n for n in names if family_of(n) and variant_of(n) == "inception")
    if len(found) == 1:
        return found[0]
    # No inception run (yet): name the one family's baseline, so that the error says what is missing.
    families = {family_of(n) for n in names}
    return f"{families.pop()}inception" if len(families) == 1 and None not in families else BASELINE


def paper_speedup(experiment_name: str) -> float | None:
    """The paper's ImageNet speedup of a variant: Inception's steps to 72.2% over the variant's (14.8x for
    BN-x5); None where the paper gives no steps (or for a name outside the speedup families)."""
    steps = PAPER_IMAGENET.get(variant_of(experiment_name), ("-",))[0] if family_of(experiment_name) else "-"
    return None if steps == "-" else float(PAPER_IMAGENET["inception"][0]) / float(steps)


FIG3_FILE_STEM = "fig3_table"


@dataclass(frozen=True)
class Run:
    run_dir: Path
    experiment_name: str
    seed: int | None
    lr: float | None
    status: str  # summary.json's: running | finished | diverged | failed
    steps: tuple[int, ...]
    test_acc: tuple[float, ...]

    @property
    def diverged(self) -> bool:
        return self.status == "diverged"


@dataclass(frozen=True)
class Curve:
    """A variant's seed-averaged test accuracy at its evaluation steps."""

    steps: tuple[int, ...]
    test_acc: tuple[float, ...]
    runs: tuple[Run, ...]

    @property
    def max_acc(self) -> float:
        return max(self.test_acc)

    @property
    def max_acc_step(self) -> int:
        return self.steps[self.test_acc.index(self.max_acc)]


def steps_to_target(steps: Sequence[int], test_acc: Sequence[float], target: float) -> int | None:
    """The first evaluation step whose accuracy is >= target; None if none is."""
    return next((step for step, acc in zip(steps, test_acc, strict=True) if acc >= target), None)


def steps_to_target_per_run(runs: Iterable[Run], target: float) -> list[int | None]:
    """Each run's own first evaluation step at or above target (None where it never is), in order."""
    return [steps_to_target(r.steps, r.test_acc, target) for r in runs]


def load_run(run_dir: str | Path, summary: dict[str, Any] | None = None) -> Run:
    """A run dir's curve and status (`summary`: its summary.json, when the caller has read it)."""
    run_dir = Path(run_dir)
    summary = read_summary(run_dir) if summary is None else summary
    config = summary.get("config", {})
    metrics = read_measurement(run_dir, METRICS)  # [] without a metrics.csv
    return Run(
        run_dir=run_dir, experiment_name=summary["experiment_name"], seed=config.get("seed"),
        lr=config.get("optim", {}).get("lr"), status=summary["status"],
        steps=tuple(int(r["step"]) for r in metrics), test_acc=tuple(float(r["test_acc"]) for r in metrics),
    )  # fmt: skip


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
    """The runs in `paths` (run dirs, or folders searched for them: a sweep dir, a results tree)."""
    runs = [load_run(d) for d in find_run_dirs(paths)]
    if not runs:
        raise FileNotFoundError(f"no {SUMMARY_FILE} found in {', '.join(map(str, paths))}")
    return runs


def group_by_variant(runs: Iterable[Run], baseline: str = BASELINE) -> dict[str, list[Run]]:
    """Runs (or anything with an experiment_name: figures.RunData) by experiment_name: the baseline first,
    then PAPER_ORDER, then the others alphabetically."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.experiment_name, []).append(run)
    rank = {f"{family}{v}": i for family in FAMILIES for i, v in enumerate(PAPER_VARIANTS)}
    return dict(sorted(groups.items(), key=lambda g: (g[0] != baseline, rank.get(g[0], len(rank)), g[0])))


def mean_curve(runs: Sequence[Run]) -> Curve | None:
    """The seed-averaged curve of the finished runs; None when no run finished."""
    finished = [r for r in runs if r.status == "finished" and r.steps]
    if not finished:
        return None
    steps = tuple(sorted(set(finished[0].steps).intersection(*(r.steps for r in finished[1:]))))  # shared
    per_run = [dict(zip(r.steps, r.test_acc, strict=True)) for r in finished]
    acc = tuple(math.fsum(points[s] for points in per_run) / len(per_run) for s in steps)
    return Curve(steps=steps, test_acc=acc, runs=tuple(finished))


def fig3_table(
    runs_or_paths: Iterable[Run | str | Path], baseline: str | None = None, target: float | None = None
) -> list[dict[str, Any]]:
    """One row per variant (columns FIG3_COLUMNS, module docstring), the baseline first.

    `runs_or_paths`: Run objects or paths for `load_runs`. `baseline`: the experiment_name setting the
    target (default: baseline_of the runs). `target` replaces the baseline's best accuracy as the accuracy
    to reach (the baseline must still be present: it anchors the speedup)."""
    items = list(runs_or_paths)
    paths = [p for p in items if not isinstance(p, Run)]
    runs = [r for r in items if isinstance(r, Run)] + (load_runs(paths) if paths else [])
    if baseline is None:
        baseline = baseline_of({r.experiment_name for r in runs})
    groups = group_by_variant(runs, baseline)
    if baseline not in groups:
        raise ValueError(f"no runs of the baseline {baseline!r}; variants found: {', '.join(groups)}")
    curves = {name: mean_curve(group) for name, group in groups.items()}
    if curves[baseline] is None:
        statuses = ", ".join(f"{r.run_dir}: {r.status}" for r in groups[baseline])
        raise ValueError(f"the baseline {baseline!r} has no finished run to set the target ({statuses})")
    if target is None:
        target = curves[baseline].max_acc
    baseline_steps = steps_to_target(curves[baseline].steps, curves[baseline].test_acc, target)

    rows = []
    for name, group in groups.items():
        curve = curves[name]
        lrs = sorted({r.lr for r in group if r.lr is not None})
        diverged = sum(r.diverged for r in group)
        steps = steps_to_target(curve.steps, curve.test_acc, target) if curve else None
        per_seed = steps_to_target_per_run(curve.runs, target) if curve else []
        reached = [s for s in per_seed if s is not None]
        best = [max(r.test_acc) for r in curve.runs] if curve else []
        status = "diverged" if diverged else "incomplete"  # without a curve: no seed finished
        if curve is not None:
            status = "reached" if steps is not None else "not reached"
        paper = PAPER_IMAGENET.get(variant_of(name), (None, None)) if family_of(name) else (None, None)
        row = {
            "variant": name, "lr": lrs[0] if len(lrs) == 1 else ";".join(map(str, lrs)), "runs": len(group),
            "diverged": diverged, "incomplete": sum(r.status not in ("finished", "diverged") for r in group),
            "status": status, "target_acc": target, "steps_to_target": steps,
            # A curve at the target from step 0 on (a fixed low target) has no finite speedup: left empty.
            "speedup": baseline_steps / steps if steps and baseline_steps else None,
            "max_acc": curve.max_acc if curve else None,
            "max_acc_step": curve.max_acc_step if curve else None,
            "steps_to_target_per_seed": per_seed, "best_acc_per_seed": best, "reached_seeds": len(reached),
            "paper_steps_to_target": paper[0], "paper_speedup": paper_speedup(name),
            "paper_max_acc": paper[1],
        }  # fmt: skip
        row["steps_to_target_mean"], row["steps_to_target_std"] = mean_std(reached)
        seed_speedups = [baseline_steps / s for s in reached if s] if baseline_steps else []
        row["speedup_mean"], row["speedup_std"] = mean_std(seed_speedups)
        row["max_acc_mean"], row["max_acc_std"] = mean_std(best)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------- tables


def _fig3_cells(row: dict[str, Any], seeds: bool) -> list[Any]:
    """A row's cells in fig3_markdown: the paper's columns, and with `seeds` the spread over seeds."""
    runs = str(row["runs"])
    notes = [f"{row[k]} {k}" for k in ("diverged", "incomplete") if row[k]]
    if notes:
        runs += f" ({', '.join(notes)})"
    unfinished = row["status"] in ("diverged", "incomplete")
    steps = row["status"] if unfinished else spread(row["steps_to_target"], None, "{:,}")
    speedup = spread(row["speedup"], None, "{:.1f}x")
    if not seeds:
        return [row["variant"], row["lr"], runs, steps, speedup, spread(row["max_acc"], None, "{:.2f}%", 100)]
    per_seed = row["status"]
    if not unfinished:
        reached = f" ({row['reached_seeds']}/{len(row['steps_to_target_per_seed'])})"  # of the finished
        per_seed = spread(row["steps_to_target_mean"], row["steps_to_target_std"], "{:,.0f}") + reached
    paper = "-"
    if row["paper_max_acc"] is not None:
        speedup_text = "" if row["paper_speedup"] is None else f" ({row['paper_speedup']:.1f}x)"
        paper = f"{row['paper_steps_to_target']}{speedup_text}, {row['paper_max_acc']}"
    return [
        row["variant"], row["lr"], runs, steps, per_seed, speedup,
        spread(row["speedup_mean"], row["speedup_std"], "{:.1f}", end="x"),
        spread(row["max_acc_mean"], row["max_acc_std"], "{:.2f}", 100, end="%"), paper,
    ]  # fmt: skip


def fig3_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The table as the paper prints it: steps to the target, speedup, max accuracy (baseline row first).
    With several seeds per variant, the spread over seeds and the paper's ImageNet numbers too."""
    target = spread(rows[0]["target_acc"], None, "{:.2f}%", 100)
    intro = f"Steps to reach {target} test accuracy (the best of {rows[0]['variant']}"
    columns = ["variant", "LR", "runs", f"steps to {target}", "speedup", "max acc"]
    seeds = any(row["runs"] > 1 for row in rows)
    if seeds:
        intro += (
            "'s seed-mean curve; paper Fig. 3). Per seed: mean +- sample std over the seeds that reach it "
            "(reached/finished); a seed's speedup is the baseline curve's steps over its own. Max acc: each "
            "seed's best, mean +- std."
        )
        columns[3:] = [
            f"steps to {target} (mean curve)", "per seed", "speedup (mean curve)", "speedup per seed",
            "max acc per seed", "paper (ImageNet): steps to 72.2% (speedup), max acc",
        ]  # fmt: skip
    else:
        intro += "; paper Fig. 3)."
    lines = [intro, "", *markdown_table(columns, [_fig3_cells(row, seeds) for row in rows])]
    controls = [row["variant"] for row in rows if variant_of(row["variant"]) == "inception_x5"]
    if seeds and controls:
        note = "the paper's control, no BN at BN-x5's learning rate (section 4.2: it diverged on ImageNet)."
        lines += ["", f"{', '.join(controls)}: {note}"]
    return "\n".join(lines) + "\n"


def write_fig3(
    rows: Sequence[dict[str, Any]], out_dir: str | Path, stem: str = FIG3_FILE_STEM
) -> tuple[Path, Path]:
    """Write `stem`.md and `stem`.csv into out_dir; per-seed lists become ';'-joined cells."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path = out_dir / f"{stem}.md"
    md_path.write_text(fig3_markdown(rows))
    return md_path, write_csv(out_dir / f"{stem}.csv", FIG3_COLUMNS, rows)
