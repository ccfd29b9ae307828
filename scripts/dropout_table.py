"""Section 3.4, "BN regularizes the model and reduces the need for Dropout": the dropout_fig1 sweep's
test accuracy and train-test gap per norm and dropout rate, as a table and a figure.

    python scripts/dropout_table.py results/dropout_fig1_fashion_mnist/runs \\
        --out results/dropout_fig1_fashion_mnist/figures

Reads the runs of `experiment=dropout_fig1` (norm none/builtin x model.dropout x seeds): metrics.csv's
test accuracy and train_eval.csv's eval-mode accuracy on the whole training set (dropout off, running
statistics), at each evaluation. Writes dropout_table.md (final values, mean +- 95% t-interval over
seeds, and dropout's effect paired by seed) and dropout.png (test accuracy and train-test gap over
training, seed means).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from bn_repro.analysis import runs_table  # noqa: E402
from bn_repro.analysis.stats import t_interval  # noqa: E402

NORM_LABELS = {"none": "no BN", "builtin": "BN"}


def curves(table: pd.DataFrame) -> pd.DataFrame:
    """One row per run x step: norm, dropout, seed, test_acc, train_acc (eval mode), gap = train - test."""
    keep = ["run", "step", "norm.kind", "model.dropout", "seed"]
    test = table[(table["file"] == "metrics") & (table["metric"] == "test_acc")][[*keep, "value"]]
    train = table[(table["file"] == "train_eval") & (table["metric"] == "train_acc")][
        ["run", "step", "value"]
    ]
    both = test.rename(columns={"value": "test_acc"}).merge(
        train.rename(columns={"value": "train_acc"}), on=["run", "step"], how="left"
    )
    both["gap"] = both["train_acc"] - both["test_acc"]
    return both.rename(columns={"norm.kind": "norm", "model.dropout": "dropout"})


def _cell(values) -> str:
    mean, half = t_interval([100 * v for v in values])
    if mean is None:
        return "-"
    return f"{mean:.2f}" if half is None else f"{mean:.2f} +- {half:.2f}"


def final_table(rows: pd.DataFrame) -> str:
    last = rows.sort_values("step").groupby("run").tail(1)
    lines = [
        "| norm | dropout | seeds | final test acc (%) | best test acc (%) | train acc, eval mode (%) "
        "| train - test gap (points) | dropout's effect on test acc, paired by seed (points) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    best = rows.groupby("run")["test_acc"].max()
    for norm in [n for n in NORM_LABELS if n in set(last["norm"])]:
        mine = last[last["norm"] == norm]
        without = mine[mine["dropout"] == 0.0].set_index("seed")["test_acc"]
        for rate in sorted(set(mine["dropout"])):
            cell = mine[mine["dropout"] == rate]
            paired = [
                v - without[s] for s, v in zip(cell["seed"], cell["test_acc"], strict=True) if s in without
            ]
            effect = "-" if rate == 0.0 else _cell(paired)
            lines.append(
                f"| {NORM_LABELS[norm]} | {rate:g} | {len(cell)} | {_cell(cell['test_acc'])} | "
                f"{_cell(best[cell['run']])} | {_cell(cell['train_acc'].dropna())} | "
                f"{_cell(cell['gap'].dropna())} | {effect} |"
            )
    return "\n".join(lines) + "\n"


def figure(rows: pd.DataFrame, out: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    styles = {0.0: "-", 0.2: "--", 0.5: ":"}
    for (norm, rate), cell in rows.groupby(["norm", "dropout"]):
        mean = cell.groupby("step")[["test_acc", "gap"]].mean()
        color = "tab:red" if norm == "builtin" else "tab:blue"
        label = f"{NORM_LABELS.get(norm, norm)}, dropout {rate:g}"
        kw = {"color": color, "linestyle": styles.get(rate, "-."), "label": label}
        axes[0].plot(mean.index, 100 * mean["test_acc"], **kw)
        axes[1].plot(mean.index, 100 * mean["gap"], **kw)
    axes[0].set(xlabel="training step", ylabel="test accuracy (%)", ylim=(75, 92), title="test accuracy")
    axes[1].set(xlabel="training step", ylabel="points", title="train (eval mode) - test accuracy")
    axes[1].axhline(0, color="gray", linewidth=0.5)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"BN and dropout, Fig. 1 MLP on Fashion-MNIST (means over {rows['seed'].nunique()} seeds)")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", type=Path, help="the sweep's run dirs (a folder of them)")
    parser.add_argument("--out", type=Path, required=True, help="folder for dropout_table.md and dropout.png")
    args = parser.parse_args()
    table = runs_table.load_runs([args.runs], files=(runs_table.METRICS, "train_eval"))
    rows = curves(table[table["status"] == "finished"])
    args.out.mkdir(parents=True, exist_ok=True)
    text = final_table(rows)
    (args.out / "dropout_table.md").write_text(text)
    figure(rows, args.out / "dropout.png")
    print(text)


if __name__ == "__main__":
    main()
