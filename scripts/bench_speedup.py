"""Seconds per 1,000 training steps of each Fig. 2 variant, eager and compiled, on this machine's device.

    python scripts/bench_speedup.py                                  # all six presets, eager + compiled
    python scripts/bench_speedup.py --compile off --steps 20 --warmup 3 --device cpu   # a quick CPU look
    python scripts/bench_speedup.py --variants fig2_bn_x5 --data cifar10             # the real data

Each variant runs the training step of bn_repro.train (device-side crop and flip when the data config
has them, the trainer's precision / channels_last settings resolved for the device, SGD + LR schedule)
on data held on the device: generated CIFAR-shaped images by default (same shapes and cost as
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
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from bn_repro.accel import FastPath
from bn_repro.augment import RandomCropFlip
from bn_repro.data import EpochBatches, load_dataset
from bn_repro.models import build_model
from bn_repro.speedup import PAPER_ORDER
from bn_repro.train import build_optimizer, build_scheduler, evaluate, resolve_device

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")
# CIFAR-10's split sizes, so that an evaluation costs what it costs on the real data.
SYNTHETIC = ["data=synthetic", "data.synthetic.shape=cifar", "data.synthetic.num_train=10000",
             "data.synthetic.num_test=10000", "data.augment=true"]  # fmt: skip


def compose_variant(variant: str, data: str, device: str, extra: list[str]) -> dict:
    data_overrides = SYNTHETIC if data == "synthetic" else [f"data={data}"]
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose("train", overrides=[f"experiment={variant}", *data_overrides,
                                          f"trainer.device={device}", *extra])  # fmt: skip
    return OmegaConf.to_container(cfg, resolve=True)


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
    trainer, data_cfg = {**config["trainer"], "compile": compile_model}, config["data"]
    device = resolve_device(trainer["device"])
    torch.manual_seed(config["seed"])
    data = load_dataset(data_cfg["name"], data_cfg["root"], device, download=False,
                        synthetic=data_cfg.get("synthetic"))  # fmt: skip
    model = build_model(config["model"], config["norm"], data.input_shape, data.num_classes).to(device)
    fast = FastPath.from_config(trainer, device, model)
    fast.prepare(model)
    net = fast.compiled(model)
    optimizer = build_optimizer(model, config["optim"])
    scheduler = build_scheduler(optimizer, config["optim"]["schedule"])
    generator = torch.Generator().manual_seed(0)
    batches = EpochBatches(len(data.train_y), data_cfg["batch_size"], generator, device)
    augment = RandomCropFlip(seed=0, device=device) if data_cfg["augment"] else None

    def run(n: int) -> float:
        _sync(device)
        start = time.perf_counter()
        for _ in range(n):
            idx = next(batches)
            images = data.train_x[idx]
            x, y = data.normalize(augment(images) if augment is not None else images), data.train_y[idx]
            with fast.autocast():
                loss = F.cross_entropy(net(fast.input(x)), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        _sync(device)
        return time.perf_counter() - start

    net.train()
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
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. model.width=0.5")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.compile]

    rows = []
    for variant in args.variants:
        config = compose_variant(variant, args.data, args.device, args.overrides)
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
