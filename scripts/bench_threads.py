"""Fig. 1 training steps per second at each torch thread count, on an idle CPU and beside busy processes.

    python scripts/bench_threads.py                          # threads 1 and 2, 0 and 1 busy processes
    python scripts/bench_threads.py --threads 1 2 4 --busy 0 1 2 --seconds 20 --norm custom
    python scripts/bench_threads.py --threads 2 --wait-policy active passive    # OpenMP's idle threads

Each measurement runs the app's parts and training step (bn_repro/engine/setup.build, train_step) on the
Fig. 1 MLP for `--seconds` after a warm-up, in a fresh process per thread count (torch's thread pool is
set once per process), while `--busy` other processes spin on a core each (the "load" of a shared
machine or of parallel sweep jobs). It reports steps/s and the slowest 1-second window, which shows
stalls that a mean hides. This is what `trainer.threads=auto` is chosen from (bn_repro/engine/setup.py).
`--wait-policy` sets how OpenMP's idle threads wait between parallel regions: default (libgomp's: spin a
while, then sleep), active (OMP_WAIT_POLICY: they spin), passive (they sleep at once) or spinN
(GOMP_SPINCOUNT=N: libgomp spins N times, then sleeps).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time

WORKER = r"""
import json, sys, time
import torch
from bn_repro.config import compose, resolve_config
from bn_repro.engine import setup
from bn_repro.engine.step import train_step
threads, seconds, data, norm = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4]
config = resolve_config(compose(["experiment=fig1_mnist", f"data={data}", f"norm={norm}",
                                 "trainer.device=cpu", f"trainer.threads={threads}", "data.download=false"]))
parts = setup.build(config)
x_all, y_all = parts.data.normalize(parts.data.train_x), parts.data.train_y
def step():
    idx = next(parts.batches)
    train_step(parts.net, parts.optimizer, None, x_all[idx], y_all[idx], parts.fast)
for _ in range(100):
    step()
windows, steps, start = [], 0, time.perf_counter()
window_start, window_steps = start, 0
while time.perf_counter() - start < seconds:
    step(); steps += 1; window_steps += 1
    now = time.perf_counter()
    if now - window_start >= 1.0:
        windows.append(window_steps / (now - window_start)); window_start, window_steps = now, 0
print(json.dumps({"steps_per_s": steps / (time.perf_counter() - start), "slowest_window": min(windows or [0]),
                  "threads": torch.get_num_threads()}))
"""


def spin() -> None:
    while True:
        pass


def wait_env(policy: str) -> dict[str, str]:
    """active | passive: OMP_WAIT_POLICY; spinN: libgomp's GOMP_SPINCOUNT=N (spin N times, then sleep);
    default: neither (libgomp spins a while, then sleeps)."""
    if policy == "default":
        return {}
    if policy.startswith("spin"):
        return {"GOMP_SPINCOUNT": policy[len("spin") :]}
    return {"OMP_WAIT_POLICY": policy.upper()}


def measure(threads: int, busy: int, seconds: float, data: str, norm: str, wait_policy: str) -> dict:
    spinners = [mp.Process(target=spin, daemon=True) for _ in range(busy)]
    for p in spinners:
        p.start()
    try:
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
        env.update({"OMP_NUM_THREADS": str(threads), **wait_env(wait_policy)})
        out = subprocess.run([sys.executable, "-c", WORKER, str(threads), str(seconds), data, norm],
                             capture_output=True, text=True, env=env, check=True).stdout  # fmt: skip
        return json.loads(out.strip().splitlines()[-1])
    finally:
        for p in spinners:
            p.terminate()
            p.join()


def _policy(text: str) -> str:
    spin_count = text[len("spin") :] if text.startswith("spin") else ""
    if text in ("default", "active", "passive") or spin_count.isdigit():
        return text
    raise argparse.ArgumentTypeError(f"{text!r}: expected default, active, passive or spinN (e.g. spin10000)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--busy", type=int, nargs="+", default=[0, 1], help="busy processes beside the run")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--data", default="fashion_mnist")
    parser.add_argument("--norm", default="builtin")
    parser.add_argument("--wait-policy", nargs="+", default=["default"], type=_policy,
                        help="default, active, passive, or spinN (GOMP_SPINCOUNT=N)")  # fmt: skip
    args = parser.parse_args()
    from bench_speedup import _cpu_name  # the same machine description as the other benchmarks

    print(f"machine: {_cpu_name()}, {os.cpu_count()} logical CPUs; Fig. 1 MLP, data={args.data}, "
          f"norm={args.norm}, {args.seconds:.0f} s per cell")  # fmt: skip
    print("| threads | OMP_WAIT_POLICY | busy processes | steps/s | slowest 1-s window (steps/s) |")
    print("|---|---|---|---|---|")
    for busy in args.busy:
        for threads in args.threads:
            for policy in args.wait_policy:
                r = measure(threads, busy, args.seconds, args.data, args.norm, policy)
                rates = f"{r['steps_per_s']:.0f} | {r['slowest_window']:.0f}"
                cells = f"{r['threads']} | {policy} | {busy} | {rates}"
                print(f"| {cells} |", flush=True)
        time.sleep(1)


if __name__ == "__main__":
    main()
