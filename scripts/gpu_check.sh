#!/usr/bin/env bash
# One-shot GPU check: every check that needs a GPU, in one go, in at most 7 minutes on one GPU, on a bare
# machine that reaches no package registry (issue 26; how a session runs it: scripts/GPU_CHECK.md).
#
#   bash scripts/gpu_check.sh [--wheelhouse DIR] [--archive FILE] [--budget S] [--only STEP,...]
#                             [--data DIR] [--cpu-dry-run] [OUT]
#
# A session with a GPU (device tool `run`; details, sizes and the rerun: scripts/GPU_CHECK.md):
#   here, once:  python scripts/make_wheelhouse.py       # wheels + Fashion-MNIST into .gpu_carry/, prints
#                                                        # the sizes and the run call(s) that fit 64 MiB
#   then, while the tree plus the data is over 64 MiB (layout "split"), two calls, the second at once:
#     run(command="sha256sum .gpu_carry/fashion-mnist-part1/*.part1 && cp -r .gpu_carry/fashion-mnist-part1 /tmp/ && echo staged",
#         carry=[".gpu_carry/fashion-mnist-part1"], timeout_s=120)
#     run(command="bash scripts/gpu_check.sh --wheelhouse .gpu_carry/wheels-py312 --archive $OUT/gpu_check.tgz /tmp/gpu_check_out 2>&1",
#         carry=[".gpu_carry/wheels-py312", ".gpu_carry/fashion-mnist-part2"], timeout_s=540)
#   or, when one call fits (layout "whole"), the second call alone with carry
#         [".gpu_carry/wheels-py312", ".gpu_carry/fashion-mnist"].
#   Here:  bash scripts/gpu_check.sh --cpu-dry-run --wheelhouse .gpu_carry/wheels-py311 /tmp/dry  # ~5 min
#
#   OUT            the folder for every table (default gpu_check_out/); commit it as
#                  results/gpu_check_<card>/ (README: "On a GPU").
#   --wheelhouse   the wheels of what the app imports beyond the machine's own packages (Hydra, OmegaConf,
#                  ANTLR: scripts/make_wheelhouse.py writes .gpu_carry/wheels-py312/). They are installed
#                  with pip --no-index --no-deps into a temporary --target folder that goes on PYTHONPATH,
#                  after the repo itself: nothing is installed over the machine's torch. Without it, the
#                  script uses the packages it finds, then .gpu_carry/wheels-pyXY/, then (on a machine
#                  with a registry) pip install -e ".[dev]".
#   --archive      a .tar.gz of OUT, rewritten after every step, so that a cut run leaves what it has
#                  (a `run` call brings back at most 8 files: pass $OUT/gpu_check.tgz).
#   --budget       seconds for the whole script (default 420: 7 minutes); each step's cap is cut to what is
#                  left, and a step with under 15 s left is skipped and recorded as such.
#   --only         run only these steps (comma-separated names below), e.g. to rerun the ones a first
#                  run skipped.
#   --data         the Fashion-MNIST folder (four IDX files, raw or .gz). Else it is looked for in
#                  .gpu_carry/fashion-mnist, then joined from .gpu_carry/fashion-mnist-part{1,2} or
#                  /tmp/fashion-mnist-part1 (scripts/make_wheelhouse.py's split layout; checked against
#                  SHA256SUMS), then in /usr/share/datasets/fashion-mnist, data/, data/FashionMNIST/raw,
#                  shared/fashion-mnist, fashion-mnist/ and $BN_REPRO_DATA.
#   --cpu-dry-run  without CUDA, run every step on the CPU at toy sizes (compiled steps skipped), to check
#                  the script's own plumbing before spending GPU time. Without this flag and without CUDA
#                  it stops with exit 2 after the install and the data look-up, writing no table.
#
# Exit status: 0 when it ran (each step's own status is in summary.txt), 2 without CUDA, 3 when the app
# cannot be imported (install failed), 64 on a bad option.
#
# Steps, in order (name: cap in s; what it writes into OUT):
#   device          -      device.txt: card, torch, CUDA and cuDNN versions, nvidia-smi
#   norm_check      45     norm_check.md: custom BN (autograd and explicit backward) and torch's BN against
#                          a float64 reference, forward + backward + running stats, fp32 and bf16 autocast
#   pytest_gpu      100    pytest_gpu.txt: every test marked gpu (pytest -m gpu, in the test files that
#                          have such tests: the others may import wandb, which is not carried)
#   fig1_full       170    fig1_full.md: Fig. 1 at full length, 10 seeds x {none, builtin, custom explicit}
#                          x 50,000 steps as batched members (hydra/launcher=batched), its table beside the
#                          committed CPU one, wall time per run and for the sweep; fig1_runs/ (the run
#                          files, laid out as results/fig1_10seeds_fashion_mnist/momentum/), fig1_figures/.
#                          A run cut by the cap (SIGTERM) is drawn up to the last evaluation it logged.
#                          Without Fashion-MNIST: fig1_pair instead (the old 2,000-step pair, generated data)
#   speed_eager     75     bench_speedup_eager.md: full-width Inception (fig2_inception, fig2_bn_x5) on
#                          CIFAR-shaped generated data, eager, {fp32, bf16} x {channels_last off, on}
#   speed_compiled  130    bench_speedup_compiled.md: the same, torch.compile, bf16 + channels_last
#   projection      20     projection.md: steps/s of each configuration, and the projected wall time of
#                          the whole Fig. 2/3 experiment on CIFAR-10 (every fig2_* preset x 3 seeds x its
#                          steps, evaluations included, one run after another) on this card
#   bench_norm      30     bench_norm.md: scripts/bench_norm.py --device cuda (timings)
#   fig2_synthetic  75     fig2_sweep_synthetic.md: a 300-step glob(fig2_*) sweep on generated CIFAR-shaped
#                          data and its Fig. 3 table
#   fig2_fashion_mnist 75  fig2_sweep_fashion.md: the same on Fashion-MNIST, when found
#   always: summary.txt (each step's exit status, wall time and cap; 124: it hit its cap; a rerun into the
#   same OUT adds its lines under its own header), logs/<step>.log
# The caps add up to more than the budget: the steps are in order of importance, and the last ones run
# only if time is left (rerun them with --only).
set -uo pipefail

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

WHEELHOUSE="" ARCHIVE="" BUDGET=420 ONLY="" DATA="" DRY=0 OUT=gpu_check_out
while [ $# -gt 0 ]; do
    case $1 in
        --wheelhouse) WHEELHOUSE=${2:?}; shift 2 ;;
        --archive) ARCHIVE=${2:?}; shift 2 ;;
        --budget) BUDGET=${2:?}; shift 2 ;;
        --only) ONLY=${2:?}; shift 2 ;;
        --data) DATA=${2:?}; shift 2 ;;
        --cpu-dry-run) DRY=1; shift ;;
        -h | --help) usage; exit 0 ;;
        -*) echo "gpu_check: unknown option $1" >&2; usage >&2; exit 64 ;;
        *) OUT=$1; shift ;;
    esac
done
abspath() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
OUT=$(abspath "$OUT")
[ -n "$WHEELHOUSE" ] && WHEELHOUSE=$(abspath "$WHEELHOUSE")
[ -n "$ARCHIVE" ] && ARCHIVE=$(abspath "$ARCHIVE")
[ -n "$DATA" ] && DATA=$(abspath "$DATA")
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO" || exit 64
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled MPLBACKEND=Agg
SCRATCH=$(mktemp -d /tmp/gpu_check.XXXXXX)  # the wheels' install, joined data, the runs
trap 'rm -rf "$SCRATCH"' EXIT

# --- The app's Python packages: from the wheelhouse, never over the machine's own ----------------------
importable() { "$PY" -c "import bn_repro, hydra, omegaconf" 2>/dev/null; }
if [ -z "$WHEELHOUSE" ] && ! importable; then
    default=.gpu_carry/wheels-py$("$PY" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
    [ -d "$default" ] && WHEELHOUSE=$REPO/$default
fi
if [ -n "$WHEELHOUSE" ]; then
    if ! ls "$WHEELHOUSE"/*.whl > /dev/null 2>&1; then
        echo "gpu_check: no wheels in $WHEELHOUSE (python scripts/make_wheelhouse.py writes them)" >&2
        exit 3
    fi
    SITE=$SCRATCH/site
    if ! timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --disable-pip-version-check --root-user-action=ignore --target "$SITE" "$WHEELHOUSE"/*.whl; then
        echo "gpu_check: installing the wheels of $WHEELHOUSE into $SITE failed" >&2
        exit 3
    fi
    # The repo first (bn_repro, hydra_plugins/), then the wheels, then whatever was there before.
    export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"
elif ! importable; then
    echo "gpu_check: bn_repro is not importable and there is no wheelhouse; trying pip install -e .[dev]" >&2
    "$PY" -m pip install -q -e ".[dev]" || {
        echo "gpu_check: pip install failed (offline? run scripts/make_wheelhouse.py where PyPI is reachable" \
            "and pass --wheelhouse)" >&2
        exit 3
    }
fi
# One interpreter start (torch's import is the slow part): the app's imports, where they come from, and
# the device, card and versions (three lines on stdout).
if ! mapfile -t FOUND < <("$PY" -c "
import sys
import bn_repro, hydra, omegaconf, antlr4, yaml, torch
from bn_repro.config import compose
compose(['experiment=fig1_fashion_mnist'])
print(f'gpu_check: python {sys.version.split()[0]}, torch {torch.__version__}; hydra {hydra.__version__} from '
      f'{hydra.__file__}; omegaconf {omegaconf.__version__} from {omegaconf.__file__}; bn_repro from '
      f'{bn_repro.__file__}', file=sys.stderr)
cuda = torch.cuda.is_available()
print('cuda' if cuda else 'cpu')
print(torch.cuda.get_device_name(0) if cuda else 'CPU dry run')
print(f'torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}' if cuda
      else f'torch {torch.__version__}, no CUDA device')
") || [ "${#FOUND[@]}" -ne 3 ]; then
    echo "gpu_check: the app's imports fail (see above)" >&2
    exit 3
fi

# --- Fashion-MNIST ---------------------------------------------------------------------------------------
FILES="train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte"
has_fashion() {  # the four IDX files, raw or .gz
    local f
    for f in $FILES; do
        [ -f "$1/$f" ] || [ -f "$1/$f.gz" ] || return 1
    done
}
join_parts() {  # the split layout of scripts/make_wheelhouse.py, joined into $SCRATCH/fashion-mnist
    local part1="" part2=.gpu_carry/fashion-mnist-part2 d f
    for d in .gpu_carry/fashion-mnist-part1 /tmp/fashion-mnist-part1; do
        [ -f "$d/train-images-idx3-ubyte.gz.part1" ] && part1=$d && break
    done
    [ -d "$part2" ] || return 1
    if [ -z "$part1" ]; then
        echo "gpu_check: $part2 is here but fashion-mnist-part1 is not (the first call of the split plan was" \
            "not made on this machine, or the machine was given back between the calls)" >&2
        return 1
    fi
    mkdir -p "$SCRATCH/fashion-mnist"
    cat "$part1/train-images-idx3-ubyte.gz.part1" "$part2/train-images-idx3-ubyte.gz.part2" \
        > "$SCRATCH/fashion-mnist/train-images-idx3-ubyte.gz"
    for f in train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
        cp "$part2/$f" "$SCRATCH/fashion-mnist/$f"
    done
    if ! (cd "$SCRATCH/fashion-mnist" && sha256sum --quiet -c "$REPO/$part2/SHA256SUMS"); then
        echo "gpu_check: the joined Fashion-MNIST files do not match SHA256SUMS" >&2
        rm -rf "$SCRATCH/fashion-mnist"
        return 1
    fi
}
FASHION=""
if [ -n "$DATA" ]; then
    has_fashion "$DATA" && FASHION=$DATA || echo "gpu_check: --data $DATA lacks the four files" >&2
elif has_fashion .gpu_carry/fashion-mnist; then
    FASHION=$REPO/.gpu_carry/fashion-mnist
elif join_parts; then
    FASHION=$SCRATCH/fashion-mnist
else
    for d in /usr/share/datasets/fashion-mnist data data/FashionMNIST/raw shared/fashion-mnist fashion-mnist \
        "${BN_REPRO_DATA:-/nonexistent}" "${BN_REPRO_DATA:-/nonexistent}/FashionMNIST/raw"; do
        has_fashion "$d" && FASHION=$(cd "$d" && pwd) && break
    done
fi
echo "gpu_check: Fashion-MNIST: ${FASHION:-not found (Fig. 1 falls back to the short pair on generated data)}"

# --- CUDA ------------------------------------------------------------------------------------------------
TORCH_INFO=${FOUND[2]}
if [ "${FOUND[0]}" = cuda ]; then
    DEV=cuda DRY=0 CARD=${FOUND[1]}
elif [ "$DRY" = 1 ]; then
    DEV=cpu CARD="CPU dry run ($(uname -m))"
else
    echo "gpu_check: no CUDA device (torch.cuda.is_available() is False); nothing to check" >&2
    exit 2
fi
echo "gpu_check on: $CARD"
mkdir -p "$OUT/logs"
echo "# gpu_check $(date -u +%FT%TZ) on $CARD, budget $BUDGET s${ONLY:+, only $ONLY}" >> "$OUT/summary.txt"
RUNS=$SCRATCH/runs
mkdir -p "$RUNS"
export PY DEV DRY CARD TORCH_INFO FASHION OUT RUNS REPO SCRATCH

archive() {  # OUT as a .tar.gz, written beside and then moved, so a cut run leaves a whole archive
    [ -n "$ARCHIVE" ] || return 0
    tar -czf "$ARCHIVE.tmp" -C "$(dirname "$OUT")" "$(basename "$OUT")" 2>/dev/null && mv "$ARCHIVE.tmp" "$ARCHIVE"
}
RESERVE=10  # seconds kept for the last summary and archive
step() {  # step NAME CAP FUNCTION [ARGS...]: run it under min(CAP, time left); record; never stop the script
    local name=$1 cap=$2 left rc start
    shift 2
    if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$name,"* ]]; then
        return 0
    fi
    left=$((BUDGET - RESERVE - SECONDS))
    if [ "$left" -lt 15 ]; then
        echo "$name: skipped, ${left} s left of the ${BUDGET} s budget (rerun with --only $name)" \
            | tee -a "$OUT/summary.txt"
        return 0
    fi
    [ "$cap" -gt "$left" ] && cap=$left
    start=$SECONDS
    echo "== $name (cap $cap s)"
    STEP_CAP=$cap timeout -k 10 "$cap" bash -c '"$@"' _ "$@" > "$OUT/logs/$name.log" 2>&1
    rc=$?
    echo "$name: exit $rc, $((SECONDS - start)) s (cap $cap s)" | tee -a "$OUT/summary.txt"
    archive
}

# --- The steps -------------------------------------------------------------------------------------------
device_info() {
    echo "card: $CARD"
    "$PY" -c "
import torch, platform, sys
print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda,
      'cudnn', torch.backends.cudnn.version())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f'{p.name}: {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs, capability {p.major}.{p.minor},',
          'bf16' if torch.cuda.is_bf16_supported() else 'no bf16')
"
    echo "$TORCH_INFO"
    git -C "$REPO" rev-parse --short HEAD 2>/dev/null | sed 's/^/git commit: /'
    nvidia-smi 2>&1 || echo "(nvidia-smi not found)"
}

norm_check() {  # custom BN vs torch's BN against float64, on $DEV
    "$PY" - "$DEV" > "$OUT/norm_check.md" <<'EOF'
import sys

import torch

from bn_repro import norms

device = torch.device(sys.argv[1])
shapes = [(256, 1024), (128, 64, 16, 16), (32, 256, 8, 8)] if device.type == "cuda" else [(64, 32), (8, 16, 6, 6)]
QUANTITIES = ("y", "dx", "dweight", "dbias", "running_mean", "running_var")


def run(kind, backward, shape, dtype, x0, g0, w0, b0):
    options = {"backward": backward} if backward else {}
    layer = norms.build(kind, shape[1], len(shape), **options).to(device).train()
    if dtype == "fp64":
        layer = layer.double()
    with torch.no_grad():
        layer.weight.copy_(w0)
        layer.bias.copy_(b0)
    x = x0.to({"fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16}[dtype]).clone().requires_grad_()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
        y = layer(x)
    y.backward(g0.to(y.dtype))
    got = (y, x.grad, layer.weight.grad, layer.bias.grad, layer.running_mean, layer.running_var)
    return {q: t.detach().double() for q, t in zip(QUANTITIES, got)}


print(f"# Custom BN vs torch's BN on {device} ({torch.cuda.get_device_name(0) if device.type == 'cuda' else 'CPU'})")
print(f"\n{__import__('os').environ['TORCH_INFO']}")
print("\nTraining mode, one forward + backward from the same input, weights and "
      "upstream gradient; each entry: max |impl - float64 reference| / max |reference| (torch's BN in float64). "
      "bf16: a bf16 input under torch.autocast (BN keeps float32 statistics). verdict: ok when the custom BN's "
      "error is within 2x torch's own plus 1e-6 (fp32) or 1e-3 (bf16) on every quantity.\n")
print("| shape | precision | impl | " + " | ".join(QUANTITIES) + " | verdict |")
print("|---|---|---|" + "---|" * (len(QUANTITIES) + 1))
failures = 0
for shape in shapes:
    generator = torch.Generator().manual_seed(0)
    x0 = (torch.randn(shape, generator=generator) * 2 + 3).to(device)
    g0 = torch.randn(shape, generator=generator).to(device)
    w0 = (torch.rand(shape[1], generator=generator) + 0.5).to(device)
    b0 = (torch.rand(shape[1], generator=generator) - 0.5).to(device)
    reference = run("builtin", None, shape, "fp64", x0.double(), g0.double(), w0.double(), b0.double())
    for dtype in ("fp32", "bf16"):
        errors = {}
        for impl, kind, backward in (("torch", "builtin", None), ("custom autograd", "custom", "autograd"),
                                     ("custom explicit", "custom", "explicit")):
            got = run(kind, backward, shape, dtype, x0, g0, w0, b0)
            errors[impl] = {q: ((got[q] - reference[q]).abs().max() / reference[q].abs().max().clamp_min(1e-30)).item()
                            for q in QUANTITIES}
        slack = 1e-6 if dtype == "fp32" else 1e-3
        for impl, err in errors.items():
            verdict = "-"
            if impl != "torch":
                ok = all(err[q] <= 2 * errors["torch"][q] + slack for q in QUANTITIES)
                verdict = "ok" if ok else "CHECK"
                failures += not ok
            print(f"| {'x'.join(map(str, shape))} | {dtype} | {impl} | "
                  + " | ".join(f"{err[q]:.1e}" for q in QUANTITIES) + f" | {verdict} |")
print(f"\n{'all ok' if not failures else f'{failures} rows to CHECK'}")
sys.exit(1 if failures else 0)
EOF
}

pytest_gpu() {
    local files
    files=$(grep -l "pytest.mark.gpu" tests/test_*.py)
    if [ "$DRY" = 1 ]; then  # no GPU: check that they are collected without wandb & co.
        "$PY" -m pytest -q -m gpu -p no:cacheprovider --collect-only $files > "$OUT/pytest_gpu.txt" 2>&1
    else
        "$PY" -m pytest -q -m gpu -p no:cacheprovider $files > "$OUT/pytest_gpu.txt" 2>&1
    fi
}

fig1_full() {  # 10 seeds x {none, builtin, custom explicit} x 50,000 steps, batched members, one GPU
    local steps=50000 every=500 seeds='range(10)' extra=() train_cap start
    if [ "$DRY" = 1 ]; then
        steps=40 every=20 seeds='range(2)' extra=(hydra.launcher.groups=1 trainer.population_stats_batches=2)
    fi
    local common=(experiment=fig1_fashion_mnist data=fashion_mnist "data.root=$FASHION" data.download=false
        "seed=$seeds" hydra/launcher=batched "trainer.device=$DEV" "trainer.max_steps=$steps"
        "trainer.eval_every=$every" trainer.progress=false logger=none "${extra[@]}")
    train_cap=$((STEP_CAP - 30))  # the rest: drawing the table from what finished
    start=$SECONDS
    timeout -k 10 "$train_cap" "$PY" -m bn_repro.train -m "${common[@]}" norm=none,builtin \
        "hydra.sweep.dir=$RUNS/fig1/none_builtin" > "$OUT/logs/fig1_none_builtin.log" 2>&1 &
    local a=$!
    timeout -k 10 "$train_cap" "$PY" -m bn_repro.train -m "${common[@]}" norm=custom norm.backward=explicit \
        "hydra.sweep.dir=$RUNS/fig1/custom" > "$OUT/logs/fig1_custom.log" 2>&1 &
    local b=$!
    wait $a; local rc_a=$?
    wait $b; local rc_b=$?
    local wall=$((SECONDS - start))
    # A cut sweep's launcher can exit before its group processes have written their last files.
    { [ "$rc_a" = 124 ] || [ "$rc_b" = 124 ]; } && sleep 5
    "$PY" - "$RUNS/fig1" "$OUT/fig1_runs" <<'EOF'
import json, shutil, sys
from pathlib import Path

source, dest = Path(sys.argv[1]), Path(sys.argv[2])
for summary in sorted(source.rglob("summary.json")):
    config = json.loads(summary.read_text())["config"]
    norm = config["norm"]["kind"] + (f"_{config['norm']['backward']}" if config["norm"]["kind"] == "custom" else "")
    run = dest / f"{norm}_seed{config['seed']}"
    run.mkdir(parents=True, exist_ok=True)
    for name in ("summary.json", "metrics.csv", "activations.csv"):
        if (summary.parent / name).exists():
            shutil.copy2(summary.parent / name, run / name)
EOF
    "$PY" scripts/make_figures.py "$OUT/fig1_runs" --out "$OUT/fig1_figures" > "$OUT/logs/fig1_figures.log" 2>&1
    "$PY" - "$OUT" "$wall" "$rc_a" "$rc_b" "$steps" > "$OUT/fig1_full.md" <<'EOF'
import json, os, statistics, sys
from pathlib import Path

out, wall, rc_a, rc_b, steps = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
runs = sorted((out / "fig1_runs").glob("*/summary.json"))
summaries = {p.parent.name: json.loads(p.read_text()) for p in runs}
for name, summary in summaries.items():  # a run cut by the cap may not have updated its summary: the last
    rows = (out / "fig1_runs" / name / "metrics.csv").read_text().split()  # evaluation it logged counts
    summary["steps"] = max(summary.get("steps") or 0, int(rows[-1].split(",")[0]) if len(rows) > 1 else 0)
finished = [n for n, s in summaries.items() if s["status"] == "finished" and s["steps"] >= steps]
print(f"# Fig. 1 at full length on {os.environ['CARD']}: Fashion-MNIST, {steps:,} steps of 60, batched members\n")
print(f"{os.environ['TORCH_INFO']}; hydra/launcher=batched, one group process per norm (3 at once on the card), "
      "10 members each; float32 (the preset's precision).\n")
print(f"{len(summaries)} runs started, {len(finished)} finished all {steps:,} steps "
      f"(exit status of the two sweeps: none+builtin {rc_a}, custom explicit {rc_b}; 124: cut by the cap).")
print(f"Sweep wall time (both sweeps at once, start-up and data loading included): {wall:.0f} s.\n")
print("| runs | status | steps reached (min-max) | wall_time_s per run (mean) | steps/s per run (mean) |")
print("|---|---|---|---|---|")
for norm in ("none", "builtin", "custom_explicit"):
    group = [s for n, s in summaries.items() if n.rsplit("_seed", 1)[0] == norm]
    if not group:
        print(f"| {norm} | no runs | | | |")
        continue
    statuses = ", ".join(sorted({s["status"] for s in group}))
    reached = [s["steps"] for s in group]
    walls = [s["wall_time_s"] for s in group if s.get("wall_time_s")]
    rates = [s["steps_per_s"] for s in group if s.get("steps_per_s")]
    print(f"| {norm} x {len(group)} | {statuses} | {min(reached):,}-{max(reached):,} | "
          f"{statistics.mean(walls):.0f} | {statistics.mean(rates):.0f} |" if walls and rates else
          f"| {norm} x {len(group)} | {statuses} | {min(reached):,}-{max(reached):,} | - | - |")
table = out / "fig1_figures" / "fig1_table_fashion_mnist.md"
print("\n## This card\n")
print(table.read_text() if table.exists() else "(no table: see logs/fig1_figures.log)")
cpu = Path("results/fig1_10seeds_fashion_mnist/figures/momentum/fig1_table_fashion_mnist.md")
if cpu.exists():
    print("\n## The committed CPU run (results/fig1_10seeds_fashion_mnist/, same command, 2-core CPU)\n")
    print(cpu.read_text())
EOF
    grep -h "status=" "$OUT"/logs/fig1_*.log > "$OUT/logs/fig1_status.txt" 2>/dev/null
    [ "$rc_a" = 0 ] && [ "$rc_b" = 0 ]
}

fig1_pair() {  # the old short pair, when Fashion-MNIST is not here
    local steps=2000
    [ "$DRY" = 1 ] && steps=20
    timeout -k 10 $((STEP_CAP - 15)) "$PY" -m bn_repro.train -m experiment=fig1_fashion_mnist data=synthetic \
        norm=none,builtin "trainer.device=$DEV" "trainer.max_steps=$steps" trainer.eval_every=500 \
        trainer.progress=false "hydra.sweep.dir=$RUNS/fig1_pair" > "$OUT/logs/fig1_pair_train.log" 2>&1
    "$PY" scripts/make_figures.py "$RUNS/fig1_pair" --out "$RUNS/fig1_pair_figures" > /dev/null 2>&1
    { echo "# Fig. 1 pair, $steps steps, generated MNIST-shaped data (no Fashion-MNIST here), $CARD"
      cat "$RUNS"/fig1_pair_figures/fig1_table_*.md; grep -h 'status=' "$OUT/logs/fig1_pair_train.log"; } \
        > "$OUT/fig1_pair.md"
}

speed() {  # speed eager|compiled: scripts/bench_speedup.py, one configuration per call, tables appended
    local mode=$1 file="$OUT/bench_speedup_$1.md" variants=(fig2_bn_x5 fig2_inception) steps=100 warmup=20
    local combos=("fp32 false" "fp32 true" "bf16 false" "bf16 true") extra=() combo
    if [ "$mode" = compiled ]; then combos=("bf16 true") steps=100 warmup=10; fi
    if [ "$DRY" = 1 ]; then
        variants=(fig2_bn_x5) steps=1 warmup=1 combos=("fp32 false" "bf16 true")
        extra=(data.synthetic.num_train=64 data.synthetic.num_test=64 trainer.threads=1)
    fi
    : > "$file"
    for combo in "${combos[@]}"; do
        set -- $combo
        for variant in "${variants[@]}"; do  # one variant per call: a cut leaves the ones before it
            "$PY" scripts/bench_speedup.py --variants "$variant" --device "$DEV" \
                --compile "$([ "$mode" = compiled ] && echo on || echo off)" --steps $steps --warmup $warmup \
                "trainer.precision=$1" "trainer.channels_last=$2" "${extra[@]}" >> "$file" 2>&1
            echo >> "$file"
        done
    done
}

projection() {  # the whole Fig. 2/3 experiment's wall time on this card, from the speed tables
    "$PY" - "$OUT" > "$OUT/projection.md" <<'EOF'
import os, re, sys
from pathlib import Path

from bn_repro.config import CONFIG_DIR, compose, resolve_config

out = Path(sys.argv[1])
SEEDS = 3
TEST_IMAGES = 10_000  # CIFAR-10's test set, evaluated every eval_every steps
rows = []  # (variant, precision, channels_last, compiled, s_per_1000, warmup_s, eval_s for TEST_IMAGES)
for table in sorted(out.glob("bench_speedup_*.md")):
    images = TEST_IMAGES
    for line in table.read_text().splitlines():
        header = re.search(r"eval s \((\d+) test images\)", line)
        if header:
            images = int(header.group(1))
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[0].startswith("fig2") and re.fullmatch(r"[\d.]+", cells[4]):
            s, w, e = map(float, cells[4:7])
            rows.append((cells[0], cells[1], cells[2], cells[3] == "True", s, w, e * TEST_IMAGES / images))
print(f"# Throughput of the full-width Inception net and the projected Fig. 2/3 experiment, {os.environ['CARD']}\n")
print(os.environ["TORCH_INFO"] + "\n")
if not rows:
    print("No speed table was written (see logs/speed_*.log).")
    sys.exit(1)
print("Measured (scripts/bench_speedup.py; generated CIFAR-shaped data, batch 32, augmentation on the device):\n")
print("| variant | precision | channels_last | compiled | steps/s | s / 1000 steps | warm-up s | eval s (10,000 images; scaled if fewer were timed) |")
print("|---|---|---|---|---|---|---|---|")
for v, p, cl, c, s, w, e in rows:
    print(f"| {v} | {p} | {cl} | {c} | {1000 / s:.1f} | {s:.1f} | {w:.1f} | {e:.2f} |")
best = {}
for row in rows:  # the fastest configuration of each measured variant
    if row[0] not in best or row[4] < best[row[0]][4]:
        best[row[0]] = row
presets = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("fig2_*.yaml"))
print(f"\nProjection: {len(presets)} presets x {SEEDS} seeds, one run after another on this card, each at the "
      "fastest measured configuration of the measured variant with the same kind of normalization (no BN: "
      "fig2_inception; BN: fig2_bn_x5; the sigmoid variants cost about what their ReLU twins cost), "
      "steps x s/step + evaluations x eval s + one warm-up (compilation) per run:\n")
print("| preset | norm | steps | evaluations | measured as | configuration | hours per run |")
print("|---|---|---|---|---|---|---|")
total = 0.0
for preset in presets:
    config = resolve_config(compose([f"experiment={preset}"]))
    steps, every = config["trainer"]["max_steps"], config["trainer"]["eval_every"]
    kind = config["norm"]["kind"]
    proxy = preset if preset in best else ("fig2_inception" if kind == "none" else "fig2_bn_x5")
    if proxy not in best:
        proxy = next(iter(best))
    v, p, cl, c, s, w, e = best[proxy]
    evaluations = steps // every + 1
    seconds = steps / 1000 * s + evaluations * e + w
    total += SEEDS * seconds
    print(f"| {preset} | {kind} | {steps:,} | {evaluations} | {proxy} | {p}, channels_last {cl}, "
          f"{'compiled' if c else 'eager'} | {seconds / 3600:.2f} |")
print(f"\n**Projected wall time of the whole experiment ({len(presets)} x {SEEDS} runs): {total / 3600:.1f} hours "
      f"on one {os.environ['CARD']}** (runs one after another; runs sharing the card at once, or batched "
      "seeds, were not measured).")
EOF
}

bench_norm() {
    if [ "$DRY" = 1 ]; then
        "$PY" scripts/bench_norm.py --device cpu --repeats 2 --shapes 64,32 --iters 2 --warmup 1 > "$OUT/bench_norm.md" 2>&1
    else
        "$PY" scripts/bench_norm.py --device cuda --repeats 3 > "$OUT/bench_norm.md" 2>&1
    fi
}

fig2_sweep() {  # fig2_sweep synthetic|fashion: a short glob(fig2_*) sweep and its Fig. 3 table
    local which=$1 data steps=300 every=100 extra=() presets='glob(fig2_*)'
    if [ "$which" = synthetic ]; then
        data=(data=synthetic data.synthetic.shape=cifar data.synthetic.num_train=10000 data.synthetic.num_test=2000)
    else
        data=(data=fashion_mnist "data.root=$FASHION" data.download=false)
    fi
    if [ "$DRY" = 1 ]; then
        steps=2 every=1 presets=fig2_inception,fig2_bn_x5  # two presets at full width: minutes on a CPU
        extra=(trainer.population_stats_batches=2 probe.num_examples=16 trainer.eval_examples=32)
        [ "$which" = synthetic ] && data=(data=synthetic data.synthetic.shape=cifar data.synthetic.num_train=64 data.synthetic.num_test=32)
    fi
    timeout -k 10 $((STEP_CAP - 15)) "$PY" -m bn_repro.train -m "experiment=$presets" "${data[@]}" \
        "trainer.device=$DEV" "trainer.max_steps=$steps" "trainer.eval_every=$every" trainer.progress=false \
        logger=none "${extra[@]}" "hydra.sweep.dir=$RUNS/fig2_$which" > "$OUT/logs/fig2_${which}_train.log" 2>&1
    "$PY" scripts/speedup_table.py "$RUNS/fig2_$which" --out "$RUNS/fig2_${which}_table" > /dev/null 2>&1
    { echo "# experiment=$presets, $steps steps, ${data[0]}, $CARD, $TORCH_INFO"
      cat "$RUNS/fig2_${which}_table/fig3_table.md"; grep -h 'status=' "$OUT/logs/fig2_${which}_train.log"; } \
        > "$OUT/fig2_sweep_$which.md"
}
export -f device_info norm_check pytest_gpu fig1_full fig1_pair speed projection bench_norm fig2_sweep

step device 30 bash -c 'device_info > "$OUT/device.txt" 2>&1'
step norm_check 45 norm_check
step pytest_gpu 100 pytest_gpu
if [ -n "$FASHION" ]; then
    step fig1_full 170 fig1_full
else
    step fig1_pair 45 fig1_pair
fi
step speed_eager 75 speed eager
if [ "$DRY" = 1 ]; then
    echo "speed_compiled: skipped in the CPU dry run (torch.compile of the Inception net takes minutes on a CPU)" \
        | tee -a "$OUT/summary.txt"
else
    step speed_compiled 130 speed compiled
fi
step projection 20 projection
step bench_norm 30 bench_norm
step fig2_synthetic 75 fig2_sweep synthetic
if [ -n "$FASHION" ]; then
    step fig2_fashion_mnist 75 fig2_sweep fashion
else
    echo "fig2_fashion_mnist: skipped (no Fashion-MNIST files here)" | tee -a "$OUT/summary.txt"
fi
echo "total: $SECONDS s (budget $BUDGET s)" >> "$OUT/summary.txt"
archive
echo "gpu_check on $CARD: tables in $OUT${ARCHIVE:+, archive $ARCHIVE}"
cat "$OUT/summary.txt"
