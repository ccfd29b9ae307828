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
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

import bn_repro.resolvers  # noqa: F401  (the presets' ${bn.div:...} and ${bn.mul:...})

__all__ = ["main", "train"]


def train(cfg, run_dir):
    """bn_repro.engine.loop.train (imported on first use: torch is not needed to parse a command line)."""
    from bn_repro.engine.loop import train as run

    return run(cfg, run_dir)


# torch and the package are imported only once Hydra has parsed and composed the config, so a typo in a
# key, an unknown preset, --help and --cfg job answer without waiting for them.
@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    from bn_repro.config import check_values

    check_values(OmegaConf.to_container(cfg, resolve=True))  # before torch: a bad value answers at once
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    summary = train(cfg, run_dir)
    print(
        f"{summary['experiment_name']}: status={summary['status']} steps={summary['steps']} "
        f"final_test_acc={summary['final_test_acc']:.4f} best_test_acc={summary['best_test_acc']:.4f} "
        f"({summary['steps_per_s']} steps/s) -> {run_dir}"
    )
    # A returned number lets Hydra sweepers (e.g. Optuna) optimise it.
    return summary["final_test_acc"]


def main() -> None:
    """Console entry point (`bn-repro-train`): under torchrun, agree on one run dir before Hydra starts."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from bn_repro.engine import distributed

        distributed.share_run_stamp()
    _hydra_main()


if __name__ == "__main__":
    main()
