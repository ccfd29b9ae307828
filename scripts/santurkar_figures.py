"""Draw Santurkar et al. 2018's figures and tables from run dirs (bn_repro.analysis.santurkar).

    python scripts/santurkar_figures.py /tmp/res/santurkar_dln --out figures
    python scripts/santurkar_figures.py multirun/ --out figures --experiment santurkar_vgg_cpu
    python scripts/santurkar_figures.py /tmp/res/santurkar_* --copy-to results/santurkar_fashion_mnist \
        --out results/santurkar_fashion_mnist/figures

Per experiment_name found: <exp>_curves.png, <exp>_activations.png (Fig. 2 style),
<exp>_ics_gradient.png (Fig. 3 style), <exp>_landscape.png (Fig. 4 style), <exp>_ics_distribution.png
(Ioffe's distribution shift next to the gradient ICS) and <exp>_table.md/.csv, <exp>_layers.csv.
Runs need the measurements (measure.<name>.every > 0: configs/experiment/santurkar_*.yaml switch them
on). --copy-to first copies each finished run to DIR/<experiment_name>/<norm>[_lr<lr>]_seed<seed>/ and
then draws from those copies. Reads local files only; headless. Exits with status 1 and a message when
no run is found or a run lacks a measurement a figure needs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bn_repro.analysis.santurkar import collect_runs, make_santurkar_figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run dirs or folders holding them")
    parser.add_argument("--out", type=Path, default=Path("figures"), help="output folder (default: figures)")
    parser.add_argument(
        "--experiment", action="append", default=None, help="only this experiment_name (repeatable)"
    )
    parser.add_argument(
        "--layer", default=None, help="the probed layer of the activations figure (default: the last one)"
    )
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="skip a figure whose measurement a run lacks (with a note) instead of failing",
    )
    parser.add_argument(
        "--copy-to",
        type=Path,
        default=None,
        help="copy the finished runs to DIR/<experiment_name>/<norm>[_lr<lr>]_seed<seed>/, draw from there",
    )
    args = parser.parse_args(argv)
    run_dirs = args.run_dirs
    try:
        if args.copy_to is not None:
            copied, notes = collect_runs(run_dirs, args.copy_to)
            for note in notes:
                print(f"note: {note}")
            print(f"copied {len(copied)} runs into {args.copy_to}")
            run_dirs = copied
        report = make_santurkar_figures(
            run_dirs,
            args.out,
            allow_missing=args.allow_missing,
            layer=args.layer,
            experiments=args.experiment,
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"santurkar_figures: {error}", file=sys.stderr)
        return 1
    for note in report.notes:
        print(f"note: {note}")
    print(f"wrote {len(report.written)} files into {args.out}:")
    for path in report.written:
        print(f"  {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
