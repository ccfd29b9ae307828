"""Each seed's first evaluation step at or above test-accuracy levels (bn_repro.analysis.crossings).

    python scripts/steps_to_accuracy.py results/fig1_10seeds_fashion_mnist/plain_sgd_300k --levels 0.2 0.8
    python scripts/steps_to_accuracy.py multirun/ --levels 0.867 --out steps.md

Reads local run dirs (summary.json, metrics.csv); one table row per curve (experiment and norm) and level.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bn_repro.analysis.crossings import crossing_rows, crossings_markdown, load_curves


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run dirs or folders holding them")
    parser.add_argument("--levels", nargs="+", type=float, required=True, help="test accuracies in (0, 1]")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here (markdown)")
    args = parser.parse_args()
    bad = [level for level in args.levels if not 0 < level <= 1]
    if bad:
        parser.error(f"--levels are accuracies in (0, 1], got {bad}")
    try:
        curves = load_curves(args.run_dirs)
    except FileNotFoundError as error:
        print(f"steps_to_accuracy: {error}", file=sys.stderr)
        return 1
    text = crossings_markdown(crossing_rows(curves, args.levels))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
