"""Figures and tables of the batch papers' experiments (issue "The batch in BatchNorm"), from run dirs.

    tables = draw_all(["multirun/"], "figures/")   # every experiment found, by experiment_name

- gn_batch_size (Wu & He 2018, Fig. 1): final test error vs batch size per norm, mean +- std over seeds;
  and, from eval_stats at the end of each run, PreciseBN's accuracy against N with the moving averages
  and the test batches' own statistics beside it.
- brn_small_batch, brn_non_iid (Ioffe 2017): test accuracy over training per norm (and sampler), mean
  with a min-max band over seeds.
- ghost_large_batch (Hoffer et al. 2017): final / best test accuracy, final train accuracy and the
  generalization gap (train - test) per setting; curves.
- precise_bn (Wu & Johnson 2021): accuracy over training with the moving averages, PreciseBN per N and
  the test batches' statistics, per learning rate; and the final accuracy against N.

A setting is what a run's config says besides its seed (norm, batch, sampler, lr, epochs); seeds of a
setting are merged: mean and sample std, the band min-max.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from bn_repro import norms
from bn_repro.analysis.runs_table import find_run_dirs, read_summary
from bn_repro.analysis.stats import mean_std
from bn_repro.records.run_files import read_csv

EXPERIMENTS = ("gn_batch_size", "brn_small_batch", "brn_non_iid", "ghost_large_batch", "precise_bn")
PNG_DPI = 120
# Wu & He 2018 (ResNet-50, ImageNet; ../shared/paper_notes.md, "check"): error (%) at batch per GPU.
GN_PAPER = {
    "builtin": {32: 23.6, 16: 23.7, 8: 24.8, 4: 27.3, 2: 34.7},
    "groupnorm": {32: 24.1, 16: 24.2, 8: 24.0, 4: 24.2, 2: 24.1},
}


class NoRunsError(FileNotFoundError):
    pass


class Run:
    """One run dir: its config, metrics rows and (when present) eval_stats rows."""

    def __init__(self, run_dir: Path):
        self.dir = run_dir
        self.summary = read_summary(run_dir)
        self.config = self.summary.get("config", {})
        self.metrics = read_csv(run_dir / "metrics.csv") if (run_dir / "metrics.csv").exists() else []
        path = run_dir / "eval_stats.csv"
        self.eval_stats = read_csv(path) if path.exists() else []

    @property
    def experiment(self) -> str:
        return self.summary["experiment_name"]

    @property
    def finished(self) -> bool:
        return self.summary.get("status") == "finished"

    def get(self, dotted: str, default=None):
        value: Any = self.config
        for key in dotted.split("."):
            if not isinstance(value, dict) or key not in value:
                return default
            value = value[key]
        return value

    @property
    def norm_label(self) -> str:
        kind = self.get("norm.kind", "?")
        try:
            label = norms.label(self.get("norm"))
        except Exception:  # an entry no longer registered: its kind
            label = kind
        return label

    def series(self, column: str) -> dict[int, float]:
        return {int(r["step"]): float(r[column]) for r in self.metrics if r[column] not in ("", "nan")}


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
    try:
        runs = [Run(d) for d in find_run_dirs(paths)]
    except FileNotFoundError as error:
        raise NoRunsError(str(error)) from error
    runs = [r for r in runs if r.experiment in EXPERIMENTS]
    if not runs:
        raise NoRunsError(f"no runs of {', '.join(EXPERIMENTS)} in {', '.join(map(str, paths))}")
    return runs


def pct(values: Sequence[float]) -> str:
    if not values:
        return "-"
    mean, std = mean_std([100 * v for v in values])
    return f"{mean:.2f}" + ("" if std is None else f" +- {std:.2f}")


def _natural(text: Any) -> list:
    """Sort key: numbers inside a label by value ("batch 2" before "batch 16")."""
    return [
        float(t) if t.replace(".", "", 1).isdigit() else t for t in re.split(r"(\d+(?:\.\d+)?)", str(text))
    ]


def group(runs: Iterable[Run], key) -> dict[Any, list[Run]]:
    out: dict[Any, list[Run]] = {}
    for run in runs:
        out.setdefault(key(run), []).append(run)
    return dict(sorted(out.items(), key=lambda kv: _natural(kv[0])))


def _final(run: Run, column: str = "test_acc") -> float:
    series = run.series(column)
    return series[max(series)]


def _save(fig: Figure, out: Path, name: str, written: list[Path]) -> None:
    path = out / f"{name}.png"
    fig.savefig(path, dpi=PNG_DPI, bbox_inches="tight")
    written.append(path)


def _curves(ax, runs_by_label: dict[str, list[Run]], column: str = "test_acc") -> None:
    for i, (label, runs) in enumerate(runs_by_label.items()):
        finished = [r for r in runs if r.finished]
        if not finished:
            continue
        steps = sorted(set.intersection(*(set(r.series(column)) for r in finished)))
        values = np.array([[r.series(column)[s] for s in steps] for r in finished]) * 100
        color = f"C{i % 10}"
        ax.plot(steps, values.mean(0), color=color, lw=1.5, label=f"{label} ({len(finished)} seeds)")
        if len(finished) > 1:
            ax.fill_between(steps, values.min(0), values.max(0), color=color, alpha=0.2, lw=0)
    ax.set_xlabel("training steps")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


# ------------------------------------------------------------------------------------- experiments


def gn_batch_size(runs: list[Run], out: Path, written: list[Path]) -> str:
    finished = [r for r in runs if r.finished]
    by_norm = group(finished, lambda r: r.norm_label)
    batches = sorted({r.get("data.batch_size") for r in finished})
    seen = sorted({r.get("trainer.max_steps") * r.get("data.batch_size") for r in finished})
    examples = ", ".join(f"{n:,}" for n in seen)
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    lines = [
        "**Error vs batch size (Wu & He 2018, Fig. 1 style)**: final test error (%), mean +- std over "
        f"seeds (n); training examples seen (steps x batch): {examples}; lr scaled linearly with the batch.",
        "",
        "| norm | " + " | ".join(f"batch {b}" for b in batches) + " |",
        "|---|" + "---|" * len(batches),
    ]
    for i, (label, group_runs) in enumerate(by_norm.items()):
        by_batch = group(group_runs, lambda r: r.get("data.batch_size"))
        xs, means, stds, cells = [], [], [], []
        for b in batches:
            errors = [1 - _final(r) for r in by_batch.get(b, [])]
            if not errors:
                cells.append("-")
                continue
            mean, std = mean_std([100 * e for e in errors])
            xs.append(b), means.append(mean), stds.append(std or 0.0)
            cells.append(f"{mean:.2f}" + ("" if std is None else f" +- {std:.2f}") + f" ({len(errors)})")
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, color=f"C{i}", label=label)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_xlabel("batch size (examples per step)")
    ax.set_ylabel("final test error (%)")
    ax.set_title(
        "Error vs batch size, Fashion-MNIST, VGG-11 at 1/8 width\nmean +- std over seeds", fontsize=10
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, out, "gn_batch_size_error", written)
    lines += [
        "",
        "Wu & He's ResNet-50 on ImageNet (error %, batch per GPU 32/16/8/4/2; paper_notes, check): "
        "BN 23.6/23.7/24.8/27.3/34.7, GN 24.1/24.2/24.0/24.2/24.1.",
    ]
    stats = [r for r in finished if r.eval_stats]
    if stats:
        lines += [
            "",
            *_eval_stats_final_table(stats, lambda r: f"{r.norm_label}, batch {r.get('data.batch_size')}"),
        ]
        _eval_stats_vs_n(
            stats,
            lambda r: f"batch {r.get('data.batch_size')}",
            out,
            "gn_batch_size_precise_bn",
            written,
            title="BN at each batch size: final test accuracy vs PreciseBN's N",
            only=lambda r: r.get("norm.kind") == "builtin",
        )
    return "\n".join(lines) + "\n"


def _last_stats(run: Run) -> dict[tuple[str, int], float]:
    last = max(int(r["step"]) for r in run.eval_stats)
    return {(r["stats"], int(r["n"])): float(r["test_acc"]) for r in run.eval_stats if int(r["step"]) == last}


def _eval_stats_final_table(runs: list[Run], label) -> list[str]:
    keys = sorted(
        {k for r in runs for k in _last_stats(r)},
        key=lambda k: (("ema", "precise", "batch").index(k[0]), k[1]),
    )
    names = [f"{s}" if s != "precise" else f"PreciseBN N={n:,}" for s, n in keys]
    lines = [
        "Final test accuracy (%) by normalization statistics (eval_stats): moving averages (ema), "
        "PreciseBN from N training examples, the test batches' own statistics (batch).",
        "",
        "| setting | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for name, group_runs in group(runs, label).items():
        if not any(k[0] != "ema" for r in group_runs for k in _last_stats(r)):
            continue  # no BN statistics to vary (LayerNorm, GroupNorm)
        cells = [pct([_last_stats(r)[k] for r in group_runs if k in _last_stats(r)]) for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _eval_stats_vs_n(runs, label, out, name, written, title, only=lambda r: True) -> None:
    runs = [r for r in runs if only(r)]
    if not runs:
        return
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for i, (curve, group_runs) in enumerate(group(runs, label).items()):
        stats = [_last_stats(r) for r in group_runs]
        ns = sorted({k[1] for s in stats for k in s if k[0] == "precise"})
        if not ns:
            continue
        acc = np.array([[s[("precise", n)] for n in ns] for s in stats]) * 100
        color = f"C{i % 10}"
        ax.errorbar(
            ns,
            acc.mean(0),
            yerr=acc.std(0, ddof=1) if len(stats) > 1 else None,
            marker="o",
            color=color,
            capsize=3,
            label=f"{curve}: PreciseBN",
        )
        ema = np.mean([s[("ema", 0)] for s in stats]) * 100
        ax.axhline(ema, color=color, ls="--", lw=0.9, label=f"{curve}: moving averages")
        if all(("batch", 0) in s for s in stats):
            ax.axhline(
                np.mean([s[("batch", 0)] for s in stats]) * 100,
                color=color,
                ls=":",
                lw=0.9,
                label=f"{curve}: test-batch statistics",
            )
    ax.set_xscale("log")
    ax.set_xlabel("N: training examples behind PreciseBN's statistics")
    ax.set_ylabel("final test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    _save(fig, out, name, written)


def curves_experiment(runs: list[Run], out: Path, written: list[Path], name: str, label, title: str) -> str:
    finished = [r for r in runs if r.finished]
    by_label = group(runs, label)
    fig = Figure(figsize=(7.0, 4.2), layout="constrained")
    _curves(fig.add_subplot(), by_label)
    fig.axes[0].set_title(title, fontsize=10)
    _save(fig, out, f"{name}_curves", written)
    lines = [
        f"**{title}** (mean +- std over seeds)",
        "",
        "| setting | runs | final test acc (%) | best test acc (%) | final train acc (%) |",
        "|---|---|---|---|---|",
    ]
    for setting, group_runs in by_label.items():
        done = [r for r in group_runs if r in finished]
        lines.append(
            f"| {setting} | {len(done)}/{len(group_runs)} | {pct([_final(r) for r in done])} | "
            f"{pct([max(r.series('test_acc').values()) for r in done])} | "
            f"{pct([_final(r, 'train_acc') for r in done])} |"
        )
    return "\n".join(lines) + "\n"


def ghost_large_batch(runs: list[Run], out: Path, written: list[Path]) -> str:
    def label(r: Run) -> str:
        batch, lr = r.get("data.batch_size"), r.get("optim.lr")
        return f"batch {batch}, {r.norm_label}, {r.get('epochs')} epochs, lr {lr}"

    text = curves_experiment(
        runs,
        out,
        written,
        "ghost_large_batch",
        label,
        "Ghost BN at a large batch (Hoffer et al. 2017 style), Fig. 1 MLP",
    )
    finished = [r for r in runs if r.finished]
    lines = ["", "| setting | generalization gap: final train - test acc (points) |", "|---|---|"]
    for setting, group_runs in group(finished, label).items():
        gaps = [_final(r, "train_acc") - _final(r) for r in group_runs]
        lines.append(f"| {setting} | {pct(gaps)} |")
    return text + "\n".join(lines) + "\n"


def precise_bn(runs: list[Run], out: Path, written: list[Path]) -> str:
    finished = [r for r in runs if r.finished and r.eval_stats]
    by_lr = group(finished, lambda r: f"lr {r.get('optim.lr')}")
    fig = Figure(figsize=(11.0, 4.0), layout="constrained")
    axes = fig.subplots(1, max(len(by_lr), 1), squeeze=False)[0]
    for ax, (lr, group_runs) in zip(axes, by_lr.items(), strict=False):
        kinds = sorted(
            {(r["stats"], int(r["n"])) for run in group_runs for r in run.eval_stats},
            key=lambda k: (("ema", "precise", "batch").index(k[0]), k[1]),
        )
        for i, kind in enumerate(kinds):
            per_run = []
            for run in group_runs:
                per_run.append(
                    {
                        int(r["step"]): float(r["test_acc"])
                        for r in run.eval_stats
                        if (r["stats"], int(r["n"])) == kind
                    }
                )
            steps = sorted(set.intersection(*(set(p) for p in per_run)))
            values = np.array([[p[s] for s in steps] for p in per_run]) * 100
            name = {"ema": "moving averages", "batch": "test-batch statistics"}.get(
                kind[0], f"PreciseBN N={kind[1]:,}"
            )
            ax.plot(steps, values.mean(0), color=f"C{i}", lw=1.3, label=name)
            if len(per_run) > 1:
                ax.fill_between(steps, values.min(0), values.max(0), color=f"C{i}", alpha=0.15, lw=0)
        ax.set_title(f"BN, Fig. 1 MLP, {lr} ({len(group_runs)} seeds)", fontsize=10)
        ax.set_xlabel("training steps")
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(bottom=max(ax.get_ylim()[0], 50))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    _save(fig, out, "precise_bn_over_training", written)
    _eval_stats_vs_n(
        finished,
        lambda r: f"lr {r.get('optim.lr')}",
        out,
        "precise_bn_vs_n",
        written,
        title="Fig. 1 MLP with BN: final test accuracy vs PreciseBN's N",
    )
    early = [
        "",
        "Early in training (step 500) and at the end, test accuracy (%) by statistics, mean +- std:",
        "",
        "| setting | step | moving averages | PreciseBN N=1,000 | PreciseBN N=60,000 | test batches |",
        "|---|---|---|---|---|---|",
    ]
    for lr, group_runs in by_lr.items():
        last = max(int(r["step"]) for r in group_runs[0].eval_stats)
        for step in (500, last):

            def at(kind, n, step=step, group_runs=group_runs):
                return [
                    float(r["test_acc"])
                    for run in group_runs
                    for r in run.eval_stats
                    if int(r["step"]) == step and r["stats"] == kind and int(r["n"]) == n
                ]

            early.append(
                f"| {lr} | {step:,} | {pct(at('ema', 0))} | {pct(at('precise', 1000))} | "
                f"{pct(at('precise', 60000))} | {pct(at('batch', 0))} |"
            )
    head = "**PreciseBN and the train/eval discrepancy (Wu & Johnson 2021 style)**\n\n"
    table = "\n".join(_eval_stats_final_table(finished, lambda r: f"lr {r.get('optim.lr')}"))
    return head + table + "\n" + "\n".join(early) + "\n"


def draw_all(paths: Iterable[str | Path], out_dir: str | Path) -> tuple[list[Path], str]:
    """Every figure and table the runs allow; returns the files written and the combined markdown."""
    runs = load_runs(paths)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    sections = []
    by_experiment = group(runs, lambda r: r.experiment)
    for name in EXPERIMENTS:
        group_runs = by_experiment.get(name)
        if not group_runs:
            continue
        if name == "gn_batch_size":
            text = gn_batch_size(group_runs, out, written)
        elif name == "brn_small_batch":
            text = curves_experiment(
                group_runs,
                out,
                written,
                name,
                lambda r: f"{r.norm_label}, batch {r.get('data.batch_size')}",
                "Batch Renorm on microbatches of 4 (Ioffe 2017, Fig. 2 style)",
            )
        elif name == "brn_non_iid":
            text = curves_experiment(
                group_runs,
                out,
                written,
                name,
                lambda r: f"{r.norm_label}, {r.get('data.sampler')} batches",
                "Batch Renorm on non-i.i.d. batches: 2 classes per batch of 32 (Ioffe 2017, Fig. 3 style)",
            )
        elif name == "ghost_large_batch":
            text = ghost_large_batch(group_runs, out, written)
        else:
            text = precise_bn(group_runs, out, written)
        path = out / f"{name}_table.md"
        path.write_text(text)
        written.append(path)
        sections.append(text)
    combined = "\n".join(sections)
    path = out / "batch_tables.md"
    path.write_text(combined)
    written.append(path)
    return written, combined
