"""Pull the runs of a wandb project (or one group of it) into local run dirs the figure scripts read.

    python scripts/export_wandb.py --group fig1_mnist_sweep        # -> results/wandb/fig1_mnist_sweep/
    python scripts/export_wandb.py --entity my-team --project bn-repro --group fig1_mnist_sweep \
        --state finished --out results/wandb/fig1_team

Each run becomes OUT/<run name>-<run id>/ with summary.json (with `config`, `experiment_name` and a `wandb`
block naming the run), metrics.csv and activations.csv, rebuilt from the run's history as
bn_repro/records/wandb_export.py describes. Exporting again replaces the files. Needs network and a
wandb API key (`wandb login` or WANDB_API_KEY); offline runs must be uploaded first (`wandb sync`).

    python scripts/export_wandb.py outputs/fig1_fashion_mnist/2026-01-01_00-00-00/wandb/offline-run-*

Given the path of an offline run (or of a job dir holding one), it says where that run's local files
already are: the job dir, which the figure scripts read as it is. Exit status: 0 on success, 2 for usage
errors, 1 for anything else (no runs, no wandb login, an API error), with a one-line message.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bn_repro.records.run_files import SUMMARY_FILE
from bn_repro.records.wandb_export import export_run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", type=Path,
                        help="offline run dirs or job dirs (local: no export needed)")  # fmt: skip
    parser.add_argument("--project", default="bn-repro", help="wandb project (default: bn-repro)")
    parser.add_argument("--entity", default=None, help="wandb entity (default: your default entity)")
    parser.add_argument("--group", default=None, help="only the runs of this group (an experiment_name)")
    parser.add_argument("--state", default=None, help="only runs in this state, e.g. finished")
    parser.add_argument("--out", type=Path, default=None,
                        help="output dir (default: results/wandb/<group or project>)")  # fmt: skip
    parser.add_argument("--timeout", type=int, default=60, help="seconds per API request (default: 60)")
    return parser.parse_args(argv)


def local_run_files(path: Path) -> Path | None:
    """The job dir that holds the local files of the wandb run at `path` (an offline-run-* dir, its
    wandb/ folder, or the job dir itself); None when `path` is none of those."""
    path = path.resolve()
    for candidate in (path, path.parent, path.parent.parent):
        if (candidate / SUMMARY_FILE).is_file() and (candidate / "wandb").is_dir():
            return candidate
    return None


def _answer_local(paths: list[Path]) -> int:
    status = 0
    for path in paths:
        job_dir = local_run_files(path)
        if job_dir is None:
            print(f"export_wandb: {path} is not a wandb run of a bn_repro job (no {SUMMARY_FILE} beside "
                  f"its wandb/ folder)", file=sys.stderr)  # fmt: skip
            status = 1
            continue
        print(f"{path}: an offline run; its local run files are already in {job_dir} "
              f"(python scripts/make_figures.py {job_dir}); upload it with `wandb sync {path}`")  # fmt: skip
    return status


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.runs:
        return _answer_local(args.runs)
    import wandb

    out = args.out or Path("results") / "wandb" / (args.group or args.project)
    path = f"{args.entity}/{args.project}" if args.entity else args.project
    filters = {key: value for key, value in (("group", args.group), ("state", args.state)) if value}
    exported = 0
    try:
        for run in wandb.Api(timeout=args.timeout).runs(path, filters=filters):
            run_dir = export_run(run, out)
            exported += 1
            print(f"{run.id} {run.name!r} ({getattr(run, 'state', '?')}) -> {run_dir}")
    except wandb.errors.UsageError as error:
        print(f"export_wandb: no wandb login ({error}): run `wandb login` (or set WANDB_API_KEY), or read "
              f"the local run files directly: python scripts/make_figures.py outputs/ multirun/",
              file=sys.stderr)  # fmt: skip
        return 1
    except Exception as error:  # noqa: BLE001 - one line for any API failure, not wandb's traceback
        print(f"export_wandb: reading {path} from wandb failed ({type(error).__name__}: {error})",
              file=sys.stderr)  # fmt: skip
        return 1
    if not exported:
        print(f"no runs in {path} matching {filters or 'any'}", file=sys.stderr)
        return 1
    print(f"{exported} runs -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
