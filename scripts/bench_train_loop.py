"""Throughput of the Fig. 1 training run against a bare loop, measured in one process.

    python scripts/bench_train_loop.py                       # Fashion-MNIST (Debian's files), 5,000 steps
    python scripts/bench_train_loop.py --steps 2000 --data synthetic --norm custom

The bare loop is the floor any training app pays: preloaded float tensors, the same network and
optimizer, no evaluation, no probes, no files. The app's run includes its default evaluation on the
full test set and the activation probes every trainer.eval_every steps; its throughput counts them.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from bn_repro.data import EpochBatches, load_dataset
from bn_repro.models import build_model
from bn_repro.train import build_optimizer, seed_everything, train

CONFIG_DIR = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "configs")


def compose_fig1(data: str, norm: str, steps: int, extra: list[str]) -> dict:
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose("train", overrides=["experiment=fig1_mnist", f"data={data}", f"norm={norm}",
                                          f"trainer.max_steps={steps}", "trainer.progress=false",
                                          "trainer.device=cpu", *extra])  # fmt: skip
    return OmegaConf.to_container(cfg, resolve=True)


def bare_loop(config: dict, steps: int) -> float:
    # The app's seeding and deterministic-kernel setting, so both loops run the same kernels.
    seed_everything(config["seed"], config["trainer"]["deterministic"])
    d = config["data"]
    data = load_dataset(d["name"], d["root"], "cpu", download=False, synthetic=d.get("synthetic"))
    x_all, y_all = data.normalize(data.train_x), data.train_y
    model = build_model(config["model"], config["norm"], data.input_shape, data.num_classes)
    optimizer = build_optimizer(model, config["optim"])
    batches = EpochBatches(len(y_all), d["batch_size"], torch.Generator().manual_seed(0), "cpu")
    for _ in range(50):  # warm-up
        idx = next(batches)
        loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    start = time.perf_counter()
    for _ in range(steps):
        idx = next(batches)
        loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
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
    parser.add_argument("--norm", default="builtin", choices=["none", "builtin", "custom"])
    parser.add_argument("--rounds", type=int, default=3, help="alternating bare/app rounds; medians reported")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for the app run")
    args = parser.parse_args()

    config = compose_fig1(args.data, args.norm, args.steps, args.overrides)
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
