"""Pull the runs of a wandb project (or one group of it) into local run dirs the figure scripts read.

    python scripts/export_wandb.py --group fig1_mnist_sweep        # -> results/wandb/fig1_mnist_sweep/
    python scripts/export_wandb.py --entity my-team --project bn-repro --group fig1_mnist_sweep \
        --state finished --out results/wandb/fig1_team

Each run becomes OUT/<run name>-<run id>/ with summary.json (with `config`, `experiment_name` and a `wandb`
block naming the run), metrics.csv and activations.csv, rebuilt from the run's history as
bn_repro/records/wandb_export.py describes. Exporting again replaces the files. Needs network and a
wandb API key (`wandb login` or WANDB_API_KEY); offline runs must be uploaded first (`wandb sync`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bn_repro.records.wandb_export import export_run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", default="bn-repro", help="wandb project (default: bn-repro)")
    parser.add_argument("--entity", default=None, help="wandb entity (default: your default entity)")
    parser.add_argument("--group", default=None, help="only the runs of this group (an experiment_name)")
    parser.add_argument("--state", default=None, help="only runs in this state, e.g. finished")
    parser.add_argument("--out", type=Path, default=None,
                        help="output dir (default: results/wandb/<group or project>)")  # fmt: skip
    parser.add_argument("--timeout", type=int, default=60, help="seconds per API request (default: 60)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import wandb

    out = args.out or Path("results") / "wandb" / (args.group or args.project)
    path = f"{args.entity}/{args.project}" if args.entity else args.project
    filters = {key: value for key, value in (("group", args.group), ("state", args.state)) if value}
    runs = wandb.Api(timeout=args.timeout).runs(path, filters=filters)
    exported = 0
    for run in runs:
        run_dir = export_run(run, out)
        exported += 1
        print(f"{run.id} {run.name!r} ({getattr(run, 'state', '?')}) -> {run_dir}")
    if not exported:
        print(f"no runs in {path} matching {filters or 'any'}", file=sys.stderr)
        return 1
    print(f"{exported} runs -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
