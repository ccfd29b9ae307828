"""The measurement seam: a measurement is one registered class; the loop runs it on its cadence, writes
its file, mirrors it to wandb and back, and it never changes training."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import SMOKE, compose_config, interrupted_at_evaluation

from bn_repro import measures
from bn_repro.analysis.figures import load_run_data
from bn_repro.config import ConfigError
from bn_repro.measures import base
from bn_repro.records.run_files import read_csv, read_measurement
from bn_repro.records.wandb_export import history_rows
from bn_repro.train import train

BN = ["norm=builtin"]


@pytest.fixture
def registered():
    """Test measurements, registered for one test only."""
    before = dict(base._REGISTRY)

    @measures.register_measurement("step_recorder")
    class StepRecorder(measures.Measurement):
        columns = ("layer", "batch_size", "has_batch")
        index = ("layer",)

        def __init__(self, tag: str = "x"):
            self.tag = tag

        def measure(self, ctx):
            size = 0 if ctx.batch is None else len(ctx.batch[0])
            return [{"layer": f"{self.tag}{i}", "batch_size": size, "has_batch": ctx.batch is not None}
                    for i in (1, 2)]  # fmt: skip

    @measures.register_measurement("meddler")
    class Meddler(measures.Measurement):
        """Everything a careless measurement could do to the run: draw from the global RNG, run BN in
        training mode (moving its running statistics), take optimizer steps, change weights."""

        phase = "before_step"
        columns = ("loss",)

        def measure(self, ctx):
            torch.rand(10)
            x, y = ctx.batch
            ctx.model.train()
            loss = ctx.loss_fn(ctx.model(x), y)
            loss.backward()
            ctx.optimizer.step()
            with torch.no_grad():
                for p in ctx.model.parameters():
                    p.add_(torch.randn_like(p))
            ctx.model.eval()
            return [{"loss": loss.item()}]

    yield StepRecorder, Meddler
    base._REGISTRY.clear()
    base._REGISTRY.update(before)


def test_a_measurement_runs_on_its_cadence_and_writes_its_file(registered, tmp_path):
    overrides = [*SMOKE, "+measure.step_recorder.every=3", "+measure.step_recorder.tag=L"]
    summary = train(compose_config(overrides), tmp_path)
    rows = read_measurement(tmp_path, "step_recorder")
    # after_step: step 0 (no batch), every 3rd step, and the last step (12).
    assert sorted({r["step"] for r in rows}) == [0, 3, 6, 9, 12]
    assert [(r["layer"], r["batch_size"]) for r in rows[:2]] == [("L1", 0), ("L2", 0)]
    assert all(r["batch_size"] == 60 for r in rows if r["step"] > 0)  # the step's batch, as the loss saw it
    assert tuple(read_csv(tmp_path / "step_recorder.csv")[0]) == ("step", "layer", "batch_size", "has_batch")
    assert "step_recorder" in summary["measurements"]
    assert load_run_data(tmp_path).measurement("step_recorder") == tuple(rows)


def test_a_before_step_measurement_sees_the_step_batch(registered, tmp_path):
    train(compose_config([*SMOKE, *BN, "+measure.meddler.every=4"]), tmp_path)
    assert [r["step"] for r in read_measurement(tmp_path, "meddler")] == [4, 8, 12]


def test_measurements_never_change_training(registered, tmp_path):
    plain = train(compose_config([*SMOKE, *BN]), tmp_path / "plain")
    measured = train(
        compose_config([*SMOKE, *BN, "+measure.meddler.every=1", "+measure.step_recorder.every=2",
                        "data.augment=true"]), tmp_path / "measured",
    )  # fmt: skip
    augmented = train(compose_config([*SMOKE, *BN, "data.augment=true"]), tmp_path / "augmented")

    def metrics(run):
        return [{k: v for k, v in r.items() if k not in ("wall_time_s", "steps_per_s")}
                for r in read_csv(tmp_path / run / "metrics.csv")]  # fmt: skip

    # Exact: a measurement that leaves the model, optimizer and RNG alone leaves the same kernels on the
    # same values, in the same process, so every logged float is bit-identical.
    assert metrics("measured") == metrics("augmented")
    assert metrics("plain") != metrics("augmented")  # the comparison can tell runs apart
    assert read_csv(tmp_path / "measured/activations.csv") == read_csv(tmp_path / "augmented/activations.csv")
    assert measured["final_test_acc_population_stats"] == augmented["final_test_acc_population_stats"]
    assert plain["final_test_acc_population_stats"] is not None


def test_the_probe_is_the_first_measurement(tmp_path):
    train(compose_config([*SMOKE, "measure.activations.every=4"]), tmp_path)
    steps = sorted({r["step"] for r in read_measurement(tmp_path, "activations")})
    assert steps == [0, 4, 8, 12]
    assert [int(r["step"]) for r in read_csv(tmp_path / "metrics.csv")] == [0, 5, 10, 12]  # eval_every=5
    off = tmp_path / "off"
    train(compose_config([*SMOKE, "measure.activations.every=0"]), off)
    assert not (off / "activations.csv").exists()


def test_bad_measurement_configs_are_refused(registered, tmp_path):
    for overrides, message in (
        (["+measure.nothing.every=1"], "unknown measurement 'nothing'; valid choices: activations"),
        (["+measure.step_recorder.every=-1"], "measure.step_recorder.every=-1"),
        (["+measure.step_recorder.every=1", "+measure.step_recorder.colour=red"], "no option 'colour'"),
        (["probe.mode=sideways"], "probe.mode='sideways'"),
    ):
        with pytest.raises(ConfigError, match=message):
            train(compose_config([*SMOKE, *overrides]), tmp_path)


def test_wandb_keys_round_trip_for_any_measurement(registered):
    recorder_cls, _ = registered
    recorder = recorder_cls()
    rows = [{"layer": "x10", "batch_size": 60, "has_batch": True}, {"layer": "x2", "batch_size": 60,
                                                                       "has_batch": True}]  # fmt: skip
    payload = recorder.wandb_payload(rows)
    assert payload == {"step_recorder/x10/batch_size": 60, "step_recorder/x10/has_batch": True,
                       "step_recorder/x2/batch_size": 60, "step_recorder/x2/has_batch": True}  # fmt: skip
    history = [{"step": 5, "test/acc": 0.5, **payload}]
    metrics, measured = history_rows(history)
    assert [r["step"] for r in metrics] == [5]
    # Back in natural order of the index (x2 before x10), whatever order wandb returns the keys in.
    assert measured["step_recorder"] == [{"step": 5, **rows[1]}, {"step": 5, **rows[0]}]


def test_registration_checks_the_contract():
    with pytest.raises(ValueError, match="must be non-empty"):

        @measures.register_measurement("broken")
        class Broken(measures.Measurement):
            columns = ("step", "value")

    assert "broken" not in measures.names()


def test_resume_keeps_measurement_rows_unduplicated(registered, tmp_path, monkeypatch):
    overrides = [*SMOKE, "trainer.max_steps=20", "trainer.checkpoint_every=7",
                 "+measure.step_recorder.every=2"]  # fmt: skip
    train(compose_config(overrides), tmp_path / "whole")

    # Stopped at the evaluation at step 15, after the checkpoint at step 14.
    interrupted_at_evaluation(monkeypatch, compose_config(overrides), tmp_path / "parts", evaluation=4)
    train(compose_config(overrides), tmp_path / "parts")
    for name in ("step_recorder.csv", "activations.csv"):  # exact: a resume replays the same kernels
        assert read_csv(tmp_path / "parts" / name) == read_csv(tmp_path / "whole" / name), name
    summary = json.loads((tmp_path / "parts/summary.json").read_text())
    assert summary["resumed_from_step"] == 14


def test_without_an_index_the_leading_string_columns_tell_rows_apart(registered):
    @measures.register_measurement("plain")
    class Plain(measures.Measurement):
        columns = ("layer", "value")

        def measure(self, ctx):
            return []

    rows = [{"layer": "conv10", "value": 1.5}, {"layer": "conv2", "value": -2.0}]
    payload = Plain().wandb_payload(rows)
    assert payload == {"plain/conv10/value": 1.5, "plain/conv2/value": -2.0}
    _, measured = history_rows([{"step": 3, **payload}])
    assert measured["plain"] == [{"step": 3, **rows[1]}, {"step": 3, **rows[0]}]
