#!/usr/bin/env bash
# One-shot GPU check: every check that needs a GPU, in one go, under 8 minutes on one GPU.
#
#   bash scripts/gpu_check.sh [OUT]        # OUT: the folder for every table (default gpu_check_out/)
#
# It installs nothing beyond the project (pip install -e ".[dev]" only if bn_repro is not importable),
# prints the card's name, and writes into OUT:
#   device.txt          nvidia-smi, torch/CUDA versions, the card
#   pytest_gpu.txt      every test marked gpu (pytest -m gpu)
#   bench_norm.md       scripts/bench_norm.py --device cuda (custom BN vs torch's, forward+backward)
#   bench_speedup.md    scripts/bench_speedup.py eager vs compiled (fig2_inception and fig2_bn_x5, CIFAR-shaped
#                       data; two variants, not six, so that their torch.compile fits the 8 minutes)
#   fig1_pair.md        the Fig. 1 pair (no BN, BN) for a short step count (Fashion-MNIST if present,
#                       else generated MNIST-shaped data)
#   fig2_sweep.md       a short glob(fig2_*) sweep on generated CIFAR-shaped data, and on Fashion-MNIST
#                       when its files are here; the Fig. 3 tables of both (scripts/speedup_table.py)
#   summary.txt         each step's exit status and wall time (124: it hit its time cap)
# Each step has a time cap (the caps add up to 7.75 minutes; a sweep's training has a shorter one of its
# own, so that its table is still written from the runs that finished); a step that fails or hits its
# cap is recorded and the script goes on. Fashion-MNIST is looked for (the four IDX files, raw or .gz) in
# /usr/share/datasets/fashion-mnist, data/, data/FashionMNIST/raw, shared/fashion-mnist, fashion-mnist/
# and $BN_REPRO_DATA (a copy carried along to a device machine works from any of these).
# Commit OUT under results/gpu_check_<card>/ with the card's name (README: "GPU check").
set -uo pipefail
OUT=${1:-gpu_check_out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."

python -c "import bn_repro" 2>/dev/null || python -m pip install -q -e ".[dev]"
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device (torch.cuda.is_available() is False); nothing to check" >&2
    exit 2
fi
CARD=$(python -c "import torch; print(torch.cuda.get_device_name(0))")
echo "gpu_check on: $CARD"
{
    echo "card: $CARD"
    python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
    nvidia-smi 2>&1 || echo "(nvidia-smi not found)"
} > "$OUT/device.txt"

export WANDB_MODE=disabled
FASHION=""
has_fashion() {  # the four IDX files, raw or .gz
    local f
    for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
        [ -f "$1/$f" ] || [ -f "$1/$f.gz" ] || return 1
    done
}
for d in /usr/share/datasets/fashion-mnist data data/FashionMNIST/raw shared/fashion-mnist fashion-mnist \
    "${BN_REPRO_DATA:-/nonexistent}" "${BN_REPRO_DATA:-/nonexistent}/FashionMNIST/raw"; do
    has_fashion "$d" && FASHION=$(cd "$d" && pwd) && break
done
echo "Fashion-MNIST: ${FASHION:-not found (the Fashion-MNIST sweep is skipped)}"
SWEEPS=$(mktemp -d)
: > "$OUT/summary.txt"
step() {  # step NAME TIMEOUT_S COMMAND...: run it, keep its exit status and time, never stop the script
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    timeout "$limit" "$@"
    local rc=$?
    echo "$name: exit $rc, $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
}

step pytest_gpu 105 bash -c "python -m pytest -q -m gpu -p no:cacheprovider > '$OUT/pytest_gpu.txt' 2>&1"
step bench_norm 45 bash -c "python scripts/bench_norm.py --device cuda --repeats 3 > '$OUT/bench_norm.md' 2>&1"
step bench_speedup 120 bash -c "python scripts/bench_speedup.py --variants fig2_inception fig2_bn_x5 --device cuda --compile both --steps 50 --warmup 10 > '$OUT/bench_speedup.md' 2>&1"

FIG1_DATA=${FASHION:+data=fashion_mnist data.root=$FASHION}
FIG1_DATA=${FIG1_DATA:-data=synthetic}
step fig1_pair 45 bash -c "timeout 35 python -m bn_repro.train -m experiment=fig1_fashion_mnist $FIG1_DATA norm=none,builtin trainer.device=cuda trainer.max_steps=2000 trainer.eval_every=500 trainer.progress=false hydra.sweep.dir=$SWEEPS/fig1 > '$SWEEPS/fig1.log' 2>&1; python scripts/make_figures.py $SWEEPS/fig1 --out $SWEEPS/fig1_figures > /dev/null 2>&1; { echo '# Fig. 1 pair, 2,000 steps, $FIG1_DATA, $CARD'; cat $SWEEPS/fig1_figures/fig1_table_*.md; grep -h 'status=' $SWEEPS/fig1.log; } > '$OUT/fig1_pair.md'"

FIG2="trainer.device=cuda trainer.max_steps=300 trainer.eval_every=100 trainer.progress=false"
step fig2_synthetic 75 bash -c "timeout 60 python -m bn_repro.train -m 'experiment=glob(fig2_*)' data=synthetic data.synthetic.shape=cifar data.synthetic.num_train=10000 data.synthetic.num_test=2000 $FIG2 hydra.sweep.dir=$SWEEPS/fig2_synthetic > '$SWEEPS/fig2_synthetic.log' 2>&1; python scripts/speedup_table.py $SWEEPS/fig2_synthetic --out $SWEEPS/fig2_synthetic_table > /dev/null 2>&1; { echo '# glob(fig2_*), 300 steps, generated CIFAR-shaped data, $CARD'; cat $SWEEPS/fig2_synthetic_table/fig3_table.md; grep -h 'status=' $SWEEPS/fig2_synthetic.log; } > '$OUT/fig2_sweep.md'"
if [ -n "$FASHION" ]; then
    step fig2_fashion_mnist 75 bash -c "timeout 60 python -m bn_repro.train -m 'experiment=glob(fig2_*)' data=fashion_mnist data.root=$FASHION $FIG2 hydra.sweep.dir=$SWEEPS/fig2_fashion > '$SWEEPS/fig2_fashion.log' 2>&1; python scripts/speedup_table.py $SWEEPS/fig2_fashion --out $SWEEPS/fig2_fashion_table > /dev/null 2>&1; { echo; echo '# glob(fig2_*), 300 steps, Fashion-MNIST, $CARD'; cat $SWEEPS/fig2_fashion_table/fig3_table.md; grep -h 'status=' $SWEEPS/fig2_fashion.log; } >> '$OUT/fig2_sweep.md'"
else
    echo "fig2_fashion_mnist: skipped (no Fashion-MNIST files here)" | tee -a "$OUT/summary.txt"
fi
# The sweeps' logs, for whatever failed.
cp "$SWEEPS"/*.log "$OUT/" 2>/dev/null
echo "total: $SECONDS s" >> "$OUT/summary.txt"
echo "gpu_check on $CARD: tables in $OUT"
cat "$OUT/summary.txt"
