"""measure.eval_stats: the test accuracy of the same weights with moving averages, PreciseBN statistics
and test-batch statistics (Wu & Johnson 2021)."""

from __future__ import annotations

import pytest
import torch
from conftest import SMOKE, compose_config

from bn_repro import measures
from bn_repro.config import resolve_config
from bn_repro.engine import setup
from bn_repro.engine.evaluate import copy_model, evaluate
from bn_repro.engine.step import loss_fn
from bn_repro.norms import batch_norm_layers
from bn_repro.records.run_files import read_csv, read_measurement
from bn_repro.train import train

ON = ["norm=builtin", "measure.eval_stats.every=5", "measure.eval_stats.num_examples=[60,240]"]


def test_rows_per_evaluation_and_ema_is_the_apps_evaluation(tmp_path):
    train(compose_config([*SMOKE, *ON]), tmp_path)
    rows = read_measurement(tmp_path, "eval_stats")
    steps = sorted({r["step"] for r in rows})
    assert steps == [0, 5, 10, 12]
    first = [(r["stats"], r["n"]) for r in rows if r["step"] == 0]
    assert first == [("ema", 0), ("precise", 60), ("precise", 240), ("batch", 0)]
    metrics = {int(r["step"]): float(r["test_acc"]) for r in read_csv(tmp_path / "metrics.csv")}
    for row in rows:
        if row["stats"] == "ema":  # exact: the same weights and statistics through the same evaluation
            assert row["test_acc"] == metrics[row["step"]]


def test_it_never_changes_training(tmp_path):
    train(compose_config([*SMOKE, "norm=builtin"]), tmp_path / "plain")
    train(compose_config([*SMOKE, *ON]), tmp_path / "measured")

    def metrics(run):
        return [{k: v for k, v in r.items() if k not in ("wall_time_s", "steps_per_s")}
                for r in read_csv(tmp_path / run / "metrics.csv")]  # fmt: skip

    assert metrics("plain") == metrics("measured")  # bit-identical: the same kernels on the same values


def test_without_batch_statistics_only_the_ema_row(tmp_path):
    train(compose_config([*SMOKE, "norm=layernorm", "measure.eval_stats.every=6"]), tmp_path)
    assert {r["stats"] for r in read_measurement(tmp_path, "eval_stats")} == {"ema"}


def test_precise_from_all_training_data_equals_a_direct_full_data_computation():
    config = resolve_config(compose_config([*SMOKE, "norm=builtin"]))
    parts = setup.build(config)
    data, model = parts.data, parts.model
    for _ in range(5):  # move the weights and running statistics away from their initial values
        x, y = parts.next_batch()
        loss = loss_fn(model(x), y)
        parts.optimizer.zero_grad()
        loss.backward()
        parts.optimizer.step()
    n = len(data.train_y)
    measurement = measures.get("eval_stats")(num_examples=[n], batch_size=n, eval_batch_size=50)
    ctx = measures.MeasureContext(step=5, model=model, batch=None, loss_fn=loss_fn, optimizer=parts.optimizer,
                                  data=data, device=parts.device, config=config)  # fmt: skip
    before = [b.clone() for b in model.buffers()]
    (precise,) = [r for r in measurement.measure(ctx) if r["stats"] == "precise"]
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers(), strict=True))  # model untouched

    # Directly: the whole training set as one batch; each BN layer's running statistics become the mean
    # and the unbiased variance of its input over all of it.
    direct = copy_model(model)
    layers = batch_norm_layers(direct)
    seen = {}
    hooks = [
        layer.register_forward_pre_hook(lambda m, i: seen.__setitem__(m, i[0].detach())) for layer in layers
    ]
    direct.train()
    with torch.no_grad():
        direct(data.normalize(data.train_x))
    for hook in hooks:
        hook.remove()
    with torch.no_grad():
        for layer in layers:
            var, mean = torch.var_mean(seen[layer], dim=0, unbiased=True)
            layer.running_mean.copy_(mean)
            layer.running_var.copy_(var)
    loss, acc = evaluate(direct, data, 50)
    # The two compute the statistics with different float32 reductions (batch_statistics against
    # torch.var_mean), which may differ in their last bits: the accuracy may then differ by an argmax at
    # a near-tie, one test example. The loss hardly moves with the statistics (a 1e-3 change of every
    # running_var moves it by 1e-8 relative), so it is held to assert_close's default for floats.
    assert precise["test_acc"] == pytest.approx(acc, abs=1 / len(data.test_y))
    torch.testing.assert_close(precise["test_loss"], loss)


def test_ghost_bn_with_counts_and_test_sets_its_virtual_batch_does_not_divide(tmp_path):
    """n = 100 in batches of 40 leaves a tail of 20 that ghost batches of 40 do not take, nor the 130
    test images in batches of 40 (a tail of 10): ragged tails are dropped when a full batch exists."""
    overrides = [*SMOKE, "norm=ghost_bn", "norm.virtual_batch_size=40", "measure.eval_stats.every=6",
                 "measure.eval_stats.num_examples=[100,240]", "measure.eval_stats.batch_size=40",
                 "data.batch_size=40", "data.synthetic.num_test=130"]  # fmt: skip
    train(compose_config(overrides), tmp_path)
    rows = [r for r in read_measurement(tmp_path, "eval_stats") if r["step"] == 12]
    assert [(r["stats"], r["n"]) for r in rows] == [
        ("ema", 0),
        ("precise", 100),
        ("precise", 240),
        ("batch", 0),
    ]
    assert all(0 <= r["test_acc"] <= 1 for r in rows)
