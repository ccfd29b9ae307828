"""hydra/launcher=batched: a multirun's jobs that differ only in seed (and optim.lr) as members of one
batched model per group (bn_repro/batched/); see batched_launcher.py."""
