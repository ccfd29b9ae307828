"""Throughput of the Fig. 1 training run against a bare loop, measured in one process.

    python scripts/bench_train_loop.py                       # Fashion-MNIST (Debian's files), 5,000 steps
    python scripts/bench_train_loop.py --steps 2000 --data synthetic --norm custom

The bare loop is the floor any training app pays: the same parts and training step
(bn_repro/engine/step.train_step) on preloaded float tensors, no evaluation, no measurements, no files.
The app's run includes its default evaluation on the full test set and the activation probes every
trainer.eval_every steps; its throughput counts them.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time

import torch

from bn_repro.config import compose, resolve_config
from bn_repro.engine import setup
from bn_repro.engine.loop import train
from bn_repro.engine.step import train_step


def compose_fig1(data: str, norm: str, steps: int, threads: int, extra: list[str]) -> dict:
    overrides = ["experiment=fig1_mnist", f"data={data}", f"norm={norm}", f"trainer.max_steps={steps}",
                 "trainer.progress=false", "trainer.device=cpu", f"trainer.threads={threads}"]  # fmt: skip
    return resolve_config(compose([*overrides, *extra]))


def bare_loop(config: dict, steps: int) -> float:
    """The app's parts and training step, on the whole training set standardised once up front."""
    parts = setup.build(config)
    x_all, y_all = parts.data.normalize(parts.data.train_x), parts.data.train_y

    def run(n: int) -> None:
        for _ in range(n):
            idx = next(parts.batches)
            train_step(parts.net, parts.optimizer, None, x_all[idx], y_all[idx], parts.fast)

    run(50)  # warm-up
    start = time.perf_counter()
    run(steps)
    return steps / (time.perf_counter() - start)


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--data", default="fashion_mnist")
    parser.add_argument("--norm", default="builtin", help="a norm config (configs/norm/)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating bare/app rounds; medians reported")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for the app run")
    args = parser.parse_args()

    config = compose_fig1(args.data, args.norm, args.steps, args.threads, args.overrides)
    bare, app = [], []
    for _ in range(args.rounds):
        bare.append(bare_loop(config, args.steps))
        with tempfile.TemporaryDirectory() as run_dir:
            summary = train(config, run_dir)
        app.append(summary["steps_per_s"])
    bare_s, app_s = sorted(bare)[len(bare) // 2], sorted(app)[len(app) // 2]
    print(f"machine: {cpu_name()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")  # fmt: skip
    print(
        f"config: data={args.data} norm={args.norm} steps={args.steps} "
        f"eval_every={config['trainer']['eval_every']} probe={config['probe']['num_examples']} examples"
    )
    print("| loop | steps/s (median of rounds) | all rounds |")
    print("|---|---|---|")
    print(f"| bare loop | {bare_s:.0f} | {', '.join(f'{v:.0f}' for v in bare)} |")
    print(f"| bn_repro.train (eval + probes + files) | {app_s:.0f} | {', '.join(f'{v:.0f}' for v in app)} |")
    print(f"ratio app / bare: {app_s / bare_s:.2f}")


if __name__ == "__main__":
    main()
