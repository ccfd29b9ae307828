"""How much of a Fig. 2/3 CPU-scale number is float rounding: the same runs (same commit, config and seed)
made with other CPU kernels, against the spread over seeds.

    python scripts/kernel_spread.py results/fig2cpu_fashion_mnist \\
        results/fig2cpu_fashion_mnist/portable_kernels --out results/fig2cpu_fashion_mnist/figures

The first folder holds the reference runs (this CPU's native kernels), the second the re-runs of some of
them (e.g. with ATEN_CPU_CAPABILITY=default: ATen's portable kernels, which round differently, as another
CPU's would). Each re-run is paired with the reference run of its experiment and seed. For each pair:
test accuracy at the first evaluation after step 0, final and best test accuracy, and the steps to the
Fig. 3 target (the best of the baseline's seed-mean curve in the reference folder, as in
scripts/speedup_table.py). Beside each variant's mean |re-run - reference| over its pairs stands the
standard deviation of the same number over the reference folder's seeds: where the first is of the order
of the second, the seeds' spread is mostly float-level chaos. Writes kernel_spread.md.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from bn_repro.analysis.speedup import (
    Run,
    baseline_of,
    group_by_variant,
    load_runs,
    mean_curve,
    steps_to_target,
)
from bn_repro.analysis.stats import mean_std

MEASURES = ("acc at first evaluation (%)", "final acc (%)", "best acc (%)", "steps to the target")


def numbers(run: Run, target: float) -> tuple[float | None, ...]:
    first = next((a for s, a in zip(run.steps, run.test_acc, strict=True) if s > 0), None)
    reached = steps_to_target(run.steps, run.test_acc, target)
    return (
        None if first is None else 100 * first,
        100 * run.test_acc[-1] if run.test_acc else None,
        100 * max(run.test_acc) if run.test_acc else None,
        None if reached is None else float(reached),
    )


def spread_table(reference: list[Run], reruns: list[Run]) -> str:
    groups = group_by_variant(reference)
    baseline = baseline_of(groups)
    target = mean_curve(groups[baseline]).max_acc
    by_key = {(r.experiment_name, r.seed): r for r in reference}
    lines = [
        f"Target: {100 * target:.2f}% (the best of {baseline}'s seed-mean curve over {len(groups[baseline])} "
        "seeds). Per variant: mean |re-run - reference| over the paired seeds (pairs), against the "
        "standard deviation over the reference seeds (seeds); '-' where a run never reaches the target.",
        "",
        "| variant | pairs | seeds | " + " | ".join(f"{m}: kernels / seeds" for m in MEASURES) + " |",
        "|---|---|---|" + "---|" * len(MEASURES),
    ]
    for name, runs in groups.items():
        pairs = [(by_key[(r.experiment_name, r.seed)], r) for r in reruns
                 if r.experiment_name == name and (r.experiment_name, r.seed) in by_key]  # fmt: skip
        if not pairs:
            continue
        cells = []
        for i in range(len(MEASURES)):
            diffs = [abs(numbers(b, target)[i] - numbers(a, target)[i]) for a, b in pairs
                     if numbers(a, target)[i] is not None and numbers(b, target)[i] is not None]  # fmt: skip
            seeds = [numbers(r, target)[i] for r in runs if r.status == "finished"]
            _, std = mean_std([v for v in seeds if v is not None])
            digits = 0 if MEASURES[i].startswith("steps") else 2  # steps are whole evaluations apart
            kernel = f"{math.fsum(diffs) / len(diffs):.{digits}f}" if diffs else "-"
            cells.append(f"{kernel} / {'-' if std is None else f'{std:.{digits}f}'}")
        lines.append(f"| {name} | {len(pairs)} | {len(runs)} | " + " | ".join(cells) + " |")
    lines += ["", "Each pair (reference -> re-run):", ""]
    lines += [
        "| variant | seed | re-run (its folder) | " + " | ".join(MEASURES) + " |",
        "|---|---|---|" + "---|" * len(MEASURES),
    ]
    for r in sorted(reruns, key=lambda r: (r.experiment_name, r.seed, str(r.run_dir))):
        a = by_key.get((r.experiment_name, r.seed))
        if a is None:
            continue
        pairs = [
            f"{_fmt(x)} -> {_fmt(y)}" for x, y in zip(numbers(a, target), numbers(r, target), strict=True)
        ]
        lines.append(
            f"| {r.experiment_name} | {r.seed} | {r.run_dir.parent.name} | " + " | ".join(pairs) + " |"
        )
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 and value == int(value) else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("reference", type=Path, help="the reference runs (a folder of run dirs)")
    parser.add_argument("reruns", type=Path, help="the re-runs with other kernels (a folder of run dirs)")
    parser.add_argument("--out", type=Path, required=True, help="folder for kernel_spread.md")
    args = parser.parse_args()
    reruns = load_runs([args.reruns])
    rerun_dirs = {r.run_dir.resolve() for r in reruns}
    # The re-runs may sit inside the reference folder: they are not reference runs.
    reference = [r for r in load_runs([args.reference]) if r.run_dir.resolve() not in rerun_dirs]
    text = spread_table(reference, reruns)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kernel_spread.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
