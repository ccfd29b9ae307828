r"""Section 3.3 on a learning rate x init std grid: heatmaps, tables, the area of the grid where each trains.

    python -m bn_repro.train -m experiment=lr_init_grid hydra/launcher=batched \
        hydra.sweep.dir=multirun/lr_init_grid                               # the sweep (560 runs)
    python scripts/lr_init_grid.py multirun/lr_init_grid --out figures/lr_init_grid
    python scripts/lr_init_grid.py results/lr_init_grid_fashion_mnist/runs \
        --out results/lr_init_grid_fashion_mnist --target 0.8 --levels 0.8 0.5

RUNS_DIR: run dirs or folders searched for them. Writes into --out (definitions in
bn_repro/analysis/lr_init_grid.py), per protocol (momentum0.9, plain_sgd):
  lr_init_grid_final_acc_<protocol>.png      mean final test accuracy, no BN | BN, init std x lr
  lr_init_grid_steps_to_80_<protocol>.png    mean steps to the target over the seeds that reach it
  lr_init_grid_table_<protocol>.{md,csv}     each cell: final acc +- 95% t-interval (n), steps, diverged
and lr_init_grid_area.{md,csv} (cells that train, per norm and init std), lr_init_grid_init_spread.{md,csv}
(spread across init stds at each lr), lr_init_grid_summary.md (a paragraph for results/README.md) and
lr_init_grid.md (all of it). The summary is printed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bn_repro.analysis.lr_init_grid import AREA_LEVELS, STEM, TARGET, analyse, load_grid


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("paths", nargs="+", metavar="RUNS_DIR", help="run dirs or folders holding them")
    parser.add_argument("--out", default="figures/lr_init_grid", help="folder for the figures and tables")
    parser.add_argument(
        "--target", type=float, default=TARGET, help="test accuracy to reach (0-1; default 0.8)"
    )
    parser.add_argument(
        "--levels",
        type=float,
        nargs=2,
        default=list(AREA_LEVELS),
        metavar=("TRAINS", "LOW"),
        help="mean final accuracy at which a cell trains, and a lower level also counted (default 0.8 0.5)",
    )
    args = parser.parse_args()
    try:
        rows, report = analyse(load_grid(args.paths), args.out, args.target, tuple(args.levels))
    except (FileNotFoundError, ValueError) as error:  # no runs (figures.NoRunsError); runs of several grids
        sys.exit(f"lr_init_grid: {error}")
    print((Path(args.out) / f"{STEM}_summary.md").read_text())
    for note in report.notes:
        print(f"note: {note}")
    print(f"{len(rows)} cells; wrote {len(report.written)} files into {args.out}")


if __name__ == "__main__":
    main()
