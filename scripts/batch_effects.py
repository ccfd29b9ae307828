"""Figures and tables of the batch papers' experiments from run dirs (bn_repro/analysis/batch_effects.py):
error vs batch size (GroupNorm), Batch Renorm on microbatches and non-i.i.d. batches, Ghost BN at a large
batch, PreciseBN and the train/eval discrepancy.

    scripts/batch_size_sweep.sh multirun/gn_batch_size            # the error-vs-batch-size runs
    python scripts/batch_effects.py multirun/ --out figures/       # every experiment found

Exit status 1 with a message when no run of these experiments is found.
"""

from __future__ import annotations

import argparse
import sys

from bn_repro.analysis.batch_effects import NoRunsError, draw_all


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dirs", nargs="+", help="run dirs or folders holding them")
    parser.add_argument("--out", default="figures", help="output folder (default: figures)")
    args = parser.parse_args(argv)
    try:
        written, _ = draw_all(args.run_dirs, args.out)
    except NoRunsError as error:
        print(f"batch_effects: {error}", file=sys.stderr)
        return 1
    for path in written:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
