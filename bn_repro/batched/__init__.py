"""Batched members: the jobs of a sweep that differ only in `seed` (and `optim.lr`) trained as one
batched model in one process, each member still its own single run with its own run files.

    summaries = train_group([(config_a, run_dir_a), (config_b, run_dir_b)], group=0)
    python -m bn_repro.train -m experiment=fig1_fashion_mnist norm=none,builtin seed='range(10)' \\
        hydra/launcher=batched          # the launcher plugin: hydra_plugins/bn_repro_batched/

bn_repro/batched/grouping.py decides which jobs can share a model; model.py is the batched MLP and its
stacked SGD; group.py runs the members' Sessions (bn_repro/engine/loop.py) around the batched steps.
"""

from bn_repro.batched.group import train_group
from bn_repro.batched.grouping import group_key, plan, unbatchable_reason

__all__ = ["group_key", "plan", "train_group", "unbatchable_reason"]
