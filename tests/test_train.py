import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import EXPERIMENTS, REPO, SMOKE, compose_config
from omegaconf import OmegaConf

from bn_repro.config import ConfigError
from bn_repro.measures.activations import ACTIVATIONS_COLUMNS
from bn_repro.records.run_files import METRICS_COLUMNS, read_csv
from bn_repro.train import train


def _smoke_for(experiment: str) -> list[str]:
    """The smoke overrides, with the synthetic shape of the preset's real dataset."""
    base = compose_config([f"experiment={experiment}"])
    shape = "cifar" if base.data.name == "cifar10" else "mnist"
    # Conv nets at a quarter of their width: the same code paths at a fraction of the CPU time.
    narrow = ["model.width=0.25"] if "width" in base.model else []
    # Large-batch presets (ghost_large_batch: 1024) on the 240 smoke images: a batch of 64, ghosts of 16.
    small = []
    if base.data.batch_size > 64:
        small = [
            "data.batch_size=64",
            *(["norm.virtual_batch_size=16"] if "virtual_batch_size" in base.norm else []),
        ]
    return [f"experiment={experiment}", *SMOKE, f"data.synthetic.shape={shape}", *narrow, *small]


def test_presets_exist():
    assert "fig1_mnist" in EXPERIMENTS


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_preset_composes_and_resolves(experiment):
    cfg = compose_config([f"experiment={experiment}"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["experiment_name"] == experiment


def test_fig1_preset_is_the_papers_setup():
    cfg = compose_config(["experiment=fig1_mnist"])
    assert cfg.data.name == "mnist"
    assert cfg.data.batch_size == 60
    assert cfg.trainer.max_steps == 50_000
    assert list(cfg.model.hidden) == [100, 100, 100]
    assert cfg.model.activation == "sigmoid"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_preset_runs_a_few_steps(experiment, tmp_path):
    summary = train(compose_config(_smoke_for(experiment)), tmp_path)
    assert summary["status"] in ("finished", "diverged")
    assert summary["steps"] >= 1
    assert (tmp_path / "metrics.csv").exists()


@pytest.mark.parametrize("norm", ["none", "builtin", "custom", "custom_explicit"])
def test_outputs_have_the_documented_columns(norm, tmp_path, smoke_overrides):
    overrides = ["norm=custom", "norm.backward=explicit"] if norm == "custom_explicit" else [f"norm={norm}"]
    summary = train(compose_config([*smoke_overrides, *overrides]), tmp_path)

    metrics = read_csv(tmp_path / "metrics.csv")
    assert tuple(metrics[0]) == METRICS_COLUMNS
    assert [int(r["step"]) for r in metrics] == [0, 5, 10, 12]
    assert all(0.0 <= float(r["test_acc"]) <= 1.0 for r in metrics)

    activations = read_csv(tmp_path / "activations.csv")
    assert tuple(activations[0]) == ACTIVATIONS_COLUMNS
    assert {r["layer"] for r in activations} == {"hidden1", "hidden2", "hidden3"}
    assert len(activations) == 4 * 3 * 5  # evaluations x layers x units
    for r in activations:
        assert float(r["p15"]) <= float(r["p50"]) <= float(r["p85"])

    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary, default=str))
    for key in ("final_test_acc", "best_test_acc", "steps", "wall_time_s", "steps_per_s", "diverged"):
        assert key in on_disk
    assert on_disk["steps"] == 12 and on_disk["diverged"] is False
    assert on_disk["final_test_acc"] == float(metrics[-1]["test_acc"])
    assert on_disk["best_test_acc"] == max(float(r["test_acc"]) for r in metrics)
    provenance = on_disk["provenance"]
    assert provenance["dataset"] == "synthetic" and len(provenance["dataset_checksum"]) == 64
    assert provenance["torch_version"] == torch.__version__ and provenance["device"] == "cpu"
    assert provenance["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert on_disk["config"]["norm"]["kind"] == ("custom" if norm == "custom_explicit" else norm)
    assert ("final_test_acc_population_stats" in on_disk) == (norm != "none")


def test_same_seed_same_metrics(tmp_path, smoke_overrides):
    cfg = compose_config([*smoke_overrides, "norm=custom", "seed=3"])
    train(cfg, tmp_path / "a")
    train(cfg, tmp_path / "b")
    timing = {"wall_time_s", "steps_per_s"}

    def strip(rows):
        return [{k: v for k, v in r.items() if k not in timing} for r in rows]

    assert strip(read_csv(tmp_path / "a/metrics.csv")) == strip(read_csv(tmp_path / "b/metrics.csv"))
    assert read_csv(tmp_path / "a/activations.csv") == read_csv(tmp_path / "b/activations.csv")


def test_different_seed_different_run(tmp_path, smoke_overrides):
    train(compose_config([*smoke_overrides, "seed=1"]), tmp_path / "a")
    train(compose_config([*smoke_overrides, "seed=2"]), tmp_path / "b")
    a, b = read_csv(tmp_path / "a/metrics.csv"), read_csv(tmp_path / "b/metrics.csv")
    assert [r["train_loss"] for r in a] != [r["train_loss"] for r in b]


def test_training_learns_the_synthetic_task(tmp_path, smoke_overrides):
    cfg = compose_config(
        [*smoke_overrides, "trainer.max_steps=300", "trainer.eval_every=300", "optim.lr=0.1"]
    )
    summary = train(cfg, tmp_path)
    assert summary["final_test_acc"] > 0.5  # ten classes: chance is 0.1


def test_divergence_stops_cleanly(tmp_path, smoke_overrides):
    cfg = compose_config(
        [
            *smoke_overrides,
            "norm=none",
            "model.activation=relu",
            "model.init_std=1.0",
            "optim.lr=1e12",
            "trainer.max_steps=200",
            "trainer.eval_every=100",
        ]  # fmt: skip
    )
    summary = train(cfg, tmp_path)
    assert summary["diverged"] is True and summary["status"] == "diverged"
    assert summary["steps"] < 200
    last = read_csv(tmp_path / "metrics.csv")[-1]
    assert not math.isfinite(float(last["train_loss"]))
    assert json.loads((tmp_path / "summary.json").read_text())["diverged"] is True


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.activation=tanh", "valid choices: sigmoid, relu"),
        ("norm=custom norm.backward=magic", "valid choices: autograd, explicit"),
        ("trainer.device=tpu", "valid choices: auto, cpu, cuda"),
        ("probe.mode=sometimes", "valid choices: eval, train"),
        ("trainer.max_steps=0", "trainer.max_steps=0"),
    ],
)
def test_bad_values_fail_before_any_work(override, message, tmp_path, smoke_overrides):
    with pytest.raises(ConfigError, match=message):
        train(compose_config([*smoke_overrides, *override.split()]), tmp_path)
    assert not (tmp_path / "metrics.csv").exists()


def _run_app(args, cwd, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    return subprocess.run(
        [sys.executable, "-m", "bn_repro.train", *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=300, **kwargs,
    )  # fmt: skip


def test_unknown_group_choice_names_the_options(tmp_path):
    result = _run_app(["norm=batchy"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: norm=batchy: no such option; valid choices: batch_renorm, built")
    assert result.stderr.count("\n") == 1


def test_unknown_key_fails(tmp_path):
    result = _run_app(["trainer.max_stepz=3"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        "error: trainer.max_stepz=3: trainer has no key max_stepz; did you mean trainer.max_steps?\n"
    )


@pytest.mark.slow
def test_multirun_writes_one_run_per_job(tmp_path):
    result = _run_app(["-m", *SMOKE, "norm=none,builtin", f"hydra.sweep.dir={tmp_path}/sweep"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summaries = sorted((tmp_path / "sweep").glob("*/summary.json"))
    assert len(summaries) == 2
    kinds = {json.loads(p.read_text())["config"]["norm"]["kind"] for p in summaries}
    assert kinds == {"none", "builtin"}


@pytest.mark.slow
def test_killed_run_leaves_readable_files(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    args = [*SMOKE, "trainer.max_steps=1000000", "trainer.eval_every=20", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen([sys.executable, "-m", "bn_repro.train", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            metrics = run_dir / "metrics.csv"
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 4:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the run wrote no metrics in time")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    rows = read_csv(run_dir / "metrics.csv")
    assert len(rows) >= 3 and all(r["test_acc"] not in ("", None) for r in rows)
    read_csv(run_dir / "activations.csv")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "running" and summary["steps"] >= 20
