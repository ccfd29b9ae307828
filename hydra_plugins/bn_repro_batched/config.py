"""The launcher's options (hydra.launcher.*), registered as hydra/launcher=batched."""

# No `from __future__ import annotations`: Hydra's plugin scan runs this module outside sys.modules,
# where dataclasses need real annotations.

from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class BatchedLauncherConf:
    _target_: str = "hydra_plugins.bn_repro_batched.batched_launcher.BatchedLauncher"
    # At most this many members per batched model; a larger group is split into equal parts.
    max_members: int = 20
    # Group processes run at once: auto (one per core) or a count; 1 runs the groups one after another in
    # this process. With trainer.threads=auto each process takes one intra-op thread.
    groups: Any = "auto"
    # The groups' training step: explicit (its backward written out, bn_repro/batched/explicit.py, where it
    # covers the model) or autograd.
    backward: str = "explicit"


ConfigStore.instance().store(
    group="hydra/launcher", name="batched", node=BatchedLauncherConf, provider="bn_repro_batched"
)
