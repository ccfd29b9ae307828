"""Seconds from `python -m bn_repro.train ...` to a config error, to --help, and to the end of a one-step run.

    python scripts/bench_startup.py                 # 3 repeats of each, medians
    python scripts/bench_startup.py --repeats 5

Each case is a fresh process, timed from start to exit, on whatever load the machine has (the load
average is printed beside the table). Hydra's own errors and the value checks of bn_repro/config.py
(check_values), the registries' names and options among them (read from their source files,
bn_repro/registry_index.py), come before torch is imported; errors that need the model built (on the
meta device: a norm option that depends on a layer's width) and a run import it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES = [
    ("key typo (Hydra)", ["trainer.max_step=10"]),
    ("unknown preset (Hydra)", ["experiment=nope"]),
    ("bad value: model.activation=tanh", ["model.activation=tanh"]),
    ("bad value: data.batch_size=0", ["data.batch_size=0"]),
    ("--help", ["--help"]),
    ("--cfg job", ["--cfg", "job"]),
    ("registry: norm.kind=nope", ["norm.kind=nope"]),
    ("registry: norm=custom norm.backward=paper", ["norm=custom", "norm.backward=paper"]),
    ("registry: +measure.landscape.stepsize=2", ["+measure.landscape.stepsize=2"]),
    ("model on meta: norm=groupnorm norm.groups=3", ["norm=groupnorm", "norm.groups=3"]),
    ("one training step (synthetic data)", ["trainer.max_steps=1", "trainer.progress=false"]),
]


def timed(overrides: list[str], run_dir: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bn_repro.train", "data=synthetic", f"hydra.run.dir={run_dir}",
                    *overrides], cwd=REPO, capture_output=True)  # fmt: skip
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; {os.cpu_count()} CPUs")
    print("| case | median s | all runs s |")
    print("|---|---:|---|")
    for name, overrides in CASES:
        runs = []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as run_dir:
                runs.append(timed(overrides, run_dir))
        print(
            f"| {name} | {statistics.median(runs):.2f} | {', '.join(f'{r:.2f}' for r in runs)} |", flush=True
        )
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
