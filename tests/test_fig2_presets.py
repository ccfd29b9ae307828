"""The Fig. 2 presets: one per curve, related to each other as the paper's variants are."""

import json
import os
import subprocess
import sys

import pytest
from conftest import CONFIG_DIR, REPO, SMOKE, compose_config
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from bn_repro.analysis.speedup import PAPER_ORDER, fig3_table

FIG2 = set(PAPER_ORDER)


def _resolved(experiment: str) -> dict:
    return OmegaConf.to_container(compose_config([f"experiment={experiment}"]), resolve=True)


def _differences(a, b, prefix=""):
    if isinstance(a, dict) and isinstance(b, dict):
        keys = set(a) | set(b)
        return {d for k in keys for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")}
    return set() if a == b else {prefix.rstrip(".")}


def test_the_sweep_glob_selects_exactly_the_six_curves():
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
            options = GlobalHydra.instance().config_loader().get_group_options("experiment")
    finally:
        GlobalHydra.instance().clear()
    glob = OverridesParser.create().parse_override("experiment=glob(fig2_*)").value()
    assert set(glob.filter(options)) == FIG2


@pytest.mark.parametrize("experiment", sorted(FIG2))
def test_every_curve_is_the_inception_net_on_cifar10_with_sgd_momentum_and_exponential_decay(experiment):
    cfg = _resolved(experiment)
    assert cfg["experiment_name"] == experiment
    assert cfg["data"]["name"] == "cifar10" and cfg["data"]["batch_size"] == 32
    assert cfg["model"]["name"] == "inception"
    assert cfg["optim"]["name"] == "sgd" and cfg["optim"]["momentum"] > 0
    assert cfg["optim"]["schedule"]["name"] == "exponential"


def test_learning_rates_are_the_papers_multiples_of_the_base():
    base = _resolved("fig2_inception")["optim"]["lr"]
    multiples = {"fig2_bn_baseline": 1, "fig2_bn_x5": 5, "fig2_bn_x30": 30, "fig2_bn_x5_sigmoid": 5,
                 "fig2_sigmoid": 1}  # fmt: skip
    for experiment, multiple in multiples.items():
        assert _resolved(experiment)["optim"]["lr"] == pytest.approx(multiple * base), experiment


def test_inception_baseline_has_no_bn_and_the_originals_regularisers():
    cfg = _resolved("fig2_inception")
    assert cfg["norm"]["kind"] == "none" and cfg["model"]["activation"] == "relu"
    assert cfg["model"]["dropout"] > 0 and cfg["model"]["lrn"] is True and cfg["optim"]["weight_decay"] > 0


def test_bn_x5_applies_the_section_4_2_1_changes():
    inception, x5 = _resolved("fig2_inception"), _resolved("fig2_bn_x5")
    assert x5["norm"]["kind"] == "builtin"
    assert x5["model"]["dropout"] == 0 and x5["model"]["lrn"] is False
    assert x5["optim"]["weight_decay"] == pytest.approx(inception["optim"]["weight_decay"] / 5)
    assert inception["optim"]["schedule"]["decay_steps"] == 6 * x5["optim"]["schedule"]["decay_steps"]
    assert x5["optim"]["schedule"]["decay_rate"] == inception["optim"]["schedule"]["decay_rate"]


@pytest.mark.parametrize(
    ("experiment", "reference", "allowed"),
    [
        # BN-Baseline is Inception with BN, everything else the same.
        ("fig2_bn_baseline", "fig2_inception", {"norm.kind", "norm.eps", "norm.momentum"}),
        ("fig2_bn_x30", "fig2_bn_x5", {"optim.lr"}),
        ("fig2_bn_x5_sigmoid", "fig2_bn_x5", {"model.activation"}),
        ("fig2_sigmoid", "fig2_inception", {"model.activation"}),
    ],
)
def test_variants_differ_from_their_reference_only_where_the_paper_says(experiment, reference, allowed):
    diffs = _differences(_resolved(experiment), _resolved(reference)) - {"experiment_name"}
    assert diffs and diffs <= allowed


@pytest.mark.slow
def test_the_sweep_runs_the_six_curves_and_tabulates_them(tmp_path):
    sweep = tmp_path / "sweep"
    # ++: the sweep is set up on the primary config (model=mlp, no width key) before each job composes.
    tiny = [*SMOKE, "data.synthetic.shape=cifar", "++model.width=0.25", "trainer.max_steps=4",
            "trainer.eval_every=2", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    result = subprocess.run(
        [sys.executable, "-m", "bn_repro.train", "-m", "experiment=glob(fig2_*)", *tiny],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in sweep.glob("*/summary.json")]
    assert sorted(s["experiment_name"] for s in summaries) == sorted(FIG2)
    rows = fig3_table([sweep])
    assert [r["variant"] for r in rows] == list(PAPER_ORDER)


# ------------------------------------------------------------------ the CPU-scale family (fig2cpu_*)

CPU_VARIANTS = ("inception", "bn_baseline", "bn_x5", "bn_x30", "bn_x5_sigmoid", "sigmoid")


def test_the_cpu_glob_selects_the_six_variants_and_the_control():
    names = {p.stem for p in (CONFIG_DIR / "experiment").glob("fig2cpu_*.yaml")}
    assert names == {f"fig2cpu_{v}" for v in (*CPU_VARIANTS, "inception_x5")}


@pytest.mark.parametrize("variant", CPU_VARIANTS)
def test_cpu_presets_are_their_fig2_preset_with_the_schedule_compressed(variant):
    cpu, full = _resolved(f"fig2cpu_{variant}"), _resolved(f"fig2_{variant}")
    assert cpu["optim"]["lr"] == full["optim"]["lr"]  # the paper's lr multiples
    steps, full_steps = cpu["trainer"]["max_steps"], full["trainer"]["max_steps"]
    # The decay keeps its share of the budget: 30% (baseline recipe) or 5% (accelerated, 6x faster).
    share = full["optim"]["schedule"]["decay_steps"] / full_steps
    assert cpu["optim"]["schedule"]["decay_steps"] == pytest.approx(share * steps, abs=1)
    assert cpu["trainer"]["eval_every"] <= 0.02 * steps
    assert cpu["data"]["name"] == "fashion_mnist" and cpu["model"]["width"] < full["model"]["width"]
    allowed = {"experiment_name", "data", "model.width", "optim.schedule.decay_steps", "trainer.max_steps",
               "trainer.eval_every", "trainer.eval_examples", "measure.activations.every"}  # fmt: skip
    diffs = _differences(cpu, full)
    assert {d.split(".")[0] if d.startswith("data.") else d for d in diffs} <= allowed


def test_the_control_is_the_cpu_inception_at_bn_x5s_lr():
    control, inception = _resolved("fig2cpu_inception_x5"), _resolved("fig2cpu_inception")
    assert _differences(control, inception) == {"experiment_name", "optim.lr"}
    assert control["optim"]["lr"] == _resolved("fig2cpu_bn_x5")["optim"]["lr"] == 5 * inception["optim"]["lr"]


def test_eval_examples_evaluates_on_the_first_test_images(tmp_path):
    from bn_repro.records.run_files import read_csv
    from bn_repro.train import train

    cfg = compose_config([*SMOKE, "trainer.eval_examples=30", "trainer.eval_batch_size=16"])
    train(cfg, tmp_path)
    for row in read_csv(tmp_path / "metrics.csv"):
        # 30 examples: every accuracy is a multiple of 1/30.
        assert abs(float(row["test_acc"]) * 30 - round(float(row["test_acc"]) * 30)) < 1e-9
    with pytest.raises(Exception, match="trainer.eval_examples=0: expected an integer >= 1"):
        from bn_repro.config import check_values, resolve_config

        check_values(resolve_config(compose_config([*SMOKE, "trainer.eval_examples=0"])))


@pytest.mark.slow
def test_the_cpu_sweep_runs_the_six_variants_and_the_control_and_tabulates_them(tmp_path):
    sweep = tmp_path / "sweep"
    tiny = [*SMOKE, "trainer.max_steps=4", f"hydra.sweep.dir={sweep}"]  # eval_every: 2% of 4 -> 1
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    result = subprocess.run(
        [sys.executable, "-m", "bn_repro.train", "-m", "experiment=glob(fig2cpu_*)", "seed=0,1", *tiny],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = fig3_table([sweep])
    expected = [f"fig2cpu_{v}" for v in (*CPU_VARIANTS, "inception_x5")]
    assert [r["variant"] for r in rows] == expected
    assert all(r["runs"] == 2 for r in rows) and rows[-1]["paper_max_acc"] == "diverged"
