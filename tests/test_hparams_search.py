"""hparams_search presets: Optuna searches over optim.lr that maximise the app's final test accuracy."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, compose_config


@pytest.mark.parametrize(
    ("preset", "experiment"), [("fig1_lr", "fig1_fashion_mnist"), ("fig2_lr", "fig2_inception")]
)
def test_presets_compose_with_the_optuna_sweeper(preset, experiment):
    cfg = compose_config([f"experiment={experiment}", f"hparams_search={preset}"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert "optuna" in sweeper._target_.lower()
    assert sweeper.direction == "maximize" and sweeper.n_trials >= 10
    assert str(sweeper.params["optim.lr"]).startswith("tag(log, interval(")


def run_tiny_search(sweep, *overrides: str) -> None:
    """The fig1_lr search on a few synthetic examples for 8 steps per trial, into `sweep`."""
    result = subprocess.run(
        [sys.executable, "-m", "bn_repro.train", "-m", "hparams_search=fig1_lr", *overrides,
         "data=synthetic", "data.synthetic.num_train=240", "data.synthetic.num_test=120",
         "trainer.max_steps=8", "trainer.eval_every=4", "trainer.progress=false", "probe.num_examples=50",
         "trainer.population_stats_batches=0", f"hydra.sweep.dir={sweep}"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_tiny_search_runs_and_its_table_reads_back(tmp_path):
    sweep = tmp_path / "search"
    run_tiny_search(sweep, "hydra.sweeper.n_trials=3")
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert 0.001 <= best["best_params"]["optim.lr"] <= 3.0
    spec = importlib.util.spec_from_file_location("lr_search_table", REPO / "scripts" / "lr_search_table.py")
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    _, rows = table.search_rows(sweep)
    assert len(rows) == 3 and rows[0]["final_test_acc"] == best["best_value"]


def test_trials_asked_together_train_as_members_of_one_batched_model(tmp_path):
    # n_jobs=3: Optuna asks three learning rates at a time; they differ only in optim.lr, so the batched
    # launcher trains each batch of trials as one model and hands each member's final accuracy back.
    sweep = tmp_path / "search"
    run_tiny_search(
        sweep, "hydra.sweeper.n_trials=6", "hydra.sweeper.n_jobs=3", "hydra/launcher=batched",
        "hydra.launcher.groups=1",
    )  # fmt: skip
    summaries = [json.loads((sweep / str(i) / "summary.json").read_text()) for i in range(6)]
    assert [s["batched"]["members"] for s in summaries] == [3] * 6
    lrs = [s["config"]["optim"]["lr"] for s in summaries]
    assert len(set(lrs)) == 6
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == max(s["final_test_acc"] for s in summaries)
    assert best["best_params"]["optim.lr"] in lrs
