"""The trials of a Hydra Optuna learning-rate search (hparams_search=...) as a table, best first.

    R=results/lr_search_fig1_fashion_mnist
    python scripts/lr_search_table.py $R/search_none $R/search_builtin --out $R/search.md

Each search dir holds the sweeper's optimization_results.yaml and one run dir per trial (summary.json).
Reads local files only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from bn_repro import norms
from bn_repro.analysis.runs_table import find_run_dirs, read_summary


def search_rows(search_dir: Path) -> tuple[dict, list[dict]]:
    best = yaml.safe_load((search_dir / "optimization_results.yaml").read_text())
    rows = []
    for run_dir in find_run_dirs([search_dir]):
        summary = read_summary(run_dir)
        config = summary["config"]
        rows.append({
            "norm": norms.label(config["norm"]), "lr": config["optim"]["lr"], "steps": summary["steps"],
            "final_test_acc": summary["final_test_acc"], "best_test_acc": summary["best_test_acc"],
            "status": summary["status"], "trial": run_dir.name,
        })  # fmt: skip
    return best, sorted(rows, key=lambda r: -(r["final_test_acc"] or 0.0))


def markdown(search_dir: Path) -> str:
    best, rows = search_rows(search_dir)
    norm = rows[0]["norm"] if rows else "?"
    lines = [
        f"**{norm}: {len(rows)} trials, best optim.lr = {best['best_params']['optim.lr']:.4g} "
        f"(final test acc {100 * best['best_value']:.2f}%)**",
        "",
        "| trial | optim.lr | steps | final test acc | best test acc | status |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(f"| {r['trial']} | {r['lr']:.4g} | {r['steps']:,} | {100 * r['final_test_acc']:.2f}% "
                     f"| {100 * r['best_test_acc']:.2f}% | {r['status']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("search_dirs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="write the tables here too (markdown)")
    args = parser.parse_args()
    text = "\n".join(markdown(d) for d in args.search_dirs)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
