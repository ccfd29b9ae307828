#!/usr/bin/env bash
# Error vs batch size (Wu & He 2018, GroupNorm Fig. 1) at CPU scale: every norm at batch 2..64, 3 seeds,
# into $1 (default multirun/gn_batch_size); then scripts/batch_figures.py draws the figure. About 40
# minutes on one CPU core (results/README.md). Extra arguments go to every command (e.g. seed=0).
set -euo pipefail
out=${1:-multirun/gn_batch_size}
shift || true
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
run() { python -m bn_repro.train -m experiment=gn_batch_size seed=0,1,2 trainer.progress=false "$@"; }
batches=data.batch_size=2,4,8,16,32,64
run norm=builtin,layernorm,batch_renorm $batches hydra.sweep.dir="$out/bn_ln_brn" "$@"
# GroupNorm's G = 32 does not divide this net's 8 first-layer channels: 4 groups (our choice).
run norm=groupnorm norm.groups=4 $batches hydra.sweep.dir="$out/gn" "$@"
# Ghost BN over virtual batches of 16: at batch 16 it is BN exactly, below it is undefined.
run norm=ghost_bn norm.virtual_batch_size=16 data.batch_size=16,32,64 hydra.sweep.dir="$out/ghost" "$@"
