"""The ledger of the claims we test, from the committed runs (bn_repro/analysis/claims.py).

    python scripts/claims.py --out results/CLAIMS.md     # about half a minute on the 2-core CPU
    python scripts/claims.py --results /path/to/results --out /tmp/CLAIMS.md

One row per claim: the paper's words in short, our setup, the effect over seeds with its 95% t-interval,
a verdict by the rule stated at the top of the file, the command that draws the study's figure, and the
figure. Claims whose run dirs are absent are listed as pending.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bn_repro.analysis.claims import evaluate, markdown

REPO = Path(__file__).resolve().parents[1]
COMMAND = "python scripts/claims.py --out results/CLAIMS.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", type=Path, default=REPO / "results", help="the folder of the run dirs")
    parser.add_argument("--out", type=Path, default=None, help="write the ledger here (default: print it)")
    args = parser.parse_args(argv)
    text = markdown(evaluate(args.results), COMMAND)
    if args.out is None:
        print(text, end="")
    else:
        args.out.write_text(text)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
