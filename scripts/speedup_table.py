"""The paper's Fig. 3 table from the runs of a Fig. 2 sweep: steps to reach the no-BN baseline's best
accuracy, speedup, max accuracy (definitions in bn_repro/analysis/speedup.py).

    python -m bn_repro.train -m 'experiment=glob(fig2_*)'                # the sweep (six runs)
    python scripts/speedup_table.py multirun/default/2026-01-01_00-00-00   # -> results/fig3_table.{md,csv}
    python scripts/speedup_table.py multirun/ --out results/fig3 --target 0.85
    python -m bn_repro.train -m 'experiment=glob(fig2cpu_*)' seed=0,1,2   # CPU scale, with spread
    python scripts/speedup_table.py multirun/default/2026-...             # fig2cpu_inception is the baseline

Paths are run dirs or folders searched for them (several sweeps, e.g. one per seed, can be given).
"""

from __future__ import annotations

import argparse

from bn_repro.analysis.speedup import fig3_table, write_fig3


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("paths", nargs="+", help="run dirs or folders holding them")
    parser.add_argument("--out", default="results", help="folder for fig3_table.md and fig3_table.csv")
    parser.add_argument(
        "--baseline", default=None,
        help="experiment_name setting the target (default: fig2_inception, or fig2cpu_inception)",
    )  # fmt: skip
    parser.add_argument("--target", type=float, default=None, help="a fixed accuracy to reach instead (0-1)")
    args = parser.parse_args()
    rows = fig3_table(args.paths, baseline=args.baseline, target=args.target)
    md_path, csv_path = write_fig3(rows, args.out)
    print(md_path.read_text())
    print(f"wrote {md_path} and {csv_path}")


if __name__ == "__main__":
    main()
