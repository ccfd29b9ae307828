"""Section 3.3's scale and Jacobian claims from runs with measure.scale and measure.jacobian on: per
hidden layer, no BN beside BN, mean +- 95% t-interval over seeds at a few steps, and a figure over
training (effective step ||dW||/||W|| and the median singular value of each layer's Jacobian).

    python -m bn_repro.train -m experiment=scale_jacobian_fig1 hydra/launcher=batched \\
        hydra.sweep.dir=results/scale_jacobian_fashion_mnist/runs
    python scripts/scale_jacobian.py results/scale_jacobian_fashion_mnist/runs \\
        --out results/scale_jacobian_fashion_mnist/figures
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bn_repro.analysis.figures import RunData, load_all  # noqa: E402
from bn_repro.analysis.stats import t_interval  # noqa: E402

SCALE = ("weight_norm", "grad_norm", "effective_step", "cos_weight_grad")
JACOBIAN = ("min", "p50", "max", "mean")


def series(runs: Sequence[RunData], name: str, layer: str, column: str) -> dict[int, list[float]]:
    """step -> the column's value in each run (measurement `name`, layer `layer`)."""
    out: dict[int, list[float]] = {}
    for run in runs:
        for row in run.measurement(name):
            if row["layer"] == layer:
                out.setdefault(int(row["step"]), []).append(float(row[column]))
    return out


def cell(values: list[float]) -> str:
    mean, half = t_interval(values)
    if mean is None:
        return "-"
    return f"{mean:.4g}" + (f" +- {half:.2g}" if half is not None else "") + f" ({len(values)})"


def table(by_norm: dict[str, list[RunData]], name: str, columns: Sequence[str], steps: Sequence[int]) -> str:
    layers = sorted({row["layer"] for runs in by_norm.values() for r in runs for row in r.measurement(name)})
    lines = [
        f"| norm | layer | step | {' | '.join(columns)} |",
        "|---|---|---|" + "---|" * len(columns),
    ]
    for norm, runs in by_norm.items():
        for layer in layers:
            data = {c: series(runs, name, layer, c) for c in columns}
            for step in steps:
                if step in data[columns[0]]:
                    cells = " | ".join(cell(data[c][step]) for c in columns)
                    lines.append(f"| {norm} | {layer} | {step:,} | {cells} |")
    return "\n".join(lines) + "\n"


def jacobian_map(runs: Sequence[RunData]) -> str:
    """The map whose Jacobian the runs measured (measure.jacobian.output): dz/du or dBN(Wu)/du."""
    outputs = {
        r.summary.get("config", {}).get("measure", {}).get("jacobian", {}).get("output", "activation")
        for r in runs
    }
    if len(outputs) != 1:
        raise SystemExit(
            f"the runs measured different Jacobians (measure.jacobian.output: {sorted(outputs)})"
        )
    return {"activation": "dz/du", "pre_activation": "dBN(Wu)/du"}[outputs.pop()]


def figure(by_norm: dict[str, list[RunData]], out: Path, jacobian: str = "dz/du") -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for name, column, ax, title in (
        ("scale", "effective_step", axes[0], "effective step ||dW|| / ||W||"),
        ("jacobian", "p50", axes[1], f"median singular value of {jacobian}"),
    ):
        for norm, style in zip(by_norm, ("--", "-"), strict=False):
            runs = by_norm[norm]
            layers = sorted({row["layer"] for r in runs for row in r.measurement(name)})
            for layer in layers:
                data = series(runs, name, layer, column)
                steps = sorted(data)
                means = [t_interval(data[s])[0] for s in steps]
                ax.plot(steps, means, style, label=f"{norm}, {layer}")
        ax.set(title=title, xlabel="training step", yscale="log")
        ax.legend(fontsize=7)
    path = out / "scale_jacobian.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    runs = [r for r in load_all([args.runs]) if r.summary.get("status") == "finished"]
    by_norm: dict[str, list[RunData]] = {}
    for run in sorted(runs, key=lambda r: (not r.without_norm, r.seed or 0)):
        by_norm.setdefault(run.norm_label, []).append(run)
    max_steps = max(r.max_steps for r in runs)
    steps = sorted({s for s in (500, max_steps // 10, max_steps // 2, max_steps) if s > 0})
    args.out.mkdir(parents=True, exist_ok=True)
    jacobian = jacobian_map(runs)
    text = (
        f"# Scale and Jacobians over training ({len(runs)} runs; mean +- 95% t-interval over seeds (n))\n\n"
        f"## measure.scale\n\n{table(by_norm, 'scale', SCALE, steps)}\n"
        f"## measure.jacobian (singular values of each example's {jacobian})\n\n"
        f"{table(by_norm, 'jacobian', JACOBIAN, steps)}"
    )
    (args.out / "scale_jacobian.md").write_text(text)
    print(f"wrote {args.out / 'scale_jacobian.md'} and {figure(by_norm, args.out, jacobian)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
