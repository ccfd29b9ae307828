"""scripts/export_wandb.py: wandb runs -> the local run files, tested on API-shaped data (no network)."""

import importlib.util
import json
import math

import pytest
import wandb
import yaml
from conftest import REPO, SMOKE, compose_config
from omegaconf import OmegaConf
from wandb_offline import OfflineRun, isolated_wandb, only_offline_run  # noqa: F401 - fixture wandb_env

from bn_repro.measures.activations import ACTIVATIONS_COLUMNS
from bn_repro.records.run_files import METRICS_COLUMNS, read_csv
from bn_repro.records.tracking import open_tracker
from bn_repro.records.wandb_export import export_run, run_config
from bn_repro.train import train


def _recorded_run() -> OfflineRun:
    """A run as wandb.Api() returns it: wandb's "_" keys, the last history values in the summary, values
    the API hands back as strings or None, history keys in no particular order, a step logged twice."""
    config = {"experiment_name": "fig1_mnist", "norm": {"kind": "builtin"}, "seed": 1,
              "probe": {"units": [3, 0]}, "_probe_layers": ["hidden1", "hidden10"],
              "_wandb": {"x": 1}}  # fmt: skip

    def evaluation(step, test_acc, train_loss):
        row = {"_step": step // 5, "_runtime": 1.5, "_timestamp": 1.7e9, "step": step, "train/epoch": 0,
               "train/loss": train_loss, "train/acc": None if step == 0 else 0.5, "test/loss": 2.0,
               "test/acc": test_acc, "train/lr": 0.01, "perf/wall_time_s": step / 10,
               "perf/steps_per_s": "NaN" if step == 0 else 50.0,
               "act_hist/hidden1": {"_type": "histogram", "values": [1, 2], "bins": [0.0, 1.0, 2.0]},
               }  # fmt: skip
        for layer in ("hidden10", "hidden1"):  # not in depth order, as the API may return them
            row[f"act/{layer}/layer_std"] = 1.0 + step
            for unit in (0, 3):
                row.update({f"act/{layer}/{unit}/{s}": float(unit + step) for s in ("p85", "p15", "p50")})
                row.update({f"act/{layer}/{unit}/mean": 0.1, f"act/{layer}/{unit}/std": 0.2})
            row[f"act/{layer}/layer_mean"] = -1.0
        return row

    history = [
        evaluation(0, 0.1, "NaN"),
        evaluation(5, 0.2, 1.5),
        {"_step": 2, "_runtime": 2.0, "system/other": 1},  # not an evaluation row
        evaluation(5, 0.3, 1.25),  # the job resumed from its step-0 checkpoint and redid step 5
    ]
    summary = {"_wandb": {"runtime": 3}, "_step": 3, "_runtime": 3.0, "step": 5, "test/acc": 0.3,
               "act/hidden1/0/p50": 5.0, "act_hist/hidden1": {"_type": "histogram"}, "status": "finished",
               "final_test_acc": 0.3, "steps": 5, "provenance": {"device": "cpu"}}  # fmt: skip
    return OfflineRun(id="abc123", name="norm=builtin,seed=1", group="fig1_mnist", project="bn-repro",
                      job_type="train", tags=[], config=config, summary_metrics=summary, history=history,
                      entity="team", url="https://wandb.example/team/bn-repro/runs/abc123")  # fmt: skip


def test_export_rebuilds_the_run_files_from_api_data(tmp_path):
    run_dir = export_run(_recorded_run(), tmp_path)
    assert run_dir == tmp_path / "norm=builtin,seed=1-abc123"

    metrics = read_csv(run_dir / "metrics.csv")
    assert tuple(metrics[0]) == METRICS_COLUMNS
    assert [r["step"] for r in metrics] == ["0", "5"]
    assert metrics[1]["test_acc"] == "0.3" and metrics[1]["train_loss"] == "1.25"  # the last row of step 5
    assert metrics[0]["train_loss"] == metrics[0]["train_acc"] == metrics[0]["steps_per_s"] == "nan"
    assert metrics[1]["lr"] == "0.01" and metrics[1]["wall_time_s"] == "0.5" and metrics[1]["epoch"] == "0"

    activations = read_csv(run_dir / "activations.csv")
    assert tuple(activations[0]) == ACTIVATIONS_COLUMNS
    # Per step: layers in depth order, units in probe.units order, as train() writes them.
    assert [(r["step"], r["layer"], r["unit"]) for r in activations[:4]] == [
        ("0", "hidden1", "3"), ("0", "hidden1", "0"), ("0", "hidden10", "3"), ("0", "hidden10", "0")
    ]  # fmt: skip
    assert len(activations) == 2 * 2 * 2
    last = activations[-1]
    assert (last["p15"], last["p50"], last["p85"], last["mean"], last["std"]) == (
        "5.0",
        "5.0",
        "5.0",
        "0.1",
        "0.2",
    )
    assert (last["layer_mean"], last["layer_std"]) == ("-1.0", "6.0")

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["config"] == {"experiment_name": "fig1_mnist", "norm": {"kind": "builtin"}, "seed": 1,
                                 "probe": {"units": [3, 0]}}  # fmt: skip
    assert summary["experiment_name"] == "fig1_mnist"
    assert summary["status"] == "finished" and summary["final_test_acc"] == 0.3
    assert summary["provenance"] == {"device": "cpu"}
    for logged in ("_step", "_wandb", "step", "test/acc", "act/hidden1/0/p50", "act_hist/hidden1"):
        assert logged not in summary
    assert summary["wandb"]["id"] == "abc123" and summary["wandb"]["group"] == "fig1_mnist"


def test_exporting_again_replaces_the_files(tmp_path):
    run = _recorded_run()
    export_run(run, tmp_path)
    run.history = run.history[:1]
    run_dir = export_run(run, tmp_path)
    assert [r["step"] for r in read_csv(run_dir / "metrics.csv")] == ["0"]


def test_round_trip_through_an_offline_run(tmp_path, wandb_env):
    """train() with logger=wandb, read back what wandb recorded, export it: the local files again."""
    local = tmp_path / "local"
    train(compose_config([*SMOKE, "logger=wandb", "norm=none", "seed=2"]), local)
    exported = export_run(only_offline_run(local), tmp_path / "exported")

    for name in ("metrics.csv", "activations.csv"):
        assert read_csv(exported / name) == read_csv(local / name), name
    mine, theirs = (json.loads((d / "summary.json").read_text()) for d in (local, exported))
    assert mine.pop("wandb")["id"] == theirs.pop("wandb")["id"]
    assert mine == theirs


def test_a_sweep_run_keeps_the_resolved_config(tmp_path, wandb_env, monkeypatch):
    # What `wandb agent` sets for a run; a sweep's norm=builtin replaces the resolved `norm` dict.
    params = tmp_path / "sweep-params.yaml"
    params.write_text(yaml.safe_dump({"norm": {"value": "builtin"}, "seed": {"value": 1}}))
    monkeypatch.setenv("WANDB_SWEEP_ID", "sweep123")
    monkeypatch.setenv("WANDB_SWEEP_PARAM_PATH", str(params))
    wandb.teardown()
    config = OmegaConf.to_container(compose_config([*SMOKE, "logger=wandb", "seed=1"]), resolve=True)
    with open_tracker(config, tmp_path / "run"):
        pass
    run = only_offline_run(tmp_path / "run")
    assert run.config["norm"] == "builtin"
    assert run_config(run.config) == config


def _load_script():
    spec = importlib.util.spec_from_file_location("export_wandb", REPO / "scripts" / "export_wandb.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _FakeApi:
    def __init__(self, runs):
        self._runs = runs
        self.asked = []

    def __call__(self, timeout=None):
        return self

    def runs(self, path, filters=None):
        self.asked.append((path, filters))
        return list(self._runs)


def test_export_script_pulls_a_group(tmp_path, monkeypatch, capsys):
    api = _FakeApi([_recorded_run()])
    monkeypatch.setattr(wandb, "Api", api)
    script = _load_script()
    assert script.main(["--entity", "team", "--group", "fig1_mnist", "--out", str(tmp_path)]) == 0
    assert api.asked == [("team/bn-repro", {"group": "fig1_mnist"})]
    (summary,) = tmp_path.glob("*/summary.json")
    assert json.loads(summary.read_text())["config"]["norm"]["kind"] == "builtin"

    api._runs = []
    assert script.main(["--group", "nothing", "--out", str(tmp_path / "none")]) == 1
    assert "no runs in bn-repro" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["NaN", None])
def test_missing_or_nan_values_become_nan(value, tmp_path):
    run = _recorded_run()
    run.history = [{**run.history[1], "test/loss": value}]
    (row,) = read_csv(export_run(run, tmp_path) / "metrics.csv")
    assert math.isnan(float(row["test_loss"]))


def test_export_script_answers_an_offline_run_with_its_local_files(tmp_path, wandb_env, capsys):
    job = tmp_path / "job"
    train(compose_config([*SMOKE, "logger=wandb", "trainer.max_steps=5"]), job)
    (offline,) = (job / "wandb").glob("offline-run-*")
    script = _load_script()
    assert script.main([str(offline)]) == 0
    out = capsys.readouterr().out
    assert f"local run files are already in {job.resolve()}" in out and "wandb sync" in out
    assert script.main([str(job)]) == 0
    assert script.main([str(tmp_path)]) == 1  # not a run
    assert "is not a wandb run of a bn_repro job" in capsys.readouterr().err


def test_export_script_without_a_login_says_so_in_one_line(tmp_path, wandb_env, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "online")
    script = _load_script()
    assert script.main(["--group", "fig1_mnist", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "wandb login" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as usage:
        script.main(["--no-such-flag"])
    assert usage.value.code == 2
