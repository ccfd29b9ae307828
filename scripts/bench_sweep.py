"""One sweep four ways: the Fig. 1 MLP, seeds x norm none/builtin on Fashion-MNIST, a fixed step count.

    python scripts/bench_sweep.py --out sweep_bench.md                      # 10 seeds x 2 norms, 2,000 steps
    python scripts/bench_sweep.py --steps 50000 --out results/sweep_bench.md  # the full Fig. 1 sweep
    python scripts/bench_sweep.py --seeds 2 --steps 200 --ways sequential batched --out /tmp/b.md

The ways: `sequential` (the basic launcher, one job after another), `parallel` (hydra/launcher=parallel,
one process per core), `batched` (hydra/launcher=batched in one process, groups=1) and `batched_per_core`
(hydra/launcher=batched groups=auto: one group process per core). Each is the app's real multirun
command (`python -m bn_repro.train -m ...`, default evaluation and probes), timed from start to end, so
start-up, data loading, evaluations and probes count. The table gives wall time, aggregate training
steps/s (runs x steps / wall), runs per hour, the ratio to sequential, and the share of the arithmetic
limit: the Fig. 1 step's matmul FLOPs over this CPU's measured sgemm rate, times its cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WAYS = {
    "sequential": [],
    "parallel": ["hydra/launcher=parallel"],
    "batched": ["hydra/launcher=batched", "hydra.launcher.groups=1"],
    "batched_per_core": ["hydra/launcher=batched", "hydra.launcher.groups=auto"],
}
LABELS = {
    "sequential": "sequential (basic launcher)",
    "parallel": "hydra/launcher=parallel",
    "batched": "batched, groups=1",
    "batched_per_core": "batched, one group per core",
}
HIDDEN, INPUTS, CLASSES, BATCH = (100, 100, 100), 784, 10, 60


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def flops_per_step() -> float:
    """Matmul FLOPs of one Fig. 1 training step: forward, weight gradients, and input gradients of every
    layer but the first (BN, sigmoid and the update are a few percent more, left out)."""
    widths = [INPUTS, *HIDDEN, CLASSES]
    layers = list(zip(widths[:-1], widths[1:], strict=True))
    forward = sum(2 * BATCH * i * o for i, o in layers)
    input_grads = sum(2 * BATCH * i * o for i, o in layers[1:])
    return 2 * forward + input_grads


def sgemm_rate(seconds: float = 2.0) -> float:
    """FLOP/s of a large float32 matmul on one thread (the per-core arithmetic limit)."""
    import torch

    torch.set_num_threads(1)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    for _ in range(3):
        a @ b
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        calls += 1
    return calls * 2 * 1024**3 / (time.perf_counter() - start)


def run_way(way: str, args, sweep_dir: Path) -> dict:
    command = [
        sys.executable, "-m", "bn_repro.train", "-m", f"experiment={args.experiment}", "norm=none,builtin",
        f"seed=range({args.seeds})", f"trainer.max_steps={args.steps}", "trainer.progress=false",
        f"hydra.sweep.dir={sweep_dir}", *WAYS[way], *args.overrides,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    summaries = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/summary.json"))]
    finished = [s for s in summaries if s["status"] in ("finished", "diverged")]
    error = None if result.returncode == 0 else result.stderr.strip().splitlines()[-1:]
    return {
        "way": way, "wall_s": wall, "runs": len(finished), "steps": sum(s["steps"] for s in finished),
        "threads": sorted({s["threads"] for s in summaries}), "error": error,
    }  # fmt: skip


def table(rows: list[dict], limit: float, rate: float, args) -> str:
    sequential = next((r for r in rows if r["way"] == "sequential" and r["runs"]), None)
    lines = [
        f"Sweep: {2 * args.seeds} runs ({args.seeds} seeds x norm none/builtin), `{args.experiment}`, "
        f"{args.steps:,} steps each, default evaluation and probes; {cores()} cores, OMP_NUM_THREADS=1.",
        f"Arithmetic limit: {flops_per_step() / 1e6:.1f} MFLOP per step (matmuls) over {rate / 1e9:.1f} "
        f"GFLOP/s sgemm per core x {cores()} cores = {limit:,.0f} steps/s.",
        "",
        "| way | runs | threads/process | wall (s) | steps/s (all runs) | runs/hour | vs sequential "
        "| of limit |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["error"]:
            lines.append(f"| {LABELS[r['way']]} | failed: {' '.join(r['error'])} | | | | | | |")
            continue
        rate_all = r["steps"] / r["wall_s"]
        ratio = f"{sequential['wall_s'] / r['wall_s']:.2f}x" if sequential else "-"
        lines.append(
            f"| {LABELS[r['way']]} | {r['runs']} | {','.join(map(str, r['threads']))} | {r['wall_s']:.1f} | "
            f"{rate_all:,.0f} | {r['runs'] * 3600 / r['wall_s']:,.0f} | {ratio} | {rate_all / limit:.1%} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="markdown file for the table")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--experiment", default="fig1_fashion_mnist")
    parser.add_argument("--ways", nargs="+", choices=list(WAYS), default=list(WAYS))
    parser.add_argument("--workdir", type=Path, default=None, help="sweep dirs (default: a temporary dir)")
    parser.add_argument("overrides", nargs="*", help="extra app overrides for every way")
    args = parser.parse_args()
    rate = sgemm_rate()
    limit = cores() * rate / flops_per_step()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        rows = []
        for way in args.ways:
            rows.append(run_way(way, args, root / way))
            print(json.dumps(rows[-1]), flush=True)
    text = table(rows, limit, rate, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
