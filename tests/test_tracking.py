"""logger=wandb: one wandb run per Hydra job with the resolved config; disabled writes nothing; a wandb
failure never stops training. wandb runs offline into tmp dirs here and never reaches the network."""

import json
import logging
import subprocess
import sys
from types import SimpleNamespace

import pytest
import wandb
import yaml
from conftest import CONFIG_DIR, REPO, SMOKE, compose_config
from omegaconf import OmegaConf
from wandb.sdk.launch.sweeps.utils import create_sweep_command_args
from wandb_offline import (  # noqa: F401 - isolated_wandb: the fixture wandb_env
    isolated_wandb,
    offline_runs,
    only_offline_run,
    read_offline_run,
)

from bn_repro.config import ConfigError
from bn_repro.records.run_files import read_csv
from bn_repro.records.tracking import HISTOGRAM_BINS, WandbTracker, open_tracker, run_name
from bn_repro.train import train

WANDB = ["logger=wandb"]
SMOKE_PROBE_EXAMPLES = int(next(o for o in SMOKE if o.startswith("probe.num_examples=")).split("=")[1])


@pytest.mark.slow
def test_offline_run_holds_the_resolved_config_curves_and_summary(tmp_path, wandb_env):
    cfg = compose_config([*SMOKE, *WANDB, "seed=4"])
    summary = train(cfg, tmp_path / "run")

    run = only_offline_run(tmp_path / "run" / "wandb")  # wandb's files inside the job's output dir
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert {k: v for k, v in run.config.items() if not k.startswith("_")} == resolved == summary["config"]
    assert "${" not in json.dumps(run.config)
    assert run.config["logger"]["mode"] == "offline"
    assert run.config["_probe_layers"] == ["hidden1", "hidden2", "hidden3"]
    assert (run.project, run.group, run.job_type) == ("bn-repro", "default", "train")
    assert run.name == "norm=builtin,seed=4"  # outside Hydra: the two axes of Fig. 1
    assert run.exit_code == 0

    metrics = read_csv(tmp_path / "run" / "metrics.csv")
    assert [h["step"] for h in run.history] == [int(r["step"]) for r in metrics]
    last = run.history[-1]
    assert last["test/acc"] == float(metrics[-1]["test_acc"])
    assert last["perf/steps_per_s"] == float(metrics[-1]["steps_per_s"])
    for key in ("train/loss", "train/lr", "act/hidden3/0/p15", "act/hidden3/0/p50", "act/hidden3/0/p85"):
        assert key in last
    histogram = last["act_hist/hidden3"]
    assert histogram["_type"] == "histogram" and len(histogram["values"]) == HISTOGRAM_BINS
    assert sum(histogram["values"]) == SMOKE_PROBE_EXAMPLES * 100  # every probed value of the layer

    assert run.summary_metrics["final_test_acc"] == summary["final_test_acc"]
    assert run.summary_metrics["status"] == "finished"
    assert "config" not in run.summary_metrics
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["wandb"]["id"] == run.id and on_disk["wandb"]["mode"] == "offline"


def test_disabled_mode_writes_nothing(tmp_path, wandb_env, monkeypatch):
    monkeypatch.setattr(wandb, "init", _must_not_be_called)
    summary = train(compose_config([*SMOKE, *WANDB, "logger.mode=disabled"]), tmp_path / "run")
    assert summary["status"] == "finished" and summary["wandb"] is None
    assert (tmp_path / "run" / "metrics.csv").exists()
    assert not [p for p in tmp_path.rglob("*") if "wandb" in p.name]


def test_wandb_mode_disabled_in_the_environment_starts_no_run(tmp_path, wandb_env, monkeypatch):
    monkeypatch.setattr(wandb, "init", _must_not_be_called)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    config = OmegaConf.to_container(compose_config([*SMOKE, *WANDB]), resolve=True)
    with open_tracker(config, tmp_path) as tracker:
        tracker.log_step(0, {"step": 0})
    assert tracker.info() is None and not any(tmp_path.iterdir())


def _must_not_be_called(*args, **kwargs):
    raise AssertionError("wandb.init was called")


def test_mode_precedence(wandb_env, monkeypatch):
    def mode(overrides):
        return OmegaConf.to_container(compose_config([*WANDB, *overrides]), resolve=True)["logger"]["mode"]

    assert mode([]) == "offline"
    monkeypatch.setenv("WANDB_MODE", "online")
    assert mode([]) == "online"
    assert mode(["logger.mode=disabled"]) == "disabled"  # an explicit override beats WANDB_MODE


def test_bad_mode_names_the_choices(tmp_path, wandb_env):
    with pytest.raises(ConfigError, match="logger.mode='dryrun'.*valid choices: online, offline, disabled"):
        train(compose_config([*SMOKE, *WANDB, "logger.mode=dryrun"]), tmp_path)


def test_failing_init_warns_and_training_goes_on(tmp_path, wandb_env, monkeypatch, caplog):
    def init(*args, **kwargs):
        raise wandb.errors.CommError("network is unreachable")

    monkeypatch.setattr(wandb, "init", init)
    with caplog.at_level(logging.WARNING, logger="bn_repro.records.tracking"):
        summary = train(compose_config([*SMOKE, *WANDB]), tmp_path / "run")
    assert summary["status"] == "finished" and summary["steps"] == 12 and summary["wandb"] is None
    assert "wandb could not start" in caplog.text and "network is unreachable" in caplog.text
    assert len(read_csv(tmp_path / "run" / "metrics.csv")) == 4


@pytest.mark.slow
def test_unreachable_server_warns_and_training_goes_on(tmp_path, wandb_env, monkeypatch, caplog):
    monkeypatch.setenv("WANDB_API_KEY", "a" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    cfg = compose_config([*SMOKE, *WANDB, "logger.mode=online", "logger.init_timeout_s=2"])
    with caplog.at_level(logging.WARNING, logger="bn_repro.records.tracking"):
        summary = train(cfg, tmp_path / "run")
    assert summary["status"] == "finished" and summary["wandb"] is None
    assert "wandb could not start" in caplog.text


def test_online_without_a_key_logs_offline_and_never_prompts(tmp_path, wandb_env, caplog):
    # A login prompt needs a terminal, which pytest's stdin is not: had wandb.init looked for a key
    # itself, it would have raised and no run would be written.
    config = OmegaConf.to_container(compose_config([*SMOKE, *WANDB, "logger.mode=online"]), resolve=True)
    with caplog.at_level(logging.WARNING, logger="bn_repro.records.tracking"):
        with open_tracker(config, tmp_path) as tracker:
            assert tracker.info()["mode"] == "offline"
    assert "no API key" in caplog.text
    assert only_offline_run(tmp_path).config["logger"]["mode"] == "online"


@pytest.mark.slow
def test_a_resumed_job_stays_one_wandb_run(tmp_path, wandb_env):
    overrides = [*SMOKE, *WANDB, "trainer.checkpoint_every=5"]
    train(compose_config([*overrides, "trainer.max_steps=10"]), tmp_path)
    summary = train(compose_config([*overrides, "trainer.max_steps=12"]), tmp_path)  # resumes at step 10
    assert summary["resumed_from_step"] == 10
    wandb.teardown()
    parts = [read_offline_run(p) for p in offline_runs(tmp_path)]  # one offline dir per process, in order
    assert {p.id for p in parts} == {summary["wandb"]["id"]}
    assert [h["step"] for p in parts for h in p.history] == [0, 5, 10, 12]


def test_an_exception_finishes_the_run_as_failed(tmp_path, wandb_env):
    config = OmegaConf.to_container(compose_config([*SMOKE, *WANDB]), resolve=True)
    with pytest.raises(RuntimeError, match="boom"), open_tracker(config, tmp_path) as tracker:
        tracker.log_summary({"status": "failed"})
        raise RuntimeError("boom")
    run = only_offline_run(tmp_path)
    assert run.exit_code == 1 and run.summary_metrics["status"] == "failed"


def test_a_logging_error_mid_run_warns_once_and_logging_stops(caplog):
    calls = []

    def log(payload):
        calls.append(payload)
        raise OSError("disk full")

    run = SimpleNamespace(id="x", name="n", project="p", entity=None, group="g", url=None, log=log,
                          settings=SimpleNamespace(mode="offline", sync_dir="/nowhere"),
                          config=SimpleNamespace(update=lambda *a, **k: None),
                          finish=lambda exit_code=0: calls.append(("finish", exit_code)))  # fmt: skip
    tracker = WandbTracker(run, wandb)
    with caplog.at_level(logging.WARNING, logger="bn_repro.records.tracking"):
        tracker.log_step(0, {"step": 0, "test_acc": 0.5})
        tracker.log_step(5, {"step": 5, "test_acc": 0.6})
        tracker.log_summary({"status": "finished"})
        tracker.finish()
    assert caplog.text.count("disk full") == 1
    assert calls == [{"step": 0, "test/acc": 0.5}, ("finish", 1)]


def test_open_tracker_is_a_no_op_when_not_enabled(tmp_path, wandb_env, monkeypatch):
    monkeypatch.setattr(wandb, "init", _must_not_be_called)
    config = OmegaConf.to_container(compose_config([*SMOKE, *WANDB]), resolve=True)
    with open_tracker(config, tmp_path, enabled=False) as tracker:  # e.g. a DDP rank other than 0
        tracker.log_step(0, {"step": 0})
    assert tracker.info() is None and not any(tmp_path.iterdir())


def test_run_name_is_the_jobs_overrides():
    config = {"logger": {"run_name": None}, "norm": {"kind": "custom"}, "seed": 7}
    overrides = ["experiment=fig1_mnist", "norm=builtin", "seed=1", "logger=wandb", "logger.mode=online"]
    assert run_name(config, overrides) == "norm=builtin,seed=1"
    assert run_name(config, ["experiment=fig1_mnist"]) == "norm=custom,seed=7"
    assert run_name(config, None) == "norm=custom,seed=7"
    assert run_name({**config, "logger": {"run_name": "mine"}}, overrides) == "mine"


@pytest.mark.slow
def test_multirun_writes_one_offline_run_per_job(tmp_path, wandb_env):
    sweep = tmp_path / "sweep"
    env = {**wandb_env, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "bn_repro.train", "-m", *SMOKE, *WANDB, "norm=none,builtin",
         f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for job, kind in (("0", "none"), ("1", "builtin")):
        run = only_offline_run(sweep / job / "wandb")
        assert run.config["norm"]["kind"] == kind
        assert run.name.endswith(f"norm={kind}") and "logger" not in run.name
        assert run.group == "default" and run.exit_code == 0
        assert json.loads((sweep / job / "summary.json").read_text())["wandb"]["id"] == run.id


def _compose_with_hydra(overrides):
    return compose_config(overrides, return_hydra_config=True)


@pytest.mark.parametrize("preset", ["fig1_mnist_sweep", "fig1_fashion_mnist_sweep"])
def test_sweep_presets_run_the_fig1_pair_over_seeds(preset):
    cfg = _compose_with_hydra([f"experiment={preset}"])
    params = cfg.hydra.sweeper.params
    assert params.norm.split(",") == ["none", "builtin"] and len(params.seed.split(",")) == 3
    single = preset.removesuffix("_sweep")
    expected = OmegaConf.to_container(compose_config([f"experiment={single}"]), resolve=True)
    got = OmegaConf.to_container(compose_config([f"experiment={preset}"]), resolve=True)
    assert {**got, "experiment_name": single} == expected  # the same runs as the preset it sweeps


@pytest.mark.parametrize(
    ("launcher", "target"),
    [("parallel", "hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
     ("slurm", "hydra_submitit_launcher.submitit_launcher.SlurmLauncher")],
)  # fmt: skip
def test_launcher_configs_compose(launcher, target):
    cfg = _compose_with_hydra([f"hydra/launcher={launcher}"])
    assert cfg.hydra.launcher._target_.endswith(target)
    if launcher == "slurm":
        cfg = _compose_with_hydra(["hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                                   "hydra.launcher.timeout_min=30"])  # fmt: skip
        assert (cfg.hydra.launcher.partition, cfg.hydra.launcher.timeout_min) == ("gpu", 30)
        assert cfg.hydra.launcher.gpus_per_node == 1


def test_wandb_sweep_drives_the_same_app():
    sweep = yaml.safe_load((CONFIG_DIR / "wandb_sweep" / "fig1_mnist.yaml").read_text())
    command = sweep["command"]
    assert command[:4] == ["${env}", "python", "-m", "bn_repro.train"] and command[-1] == "${args_no_hyphens}"
    fixed = command[4:-1]
    params = sweep["parameters"]
    grid = [(n, s) for n in params["norm"]["values"] for s in params["seed"]["values"]]
    assert len(grid) == 6
    for norm, seed in grid:
        # What the agent appends for one grid point, as wandb builds it.
        args = create_sweep_command_args({"args": {"norm": {"value": norm}, "seed": {"value": seed}}})
        config = OmegaConf.to_container(compose_config([*fixed, *args["args_no_hyphens"]]), resolve=True)
        assert (config["norm"]["kind"], config["seed"]) == (norm, seed)
        assert config["logger"]["name"] == "wandb" and config["logger"]["mode"] == "online"


def test_batched_members_are_each_their_own_wandb_run(tmp_path, wandb_env):
    """A batched group with logger=wandb: every member opens its run (all open at once in one process)
    and logs its own rows to it, named as given, each finished."""
    from bn_repro.batched import plan, train_group
    from bn_repro.config import resolve_config

    overrides = [[*SMOKE, *WANDB, "norm=builtin", f"seed={s}"] for s in (0, 1)] + [
        [*SMOKE, *WANDB, "norm=none", "seed=2"]
    ]
    configs = [compose_config(o) for o in overrides]
    groups, notes = plan([resolve_config(c) for c in configs], max_members=20)
    assert groups == [[0, 1, 2]] and not notes  # wandb no longer keeps a job out of a group
    names = [f"member-{k}" for k in range(3)]
    members = [(c, tmp_path / f"m{k}") for k, c in enumerate(configs)]
    summaries = train_group(members, names=names)
    ids = set()
    for k in range(3):
        run = only_offline_run(tmp_path / f"m{k}" / "wandb")
        metrics = read_csv(tmp_path / f"m{k}" / "metrics.csv")
        assert run.name == names[k] and run.exit_code == 0 and run.config["seed"] == configs[k]["seed"]
        assert [h["step"] for h in run.history] == [int(r["step"]) for r in metrics]
        assert [h["test/acc"] for h in run.history] == [float(r["test_acc"]) for r in metrics]
        assert run.summary_metrics["final_test_acc"] == summaries[k]["final_test_acc"]
        ids.add(run.id)
    assert len(ids) == 3
