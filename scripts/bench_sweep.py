"""One Fig. 1 sweep run several ways, each against this machine's own arithmetic limit, per core.

    python scripts/bench_sweep.py --steps 10000 --out results/bench_sweep_10k.md       # every way
    python scripts/bench_sweep.py --steps 50000 --ways batched_per_core --out /tmp/b.md   # the full sweep
    python scripts/bench_sweep.py --seeds 2 --steps 200 --ways parallel batched --out /tmp/b.md

The sweep: the Fig. 1 MLP, `--seeds` seeds x norm none/builtin on Fashion-MNIST, a fixed step count.
The ways: `plain_loop` (a plain PyTorch loop per model, one after another in one process on one core,
no evaluation: the reference per core; at most 2,000 steps per model, its rate is steady by then),
`sequential` (the basic launcher), `parallel` (hydra/launcher=parallel, one process per core),
`batched` (hydra/launcher=batched, groups=1: one process, all cores) and `batched_per_core`
(hydra/launcher=batched, groups=auto: one group process per core). The app's ways are its real multirun
command (`python -m bn_repro.train -m ...`, default evaluation every 500 steps and activation probes),
timed from start to exit, so start-up, data loading, evaluations and probes count.

The limit is measured here, each run: float32 matmul FLOP/s at 1024^2 squares on 1 thread and on all
threads, and at the Fig. 1 step's own shapes (batch 60) on 1 thread. A way's share of the limit is its
model-steps/s times the step's matmul FLOPs over (cores x the 1-thread rate); "per core" divides its
model-steps/s by the cores it uses; "vs parallel" compares it with hydra/launcher=parallel on the same
cores, the way to beat (not one process on one core).
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
    "plain_loop": None,
    "sequential": [],
    "parallel": ["hydra/launcher=parallel"],
    "batched": ["hydra/launcher=batched", "hydra.launcher.groups=1"],
    "batched_per_core": ["hydra/launcher=batched", "hydra.launcher.groups=auto"],
}
LABELS = {
    "plain_loop": "plain PyTorch loops, one after another (no evaluation)",
    "sequential": "sequential (basic launcher)",
    "parallel": "hydra/launcher=parallel",
    "batched": "batched, groups=1",
    "batched_per_core": "batched, one group per core",
}
HIDDEN, INPUTS, CLASSES, BATCH = (100, 100, 100), 784, 10, 60
PLAIN_LOOP_STEPS = 2000


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _layers() -> list[tuple[int, int]]:
    widths = [INPUTS, *HIDDEN, CLASSES]
    return list(zip(widths[:-1], widths[1:], strict=True))


def step_matmuls() -> list[tuple[int, int, int]]:
    """(m, k, n) of every matmul of one Fig. 1 training step: forward, weight gradients, and input
    gradients of every layer but the first (BN, sigmoid and the update are a few percent more, left out)."""
    forward = [(BATCH, i, o) for i, o in _layers()]
    weight_grads = [(o, BATCH, i) for i, o in _layers()]
    input_grads = [(BATCH, o, i) for i, o in _layers()[1:]]
    return forward + weight_grads + input_grads


def flops_per_step() -> float:
    return sum(2 * m * k * n for m, k, n in step_matmuls())


def matmul_rate(shapes: list[tuple[int, int, int]], threads: int, seconds: float = 2.0) -> float:
    """FLOP/s of float32 matmuls of `shapes`, one after another, on `threads` threads (best of 3 runs)."""
    import torch

    torch.set_num_threads(threads)
    pairs = [(torch.randn(m, k), torch.randn(k, n)) for m, k, n in shapes]
    flops = sum(2 * m * k * n for m, k, n in shapes)
    best = 0.0
    for _ in range(3):
        for a, b in pairs:
            a @ b
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 3:
            for a, b in pairs:
                a @ b
            calls += 1
        best = max(best, calls * flops / (time.perf_counter() - start))
    return best


def first_layer_weight_gradient(members: int = 10, seconds: float = 2.0) -> dict[str, float]:
    """FLOP/s of the first layer's weight gradient of `members` batched members on 1 thread, in the two
    layouts: x^T g (activations laid out (K, B, features), the weights (K, in, out): the batched model
    before) and g x^T ((K, features, B), the weights as the members hold them: now), best of 3."""
    import torch

    torch.set_num_threads(1)
    x = torch.randn(members, BATCH, INPUTS)  # the gathered batch, as both layouts read it
    g_rows = torch.randn(members, BATCH, HIDDEN[0])  # the output gradient, (K, B, out)
    g_cols = g_rows.transpose(1, 2).contiguous()  # (K, out, B)
    ways = {"x^T g": lambda: torch.bmm(x.transpose(1, 2), g_rows), "g x^T": lambda: torch.bmm(g_cols, x)}
    flops = 2 * members * BATCH * INPUTS * HIDDEN[0]
    rates = {}
    for name, call in ways.items():
        best = 0.0
        for _ in range(3):
            call()
            calls, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds / 3:
                call()
                calls += 1
            best = max(best, calls * flops / (time.perf_counter() - start))
        rates[name] = best
    return rates


def limits() -> dict[str, float]:
    square = [(1024, 1024, 1024)]
    layouts = first_layer_weight_gradient()
    return {
        "sgemm_1": matmul_rate(square, 1),
        "sgemm_all": matmul_rate(square, cores()),
        "step_shapes_1": matmul_rate(step_matmuls(), 1),
        "wgrad_old_layout_1": layouts["x^T g"],
        "wgrad_new_layout_1": layouts["g x^T"],
    }


PLAIN_LOOP = r"""
import json, sys, time
import torch
from torch import nn
torch.set_num_threads(1)
seeds, steps = int(sys.argv[1]), int(sys.argv[2])
data, targets = torch.randn(60000, 784), torch.randint(0, 10, (60000,))
def mlp(bn):
    layers, width = [], 784
    for out in (100, 100, 100):
        layers += [nn.Linear(width, out, bias=not bn), *( [nn.BatchNorm1d(out)] if bn else []), nn.Sigmoid()]
        width = out
    return nn.Sequential(*layers, nn.Linear(width, 10))
start = time.perf_counter()
for bn in (False, True):
    for seed in range(seeds):
        torch.manual_seed(seed)
        model = mlp(bn)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        for _ in range(steps):
            idx = torch.randint(0, 60000, (60,))
            loss = nn.functional.cross_entropy(model(data[idx]), targets[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
print(json.dumps({"wall_s": time.perf_counter() - start}))
"""


def run_way(way: str, args, sweep_dir: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    if way == "plain_loop":
        steps = min(args.steps, PLAIN_LOOP_STEPS)
        out = subprocess.run([sys.executable, "-c", PLAIN_LOOP, str(args.seeds), str(steps)], env=env,
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        wall = json.loads(out.strip().splitlines()[-1])["wall_s"]
        return {"way": way, "wall_s": wall, "runs": 2 * args.seeds, "steps": 2 * args.seeds * steps,
                "processes": 1, "threads": [1], "error": None}  # fmt: skip
    command = [
        sys.executable, "-m", "bn_repro.train", "-m", f"experiment={args.experiment}", "norm=none,builtin",
        f"seed=range({args.seeds})", f"trainer.max_steps={args.steps}", "trainer.progress=false",
        f"hydra.sweep.dir={sweep_dir}", *WAYS[way], *args.overrides,
    ]  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    summaries = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/summary.json"))]
    finished = [s for s in summaries if s["status"] in ("finished", "diverged")]
    error = None if result.returncode == 0 else result.stderr.strip().splitlines()[-1:]
    processes = 1 if way in ("sequential", "batched") else min(cores(), 2 * args.seeds)
    return {
        "way": way, "wall_s": wall, "runs": len(finished), "steps": sum(s["steps"] for s in finished),
        "processes": processes, "threads": sorted({s["threads"] for s in summaries}), "error": error,
    }  # fmt: skip


def cores_used(row: dict) -> int:
    return min(cores(), row["processes"] * max(row["threads"] or [1]))


def table(rows: list[dict], rates: dict[str, float], args) -> str:
    flops = flops_per_step()
    limit = cores() * rates["sgemm_1"] / flops
    shaped = cores() * rates["step_shapes_1"] / flops
    parallel = next((r for r in rows if r["way"] == "parallel" and r["runs"] and not r["error"]), None)
    plain = next((r for r in rows if r["way"] == "plain_loop"), None)
    lines = [
        f"Sweep: {2 * args.seeds} runs ({args.seeds} seeds x norm none/builtin), `{args.experiment}`, "
        f"{args.steps:,} steps each, default evaluation and probes; {cores()} cores "
        f"({_cpu_name()}), OMP_NUM_THREADS=1 per process.",
        f"Measured limit: the step's matmuls are {flops / 1e6:.2f} MFLOP; float32 matmul at 1024^2 gives "
        f"{rates['sgemm_1'] / 1e9:.1f} GFLOP/s on 1 thread ({rates['sgemm_all'] / 1e9:.1f} on {cores()}), "
        f"at the step's own shapes {rates['step_shapes_1'] / 1e9:.1f} GFLOP/s on 1 thread: a limit of "
        f"{limit:,.0f} model-steps/s on {cores()} cores ({shaped:,.0f} at the step's shapes).",
        "The first layer's weight gradient of 10 batched members, 1 thread: "
        f"{rates['wgrad_new_layout_1'] / 1e9:.1f} GFLOP/s as g x^T (activations (K, features, B), the "
        "batched model now) against "
        f"{rates['wgrad_old_layout_1'] / 1e9:.1f} as x^T g (activations (K, B, features), before).",
        "",
        "| way | processes x threads | wall (s) | model-steps/s | per core | per core vs plain loops "
        "| of the limit | of the limit at the step's shapes | vs parallel (same cores) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    plain_per_core = plain["steps"] / plain["wall_s"] if plain else None
    for r in rows:
        if r["error"]:
            lines.append(f"| {LABELS[r['way']]} | failed: {' '.join(r['error'])} | | | | | | | |")
            continue
        rate = r["steps"] / r["wall_s"]
        per_core = rate / cores_used(r)
        vs_plain = f"{per_core / plain_per_core:.2f}" if plain_per_core else "-"
        vs_parallel = f"{rate / (parallel['steps'] / parallel['wall_s']):.2f}x" if parallel else "-"
        threads = ",".join(map(str, r["threads"]))
        lines.append(
            f"| {LABELS[r['way']]} | {r['processes']} x {threads} | {r['wall_s']:.1f} | {rate:,.0f} | "
            f"{per_core:,.0f} | {vs_plain} | {rate / limit:.1%} | {rate / shaped:.1%} | {vs_parallel} |"
        )
    return "\n".join(lines) + "\n"


def _cpu_name() -> str:
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_speedup import _cpu_name as name  # the same machine description as the other benchmarks

    return name()


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
    rates = limits()
    print(json.dumps(rates), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        rows = []
        for way in args.ways:
            rows.append(run_way(way, args, root / way))
            print(json.dumps(rows[-1]), flush=True)
    text = table(rows, rates, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
