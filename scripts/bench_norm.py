"""Forward+backward time of the BatchNorm implementations, training mode, interleaved A/B rounds.

    python scripts/bench_norm.py --device cpu --threads 1 --repeats 30

Implementations: builtin (nn.BatchNorm1d for (N, C), nn.BatchNorm2d for (N, C, H, W)), custom
autograd and custom explicit (bn_repro.norms.BatchNorm), and the seed notebook's baseline
(bn_repro.norms.seed_reference.SeedBatchNorm). One step is y = bn(x) then torch.autograd.grad of y
against x and the affine parameters with a fixed random upstream gradient.

Method: everything runs in one process, with `--threads` intra-op threads (default: torch's own
choice; the header line of the output says how many ran). After warmup, each
round times one block of `--iters` steps per implementation (auto-sized to ~20 ms of the
built-in by default), in an order rotated every round so no implementation always runs first.
The table gives the median per-step time over `--repeats` rounds, the interquartile range, and
the median ratio to the built-in (per round, so slow drifts of the machine cancel). On CUDA every
block is bracketed by torch.cuda.synchronize().

Heap warm-up (CPU, on unless --no-warm-heap): glibc returns freed memory at the top of the heap to
the kernel once more than twice its mmap threshold is free, and that threshold starts at 128 KiB
and only grows when a larger block is freed. In a fresh process a step's input-sized tensors can
then be page-faulted back in on every step, which on this VM costs 0.3 ms per MiB or more and depends
on the order of earlier allocations, not on the implementation. Allocating and freeing one 16 MiB
block first raises the threshold, as any training process that has held larger tensors has.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import time
from collections.abc import Callable

try:
    import resource
except ImportError:  # not on Windows
    resource = None

import torch
from torch import nn

from bn_repro import norms
from bn_repro.norms.seed_reference import SeedBatchNorm

DEFAULT_SHAPES = ["60,100", "256,1024", "32,64,32,32", "128,64,32,32"]
IMPLEMENTATIONS = ("builtin", "autograd", "explicit", "seed")
# Below glibc's 32 MiB cap on its dynamic mmap threshold, so freeing it raises the threshold.
HEAP_WARMUP_BYTES = 16 << 20


def make_layer(name: str, shape: tuple[int, ...], device: torch.device) -> nn.Module:
    """builtin and custom come from the norm registry (as models get them); seed is the unregistered
    notebook reference."""
    channels = shape[1]
    if name == "seed":
        layer = SeedBatchNorm(channels, num_dims=len(shape))
    elif name == "builtin":
        layer = norms.build("builtin", channels, len(shape))
    else:
        layer = norms.build("custom", channels, len(shape), backward=name)
    return layer.to(device).train()


def make_step(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    inputs = [x, *layer.parameters()]

    def step() -> None:
        torch.autograd.grad(layer(x), inputs, grad)

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def minor_faults() -> int:
    """Page faults of this process so far (0 where the platform does not count them)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource is not None else 0


def time_block(step: Callable[[], None], iters: int, device: torch.device) -> tuple[float, float]:
    """Seconds and page faults per step."""
    sync(device)
    faults = minor_faults()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    sync(device)
    return (time.perf_counter() - start) / iters, (minor_faults() - faults) / iters


def bench_shape(
    shape: tuple[int, ...], device: torch.device, repeats: int, iters: int | None, warmup: int
) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).to(device).requires_grad_()
    grad = torch.randn(shape, generator=gen).to(device)
    steps = {name: make_step(make_layer(name, shape, device), x, grad) for name in IMPLEMENTATIONS}
    for step in steps.values():
        time_block(step, warmup, device)
    if iters is None:
        per_step, _ = time_block(steps["builtin"], warmup, device)
        iters = max(1, min(1000, round(0.02 / per_step)))

    times: dict[str, list[float]] = {name: [] for name in IMPLEMENTATIONS}
    faults: dict[str, list[float]] = {name: [] for name in IMPLEMENTATIONS}
    for r in range(repeats):
        order = IMPLEMENTATIONS[r % len(IMPLEMENTATIONS) :] + IMPLEMENTATIONS[: r % len(IMPLEMENTATIONS)]
        for name in order:
            seconds, step_faults = time_block(steps[name], iters, device)
            times[name].append(seconds)
            faults[name].append(step_faults)

    rows = []
    for name in IMPLEMENTATIONS:
        q1, median, q3 = statistics.quantiles(times[name], n=4, method="inclusive")
        ratios = [t / b for t, b in zip(times[name], times["builtin"], strict=True)]
        rows.append(
            {
                "device": device.type,
                "shape": "x".join(map(str, shape)),
                "impl": name,
                "median_us": median * 1e6,
                "q1_us": q1 * 1e6,
                "q3_us": q3 * 1e6,
                "ratio_to_builtin": statistics.median(ratios),
                "repeats": repeats,
                "iters_per_block": iters,
                "page_faults_per_step": statistics.median(faults[name]),
            }
        )
    return rows


def machine_description(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = f"{names[0]} ({len(names)} logical CPUs)" if names else cpu
    except OSError:
        pass
    text = (
        f"CPU: {cpu}; torch {torch.__version__}, {torch.get_num_threads()} intra-op threads; "
        f"Python {platform.python_version()}; {platform.platform()}"
    )
    if device.type == "cuda":
        text += f"; GPU: {torch.cuda.get_device_name(device)}"
    return text


def load_average() -> str:
    """1/5/15-minute load average: other processes on a shared machine skew CPU timings."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "unknown"


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| device | shape | impl | median us | IQR us | ratio to builtin | page faults/step |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['device']} | {row['shape']} | {row['impl']} | {row['median_us']:.1f} | "
            f"{row['q1_us']:.1f}-{row['q3_us']:.1f} | {row['ratio_to_builtin']:.2f} | "
            f"{row['page_faults_per_step']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES, help="comma-separated, e.g. 256,1024")
    parser.add_argument("--repeats", type=int, default=30, help="A/B rounds per shape")
    parser.add_argument("--iters", type=int, default=None, help="steps per timed block (default: auto)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps per implementation")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's own choice)"
    )
    parser.add_argument("--csv", default=None, help="also write the rows to this CSV file")
    parser.add_argument(
        "--no-warm-heap", dest="warm_heap", action="store_false", help="skip the CPU heap warm-up"
    )
    args = parser.parse_args()
    if args.repeats < 2:
        parser.error("--repeats must be at least 2 to give a spread")

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cpu" and args.warm_heap:
        block = torch.empty(HEAP_WARMUP_BYTES, dtype=torch.uint8)
        del block
    load_before = load_average()
    rows = []
    for text in args.shapes:
        shape = tuple(int(v) for v in text.split(","))
        if len(shape) not in (2, 4):
            parser.error(f"shape {text!r}: the built-in and seed baselines take only 2-D or 4-D shapes")
        rows += bench_shape(shape, device, args.repeats, args.iters, args.warmup)

    print(machine_description(device))
    print(f"load average before: {load_before}, after: {load_average()}")
    if device.type == "cpu":
        print(f"heap warm-up: {'on' if args.warm_heap else 'off (--no-warm-heap)'}")
    print()
    print(markdown_table(rows))
    if args.csv:
        os.makedirs(os.path.dirname(args.csv) or ".", exist_ok=True)
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
