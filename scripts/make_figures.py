"""Draw the paper's figures (Fig. 1, Fig. 2) and the Fig. 3 table from run dirs (bn_repro.analysis.figures).

    python scripts/make_figures.py                       # results/fig1_*, fig2_* -> results/figures/
    python scripts/make_figures.py multirun/fig1_fashion_mnist_sweep --out figures
    python scripts/make_figures.py multirun/ outputs/ --out figures     # folders are searched recursively

Reads local files only (summary.json, metrics.csv, activations.csv); headless (matplotlib, no display).
Exits with status 1 and a message when no run dir is found.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bn_repro.analysis.figures import make_figures

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"
# What results/figures/ is drawn from; other result sets (e.g. the learning-rate search) are drawn by the
# commands in results/README.md, into their own folders.
RESULT_SETS = (RESULTS / "fig1_fashion_mnist", RESULTS / "fig2_cpu_fashion_mnist")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "run_dirs",
        nargs="*",
        type=Path,
        help=f"run dirs or folders holding them (default: {', '.join(str(p) for p in RESULT_SETS)})",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"output folder (default: {RESULTS / 'figures'} without run dirs, ./figures with)",
    )
    args = parser.parse_args(argv)
    run_dirs = args.run_dirs or list(RESULT_SETS)
    out = args.out or (Path("figures") if args.run_dirs else RESULTS / "figures")
    try:
        report = make_figures(run_dirs, out)
    except FileNotFoundError as error:
        print(f"make_figures: {error}", file=sys.stderr)
        return 1
    for note in report.notes:
        print(f"note: {note}")
    print(f"wrote {len(report.written)} files into {out}:")
    for path in report.written:
        print(f"  {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
