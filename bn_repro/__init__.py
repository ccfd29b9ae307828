"""bn-repro: reproduce and extend Batch Normalization (Ioffe & Szegedy, 2015)."""

import os as _os

# OpenMP's threads sleep between parallel regions instead of spinning (set before torch is imported:
# libgomp reads it when torch loads it; child processes inherit it). Spinning threads of a process with
# trainer.threads > 1 take the cores that other processes need: on 2 busy cores a 2-thread run fell to
# 0.08-0.27x of 1 thread (results/bench_threads_cpu.md measures both policies). The user's own setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
