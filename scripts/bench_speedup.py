"""Seconds per 1,000 training steps of each Fig. 2 variant, eager and compiled, on this machine's device.

    python scripts/bench_speedup.py                                  # all six presets, eager + compiled
    python scripts/bench_speedup.py --compile off --steps 20 --warmup 3 --device cpu   # a quick CPU look
    python scripts/bench_speedup.py --variants fig2_bn_x5 --data cifar10             # the real data

Each variant runs the app's training step (bn_repro/engine/step.train_step on the parts that
bn_repro/engine/setup.build makes: device-side crop and flip when the data config has them, the
trainer's precision / channels_last settings resolved for the device, SGD + LR schedule) on data held
on the device: generated CIFAR-shaped images by default (same shapes and cost as
CIFAR-10). Warm-up steps (they include torch.compile's compilation and cudnn.benchmark's search) are
timed apart from the measured steps. One full evaluation (eager, as in the app; 10,000 test images,
or N with data.synthetic.num_test=N) is timed too, since a Fig. 2 run evaluates every 1,000 steps.
The device is synchronised before each clock read.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from bn_repro.analysis.speedup import PAPER_ORDER
from bn_repro.config import compose, resolve_config
from bn_repro.engine import setup
from bn_repro.engine.evaluate import evaluate
from bn_repro.engine.step import train_step

# CIFAR-10's split sizes, so that an evaluation costs what it costs on the real data.
SYNTHETIC = ["data=synthetic", "data.synthetic.shape=cifar", "data.synthetic.num_train=10000",
             "data.synthetic.num_test=10000", "data.augment=true"]  # fmt: skip


def compose_variant(variant: str, data: str, device: str, threads: int, extra: list[str]) -> dict:
    data_overrides = SYNTHETIC if data == "synthetic" else [f"data={data}", "data.download=false"]
    return resolve_config(compose([f"experiment={variant}", *data_overrides, f"trainer.device={device}",
                                   f"trainer.threads={threads}", *extra]))  # fmt: skip


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(config: dict, compile_model: bool, steps: int, warmup: int) -> dict:
    config = {**config, "trainer": {**config["trainer"], "compile": compile_model}}
    parts = setup.build(config)
    device, trainer = parts.device, config["trainer"]

    def run(n: int) -> float:
        _sync(device)
        start = time.perf_counter()
        for _ in range(n):
            train_step(parts.net, parts.optimizer, parts.scheduler, *parts.next_batch(), parts.fast)
        _sync(device)
        return time.perf_counter() - start

    model, data, fast = parts.model, parts.data, parts.fast
    parts.net.train()
    warmup_s = run(warmup)
    measured_s = run(steps)
    _sync(device)
    start = time.perf_counter()
    evaluate(model, data, trainer["eval_batch_size"])
    _sync(device)
    return {
        "s_per_1000": 1000 * measured_s / steps,
        "warmup_s": warmup_s,
        "eval_s": time.perf_counter() - start,
        "test_images": len(data.test_y),
        "fast_path": fast.describe(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", nargs="+", default=list(PAPER_ORDER))
    parser.add_argument("--data", default="synthetic", help="synthetic (CIFAR-shaped) | cifar10 | ...")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--compile", default="both", choices=["off", "on", "both"])
    parser.add_argument("--steps", type=int, default=300, help="measured steps per variant")
    parser.add_argument("--warmup", type=int, default=30, help="steps before the clock starts")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. model.width=0.5")
    args = parser.parse_args()
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.compile]

    rows = []
    for variant in args.variants:
        config = compose_variant(variant, args.data, args.device, args.threads, args.overrides)
        for compile_model in modes:
            result = bench(config, compile_model, args.steps, args.warmup)
            rows.append((variant, compile_model, result))
            print(f"{variant} compile={compile_model}: {result['s_per_1000']:.1f} s / 1000 steps", flush=True)

    device = rows[0][2]["device"]
    print(f"\nmachine: {device}; host {_cpu_name()}, {torch.get_num_threads()} CPU threads; "
          f"torch {torch.__version__}")  # fmt: skip
    print(f"data={args.data}, {args.steps} measured steps after {args.warmup} warm-up steps, batch "
          f"{config['data']['batch_size']}; overrides: {' '.join(args.overrides) or 'none'}")  # fmt: skip
    print(f"\n| variant | precision | channels_last | compile | s / 1000 steps | warm-up s | "
          f"eval s ({rows[0][2]['test_images']} test images) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    eager = {}
    for variant, compile_model, r in rows:
        fp = r["fast_path"]
        if not compile_model:
            eager[variant] = r["s_per_1000"]
        print(f"| {variant} | {fp['precision']} | {fp['channels_last']} | {compile_model} | "
              f"{r['s_per_1000']:.1f} | {r['warmup_s']:.1f} | {r['eval_s']:.2f} |")  # fmt: skip
    gains = [(v, eager[v] / r["s_per_1000"]) for v, c, r in rows if c and v in eager]
    if gains:
        print("\ncompile gain (eager time / compiled time): "
              + ", ".join(f"{v} {g:.2f}x" for v, g in gains))  # fmt: skip


if __name__ == "__main__":
    main()
