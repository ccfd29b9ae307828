"""Figures and tables of the batch papers' experiments (EXPERIMENTS: Wu & He 2018, Ioffe 2017, Hoffer et
al. 2017, Wu & Johnson 2021), from run dirs; results/README.md's batch section says what each shows.

    tables = draw_all(["multirun/"], "figures/")   # every experiment found, by experiment_name

A setting is what a run's config says besides its seed (SETTINGS: norm, batch, sampler, lr, epochs);
seeds of a setting are merged: mean and sample std, the band min-max. The runs are read as runs_table's
tidy table (metrics and eval_stats rows); a run is its row there.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from bn_repro import norms
from bn_repro.analysis import runs_table
from bn_repro.analysis.plots import min_max_band, save
from bn_repro.analysis.stats import mean_std
from bn_repro.analysis.tables import markdown_table, spread

EXPERIMENTS = ("gn_batch_size", "brn_small_batch", "brn_non_iid", "ghost_large_batch", "precise_bn")
EVAL_STATS = "eval_stats"
STATS_ORDER = ("ema", "precise", "batch")  # eval_stats' kinds: moving averages, PreciseBN, test batches
STATS_NAMES = {"ema": "moving averages", "batch": "test-batch statistics"}  # the curves' labels
# The (stats, n) columns of precise_bn's table early in training and at the end, and their names.
EARLY_KINDS = (("ema", 0), ("precise", 1000), ("precise", 60000), ("batch", 0))
EARLY_NAMES = ("moving averages", "PreciseBN N=1,000", "PreciseBN N=60,000", "test batches")
PNG_DPI = 120
# Wu & He 2018 (ResNet-50, ImageNet; ../shared/paper_notes.md, "check"): error (%) at batch per GPU.
GN_PAPER = {
    "builtin": {32: 23.6, 16: 23.7, 8: 24.8, 4: 27.3, 2: 34.7},
    "groupnorm": {32: 24.1, 16: 24.2, 8: 24.0, 4: 24.2, 2: 24.1},
}
# How a run's setting is named in a table or figure: runs of one name are merged (their seeds).
SETTINGS = {
    "batch": lambda r: f"batch {r['data.batch_size']}",
    "norm_batch": lambda r: f"{r['norm_label']}, batch {r['data.batch_size']}",
    "sampler": lambda r: f"{r['norm_label']}, {r['data.sampler']} batches",
    "lr": lambda r: f"lr {r['optim.lr']:g}",
    "ghost": lambda r: (
        f"batch {r['data.batch_size']}, {r['norm_label']}, {r['epochs']:g} epochs, lr {r['optim.lr']:g}"
    ),
}
# The experiments drawn as test accuracy curves, with a table of final numbers: their setting and title.
CURVES = {
    "brn_small_batch": ("norm_batch", "Batch Renorm on microbatches of 4 (Ioffe 2017, Fig. 2 style)"),
    "brn_non_iid": (
        "sampler",
        "Batch Renorm on non-i.i.d. batches: 2 classes per batch of 32 (Ioffe 2017, Fig. 3 style)",
    ),
    "ghost_large_batch": ("ghost", "Ghost BN at a large batch (Hoffer et al. 2017 style), Fig. 1 MLP"),
}


class NoRunsError(FileNotFoundError):
    pass


def load_runs(paths: Iterable[str | Path]) -> pd.DataFrame:
    """The tidy table of these experiments' runs, with `norm_label` (the registry's label of the norm)."""
    paths = list(paths)
    try:
        table = runs_table.load_runs(paths, files=(runs_table.METRICS, EVAL_STATS))
    except FileNotFoundError as error:
        raise NoRunsError(f"no runs of {', '.join(EXPERIMENTS)}: {error}") from error
    table = table[table["experiment_name"].isin(EXPERIMENTS)]
    if table.empty:
        raise NoRunsError(f"no runs of {', '.join(EXPERIMENTS)} in {', '.join(map(str, paths))}")
    # From summary.json's norm node as written: the table's numbers can have turned float (128.0).
    labels = {
        run: norms.label(runs_table.read_summary(run).get("config", {}).get("norm") or {"kind": "?"})
        for run in table["run"].unique()
    }
    return table.assign(norm_label=table["run"].map(labels))


def pct(values: Iterable[float]) -> str:
    """Mean +- sample std, in %."""
    return spread(*mean_std([100 * v for v in values]), "{:.2f}")


def _natural(text: Any) -> list:
    """Sort key: numbers inside a label by value ("batch 2" before "batch 16")."""
    return [
        float(t) if t.replace(".", "", 1).isdigit() else t for t in re.split(r"(\d+(?:\.\d+)?)", str(text))
    ]


def group(runs: pd.DataFrame, key) -> dict[Any, pd.DataFrame]:
    """The runs by key(run row), in natural order of the keys; each group's runs in run dir order."""
    keys = runs.apply(key, axis=1, result_type="reduce")
    return dict(sorted(runs.groupby(keys, sort=False), key=lambda kv: _natural(kv[0])))


def _metric(table: pd.DataFrame, column: str) -> pd.DataFrame:
    """step x run: a metrics.csv column (NaN where a run has no value)."""
    rows = table[(table["file"] == runs_table.METRICS) & (table["metric"] == column)]
    return rows.pivot(index="step", columns="run", values="value")


def _runs(table: pd.DataFrame, finished: bool = False) -> pd.DataFrame:
    """One row per run (index: its dir): its config columns, status, norm_label, and its last test
    accuracy (final), best test accuracy (best) and last train accuracy (train)."""
    test, train = _metric(table, "test_acc"), _metric(table, "train_acc")
    runs = table.drop_duplicates("run").set_index("run")
    runs = runs.assign(final=test.ffill().iloc[-1], best=test.max(), train=train.ffill().iloc[-1])
    return runs[runs["status"] == "finished"] if finished else runs


def _eval_stats(table: pd.DataFrame) -> pd.DataFrame:
    """The eval_stats test accuracies: a row per run, step and kind (stats, n)."""
    rows = table[(table["file"] == EVAL_STATS) & (table["metric"] == "test_acc")]
    return rows.astype({"n": int})


def _last_stats(table: pd.DataFrame) -> pd.DataFrame:
    """run x (stats, n): each run's eval_stats accuracies at its last step, columns in STATS_ORDER and n."""
    rows = _eval_stats(table)
    rows = rows[rows["step"] == rows.groupby("run")["step"].transform("max")]
    wide = rows.pivot(index="run", columns=["stats", "n"], values="value")
    return wide[sorted(wide.columns, key=lambda k: (STATS_ORDER.index(k[0]), k[1]))]


def _band(ax, curves: pd.DataFrame, color: str, label: str, lw: float, alpha: float) -> None:
    """The mean over the runs (columns) of step x run accuracies, in %, and their min-max band."""
    min_max_band(ax, curves.index, curves.to_numpy().T * 100, color, label, lw, alpha)


def _style(ax, xlabel: str, ylabel: str, title: str, legend: dict | None = None) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(**(legend or {"fontsize": 8}))


# ------------------------------------------------------------------------------------- experiments


def gn_batch_size(table: pd.DataFrame, out: Path, written: list[Path]) -> str:
    finished = _runs(table, finished=True)
    batches = sorted(set(finished["data.batch_size"]))
    seen = finished["trainer.max_steps"] * finished["data.batch_size"]  # training examples
    examples = ", ".join(f"{n:,}" for n in sorted(set(seen)))
    ax = Figure(figsize=(6.4, 4.2), layout="constrained").add_subplot()
    lines = [
        "**Error vs batch size (Wu & He 2018, Fig. 1 style)**: final test error (%), mean +- std over "
        f"seeds (n); training examples seen (steps x batch): {examples}; lr scaled linearly with the batch.",
        "",
    ]
    header, body = ["norm", *(f"batch {b}" for b in batches)], []
    for i, (label, norm_runs) in enumerate(group(finished, lambda r: r["norm_label"]).items()):
        errors = {b: (1 - runs["final"]).tolist() for b, runs in norm_runs.groupby("data.batch_size")}
        stats = {b: mean_std([100 * e for e in errs]) for b, errs in errors.items()}
        means, stds = [m for m, _ in stats.values()], [s or 0.0 for _, s in stats.values()]
        ax.errorbar(list(stats), means, yerr=stds, marker="o", capsize=3, color=f"C{i}", label=label)
        cells = [f"{pct(errors[b])} ({len(errors[b])})" if b in errors else "-" for b in batches]
        body.append([label, *cells])
    lines += markdown_table(header, body)
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    title = "Error vs batch size, Fashion-MNIST, VGG-11 at 1/8 width\nmean +- std over seeds"
    _style(ax, "batch size (examples per step)", "final test error (%)", title)
    save(ax.figure, out, "gn_batch_size_error", written, dpi=PNG_DPI)
    lines += [
        "",
        "Wu & He's ResNet-50 on ImageNet (error %, batch per GPU 32/16/8/4/2; paper_notes, check): "
        "BN 23.6/23.7/24.8/27.3/34.7, GN 24.1/24.2/24.0/24.2/24.1.",
    ]
    last = _last_stats(table)
    with_stats = finished[finished.index.isin(last.index)]
    if not with_stats.empty:
        lines += ["", *_stats_table(with_stats, last, SETTINGS["norm_batch"])]
        bn = with_stats[with_stats["norm.kind"] == "builtin"]
        title = "BN at each batch size: final test accuracy vs PreciseBN's N"
        _stats_vs_n(bn, last, SETTINGS["batch"], out, "gn_batch_size_precise_bn", written, title)
    return "\n".join(lines) + "\n"


def _stats_table(runs: pd.DataFrame, last: pd.DataFrame, label) -> list[str]:
    """The final accuracy per setting (label) and kind of statistics."""
    last = last.loc[runs.index].dropna(axis=1, how="all")
    names = [s if s != "precise" else f"PreciseBN N={n:,}" for s, n in last.columns]
    body = []
    for name, group_runs in group(runs, label).items():
        at = last.loc[group_runs.index]
        if at[[k for k in at.columns if k[0] != "ema"]].isna().all(axis=None):
            continue  # no BN statistics to vary (LayerNorm, GroupNorm)
        body.append([name, *(pct(at[k].dropna()) for k in at.columns)])
    intro = (
        "Final test accuracy (%) by normalization statistics (eval_stats): moving averages (ema), "
        "PreciseBN from N training examples, the test batches' own statistics (batch)."
    )
    return [intro, "", *markdown_table(["setting", *names], body)]


def _stats_vs_n(runs: pd.DataFrame, last: pd.DataFrame, label, out: Path, name: str, written, title) -> None:
    """The final accuracy against PreciseBN's N per label, the moving averages' and test batches' beside."""
    if runs.empty:
        return
    ax = Figure(figsize=(6.4, 4.2), layout="constrained").add_subplot()
    for i, (curve, group_runs) in enumerate(group(runs, label).items()):
        at = last.loc[group_runs.index].dropna(axis=1, how="all")
        precise = [k for k in at.columns if k[0] == "precise"]
        if not precise:
            continue
        acc, color = at[precise].to_numpy() * 100, f"C{i % 10}"
        yerr = acc.std(0, ddof=1) if len(at) > 1 else None
        ns = [n for _, n in precise]
        ax.errorbar(ns, acc.mean(0), yerr, marker="o", color=color, capsize=3, label=f"{curve}: PreciseBN")
        for kind, ls in (("ema", "--"), ("batch", ":")):  # the test batches' where every run has them
            if (kind, 0) in at and at[(kind, 0)].notna().all():
                mean = np.mean(at[(kind, 0)].to_numpy()) * 100
                ax.axhline(mean, color=color, ls=ls, lw=0.9, label=f"{curve}: {STATS_NAMES[kind]}")
    ax.set_xscale("log")
    legend = {"fontsize": 7, "loc": "lower right"}
    _style(ax, "N: training examples behind PreciseBN's statistics", "final test accuracy (%)", title, legend)
    save(ax.figure, out, name, written, dpi=PNG_DPI)


def curves_experiment(table: pd.DataFrame, out: Path, written: list[Path]) -> str:
    """Test accuracy over training per setting (CURVES), and its final / best test, final train accuracy."""
    name = table["experiment_name"].iloc[0]
    setting, title = CURVES[name]
    test = _metric(table, "test_acc")
    ax = Figure(figsize=(7.0, 4.2), layout="constrained").add_subplot()
    columns = ("setting", "runs", "final test acc (%)", "best test acc (%)", "final train acc (%)")
    body = []
    for i, (label, runs) in enumerate(group(_runs(table), SETTINGS[setting]).items()):
        done = runs[runs["status"] == "finished"]
        if not done.empty:
            _band(ax, test[done.index].dropna(), f"C{i % 10}", f"{label} ({len(done)} seeds)", 1.5, 0.2)
        body.append([label, f"{len(done)}/{len(runs)}", *(pct(done[c]) for c in ("final", "best", "train"))])
    _style(ax, "training steps", "test accuracy (%)", title)
    save(ax.figure, out, f"{name}_curves", written, dpi=PNG_DPI)
    return "\n".join([f"**{title}** (mean +- std over seeds)", "", *markdown_table(columns, body)]) + "\n"


def ghost_large_batch(table: pd.DataFrame, out: Path, written: list[Path]) -> str:
    by_setting = group(_runs(table, finished=True), SETTINGS["ghost"]).items()
    body = [(label, pct(runs["train"] - runs["final"])) for label, runs in by_setting]
    lines = markdown_table(("setting", "generalization gap: final train - test acc (points)"), body)
    return curves_experiment(table, out, written) + "\n".join(["", *lines]) + "\n"


def precise_bn(table: pd.DataFrame, out: Path, written: list[Path]) -> str:
    last = _last_stats(table)
    finished = _runs(table[table["run"].isin(last.index)], finished=True)
    by_lr, stats = group(finished, SETTINGS["lr"]), _eval_stats(table)
    fig = Figure(figsize=(11.0, 4.0), layout="constrained")
    axes = fig.subplots(1, max(len(by_lr), 1), squeeze=False)[0]
    early = []  # the table of EARLY_KINDS: a row per lr and step
    for ax, (lr, runs) in zip(axes, by_lr.items(), strict=False):
        rows = stats[stats["run"].isin(runs.index)]
        curves = rows.pivot(index="step", columns=["stats", "n", "run"], values="value").sort_index(axis=1)
        kinds = sorted({k[:2] for k in curves.columns}, key=lambda k: (STATS_ORDER.index(k[0]), k[1]))
        for i, (kind, n) in enumerate(kinds):
            name = STATS_NAMES.get(kind, f"PreciseBN N={n:,}")
            _band(ax, curves[(kind, n)].reindex(columns=runs.index).dropna(), f"C{i}", name, 1.3, 0.15)
        ax.set_ylim(bottom=max(ax.get_ylim()[0], 50))
        title = f"BN, Fig. 1 MLP, {lr} ({len(runs)} seeds)"
        _style(ax, "training steps", "test accuracy (%)", title, {"fontsize": 7, "loc": "lower right"})
        for step in (500, rows[rows["run"] == runs.index[0]]["step"].max()):
            at = rows[rows["step"] == step].groupby(["stats", "n"])["value"]
            cells = [pct(at.get_group(k)) if k in at.groups else "-" for k in EARLY_KINDS]
            early.append([lr, f"{step:,}", *cells])
    save(fig, out, "precise_bn_over_training", written, dpi=PNG_DPI)
    title = "Fig. 1 MLP with BN: final test accuracy vs PreciseBN's N"
    _stats_vs_n(finished, last, SETTINGS["lr"], out, "precise_bn_vs_n", written, title)
    lines = [
        "**PreciseBN and the train/eval discrepancy (Wu & Johnson 2021 style)**",
        "",
        *_stats_table(finished, last, SETTINGS["lr"]),
        "",
        "Early in training (step 500) and at the end, test accuracy (%) by statistics, mean +- std:",
        "",
        *markdown_table(("setting", "step", *EARLY_NAMES), early),
    ]
    return "\n".join(lines) + "\n"


# Each experiment's figures and table; the others' (CURVES): curves_experiment.
DRAW = {"gn_batch_size": gn_batch_size, "ghost_large_batch": ghost_large_batch, "precise_bn": precise_bn}


def draw_all(paths: Iterable[str | Path], out_dir: str | Path) -> tuple[list[Path], str]:
    """Every figure and table the runs allow; returns the files written and the combined markdown."""
    table = load_runs(paths)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    sections = []
    for name in EXPERIMENTS:
        runs = table[table["experiment_name"] == name]
        if runs.empty:
            continue
        text = DRAW.get(name, curves_experiment)(runs, out, written)
        path = out / f"{name}_table.md"
        path.write_text(text)
        written.append(path)
        sections.append(text)
    combined = "\n".join(sections)
    path = out / "batch_tables.md"
    path.write_text(combined)
    written.append(path)
    return written, combined
