"""The training app: one Hydra job trains one model and writes its run files.

    python -m bn_repro.train experiment=fig1_fashion_mnist norm=builtin        # one run
    python -m bn_repro.train -m experiment=fig1_mnist norm=none,builtin        # the Fig. 1 pair
    python -m bn_repro.train data=synthetic trainer.max_steps=200              # a smoke run, no files

Outputs (metrics.csv, one CSV per measurement such as activations.csv, summary.json) land in the Hydra
job's output dir; see bn_repro/records/run_files.py for their columns and bn_repro/engine/loop.py for
the loop.
"""

from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig

import bn_repro.resolvers  # noqa: F401  (the presets' ${bn.div:...} and ${bn.mul:...})
from bn_repro.engine import interrupts
from bn_repro.errors import reported

__all__ = ["main", "train"]


def train(cfg, run_dir, claim=None):
    """bn_repro.engine.loop.train (imported on first use: torch is not needed to parse a command line)."""
    from bn_repro.engine.loop import train as run

    return run(cfg, run_dir, claim)


# torch and the package are imported only once Hydra has parsed and composed the config, so a typo in a
# key, an unknown preset, --help and --cfg job answer without waiting for them.
@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    from bn_repro.job import run_job

    # A returned number lets Hydra sweepers (e.g. Optuna) optimise it.
    with reported():
        return run_job(cfg)


def main() -> None:
    """Console entry point (`bn-repro-train`): under torchrun, agree on one run dir before Hydra starts."""
    # A mistake on the command line: one line and exit code 2 before Hydra starts a job (bn_repro/cli.py).
    from bn_repro.cli import check_command_line

    check_command_line(sys.argv[1:])
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from bn_repro.engine import distributed

        distributed.share_run_stamp()
    # Signals stop a run cleanly (bn_repro/engine/interrupts.py), between the jobs of a sweep too.
    interrupts.mark_app_process()
    with interrupts.watch():
        _hydra_main()


if __name__ == "__main__":
    main()
