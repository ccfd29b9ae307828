"""Santurkar et al. 2018 ("How Does Batch Normalization Help Optimization?"): noisy BN, the VGG and
the deep linear network, and the three measurements (gradient ICS, distribution ICS, landscape)."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import SMOKE, compose_config, interrupted_at_evaluation
from torch import nn

from bn_repro import norms
from bn_repro.measures import MeasureContext
from bn_repro.measures.ics_distribution import ICSDistribution, shift_statistics
from bn_repro.measures.ics_gradient import ICSGradient
from bn_repro.measures.landscape import Landscape, along_gradient
from bn_repro.models import build_model
from bn_repro.norms.noisy_bn import NoisyBatchNorm
from bn_repro.records.run_files import read_csv, read_measurement
from bn_repro.train import train

MEASURED = ["measure.ics_gradient.every=3", "measure.landscape.every=3", "measure.ics_distribution.every=3",
            "measure.ics_distribution.num_examples=50"]  # fmt: skip


def _state(module: nn.Module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------ noisy BN


def _trained_pair() -> tuple[NoisyBatchNorm, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    noisy = norms.build("noisy_bn", 6, 4, ramp_steps=0)
    bn = norms.build("custom", 6, 4)
    x = torch.randn(8, 6, 3, 3) * 2 + 1
    for _ in range(3):
        noisy(x)
        bn(x)
    return noisy, bn, x


def test_noisy_bn_is_bn_in_eval_and_noisy_in_training():
    noisy, bn, x = _trained_pair()
    # Exact: NoisyBatchNorm is the custom BatchNorm, the same kernels on the same values.
    assert torch.equal(noisy.running_mean, bn.running_mean)  # the noise comes after BN's statistics
    noisy.eval(), bn.eval()
    assert torch.equal(noisy(x), bn(x))
    assert int(noisy.noise_draws) == 3  # eval forwards draw nothing
    noisy.train(), bn.train()
    y_noisy, y_bn = noisy(x), bn(x)
    mean = y_noisy.mean(dim=(0, 2, 3))
    std = y_noisy.std(dim=(0, 2, 3), unbiased=False)
    assert mean.abs().min() > 0 and not torch.allclose(std, torch.ones(6), atol=1e-3)
    assert not torch.allclose(y_noisy, y_bn)
    assert not torch.equal(noisy(x), y_noisy)  # resampled at every forward


def test_algorithm_2_recomputes_noisy_bn_statistics_without_the_noise():
    """The population statistics are those of the noise-free network inference runs: a two-layer net of
    noisy BN gets exactly the statistics of the same net with plain BN, and its noise stays on after."""
    torch.manual_seed(0)
    noisy_net = nn.Sequential(NoisyBatchNorm(4, ramp_steps=0), nn.ReLU(), nn.Linear(4, 4),
                              NoisyBatchNorm(4, ramp_steps=0))  # fmt: skip
    plain_net = nn.Sequential(
        norms.build("custom", 4, 2), nn.ReLU(), nn.Linear(4, 4), norms.build("custom", 4, 2)
    )
    plain_net.load_state_dict(noisy_net.state_dict(), strict=False)
    batches = [torch.randn(16, 4) * 3 + 1 for _ in range(5)]
    norms.recompute_population_statistics(noisy_net, batches, 5)
    norms.recompute_population_statistics(plain_net, batches, 5)
    for i in (0, 3):
        assert torch.allclose(noisy_net[i].running_mean, plain_net[i].running_mean, atol=1e-6)
        assert torch.allclose(noisy_net[i].running_var, plain_net[i].running_var, atol=1e-6)
        assert noisy_net[i].noise_enabled and int(noisy_net[i].noise_draws) == 0  # no draw in the pass
    noisy_net.train()
    assert not torch.allclose(noisy_net(batches[0]), plain_net.train()(batches[0]))


def test_noisy_bn_noise_is_its_own_reproducible_and_restored_by_load_state_dict():
    noisy, _, x = _trained_pair()
    saved = copy.deepcopy(noisy.state_dict())
    rng = torch.get_rng_state()
    first = noisy(x)
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is never drawn from
    torch.manual_seed(123)
    fresh = norms.build("noisy_bn", 6, 4, ramp_steps=0)  # another key and count
    fresh.load_state_dict(saved)
    assert torch.equal(fresh(x), first)
    other_seed = norms.build("noisy_bn", 6, 4, ramp_steps=0, seed=1)
    other_seed.load_state_dict(saved)
    assert not torch.equal(other_seed(x), first)


def test_noisy_bn_schedule_grows_and_layers_of_a_model_differ():
    layer = NoisyBatchNorm(4, shift=1.0, scale=3.0, ramp_steps=10)
    assert layer.bounds(1) == pytest.approx((0.1, 1.2))
    assert layer.bounds(5) == pytest.approx((0.5, 2.0))
    assert layer.bounds(10) == layer.bounds(1000) == (1.0, 3.0)
    model = build_model({"name": "mlp"}, norms.factory("noisy_bn"), (1, 28, 28), 10)
    keys = {int(layer.norm.noise_key) for layer in model.hidden}
    assert len(keys) == 3


def test_noisy_bn_registry_entry_and_bad_options():
    spec = norms.get("noisy_bn")
    assert (spec.synchronizes, spec.population_stats, norms.label({"kind": "noisy_bn"})) == (
        False,
        True,
        "noisy BN",
    )
    model = build_model({"name": "mlp"}, norms.factory("noisy_bn"), (1, 28, 28), 10)
    assert len(norms.batch_norm_layers(model)) == 3  # Algorithm 2 applies
    with pytest.raises(ValueError, match=r"norm.scale=0.5: expected a number >= 1"):
        norms.build("noisy_bn", 4, 2, scale=0.5)
    with pytest.raises(ValueError, match=r"norm.ramp_steps=-1"):
        norms.build("noisy_bn", 4, 2, ramp_steps=-1)


def test_noisy_bn_run_resumes_to_the_same_metrics(tmp_path, monkeypatch):
    overrides = [
        *SMOKE,
        "norm=noisy_bn",
        "norm.ramp_steps=4",
        "trainer.max_steps=20",
        "trainer.checkpoint_every=7",
    ]
    train(compose_config(overrides), tmp_path / "whole")
    interrupted_at_evaluation(monkeypatch, compose_config(overrides), tmp_path / "parts", evaluation=4)
    train(compose_config(overrides), tmp_path / "parts")

    def metrics(run):
        return [{k: v for k, v in r.items() if k not in ("wall_time_s", "steps_per_s")}
                for r in read_csv(tmp_path / run / "metrics.csv")]  # fmt: skip

    assert metrics("parts") == metrics("whole")


# ------------------------------------------------------------------------------------------ models


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("norm", ["none", "builtin"])
def test_vgg_shapes_and_biases(shape, norm):
    model = build_model({"name": "vgg", "width": 0.125, "head": [16]}, norms.factory(norm), shape, 10)
    assert model(torch.randn(2, *shape)).shape == (2, 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 8  # VGG-11
    assert all((c.bias is None) == (norm != "none") for c in convs)
    assert all((layer.linear.bias is None) == (norm != "none") for layer in model.head)
    assert list(model.probe_points()) == [*(f"conv{i}" for i in range(1, 9)), "fc1"]


def test_dln_is_deep_and_linear():
    model = build_model({"name": "linear_deep"}, norms.factory("builtin"), (1, 28, 28), 10)
    assert model(torch.randn(4, 1, 28, 28)).shape == (4, 10)
    assert len(model.probe_points()) == 24 and len(model.hidden) + 1 == 25
    assert all(layer.linear.bias is None for layer in model.hidden)
    plain = build_model(
        {"name": "linear_deep", "depth": 6, "hidden_width": 8}, norms.factory("none"), (3, 32, 32), 10
    )
    assert all(layer.linear.bias is not None for layer in plain.hidden)
    a, b = torch.randn(1, 3, 32, 32, dtype=torch.float64), torch.randn(1, 3, 32, 32, dtype=torch.float64)
    plain.double()
    with torch.no_grad():  # no nonlinearity: f(2a + 3b) = 2 f(a) + 3 f(b) (zero biases at init)
        assert torch.allclose(plain(2 * a + 3 * b), 2 * plain(a) + 3 * plain(b))
    with pytest.raises(ValueError, match="model.depth=0"):
        build_model({"name": "linear_deep", "depth": 0}, norms.factory("none"), (1, 28, 28), 10)
    with pytest.raises(ValueError, match="unknown model.config 'vgg7'; valid choices: vgg11"):
        build_model({"name": "vgg", "config": "vgg7"}, norms.factory("none"), (1, 28, 28), 10)


# ------------------------------------------------------------------------------------------ measurements


def _context(model, optimizer, batch, loss_fn=F.cross_entropy, test_x=None, step=1):
    data = SimpleNamespace(test_x=test_x, normalize=lambda t: t)
    return MeasureContext(
        step=step, model=model, batch=batch, loss_fn=loss_fn, optimizer=optimizer, data=data,
        device=torch.device("cpu"),
    )  # fmt: skip


def _mlp(norm: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(
        {"name": "mlp", "hidden": [7, 6, 5], "init_std": 0.3}, norms.factory(norm), (1, 4, 4), 3
    )


def _batch(n: int = 16):
    generator = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 4, 4, generator=generator), torch.randint(0, 3, (n,), generator=generator)


def _with_momentum_state(model, lr):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-3)
    x, y = _batch()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()  # a momentum buffer to replay
    optimizer.zero_grad(set_to_none=True)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return optimizer


@pytest.mark.parametrize("norm", ["none", "builtin", "custom", "noisy_bn"])
def test_ics_gradient_with_lr_0_is_exactly_no_shift_and_leaves_the_model_alone(norm):
    model = _mlp(norm)
    optimizer = _with_momentum_state(model, lr=0.5)
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    before, opt_before = _state(model), copy.deepcopy(optimizer.state_dict())
    rows = ICSGradient().measure(_context(model, optimizer, _batch()))
    assert [r["layer"] for r in rows] == ["hidden.0.linear", "hidden.1.linear", "hidden.2.linear", "out"]
    # Exact: with lr 0 the gradient is recomputed by the same kernels from the same values, bit for bit,
    # and compare() answers identical gradients with exactly (0, 1).
    assert all(r["l2_diff"] == 0.0 and r["cosine"] == 1.0 for r in rows)
    assert _same_state(_state(model), before)  # running statistics and noise counts untouched
    assert str(optimizer.state_dict()) == str(opt_before)
    for group in optimizer.param_groups:
        group["lr"] = 0.5
    rows = ICSGradient().measure(_context(model, optimizer, _batch()))
    assert rows[0]["l2_diff"] == 0.0 and all(r["l2_diff"] > 0 and r["cosine"] < 1 for r in rows[1:])


def test_ics_gradient_matches_a_hand_computed_g_prime():
    model = _mlp("builtin")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3)
    x, y = _batch()
    rows = ICSGradient().measure(_context(model, optimizer, (x, y)))
    # Layer 3 (hidden.2.linear): plain SGD on everything before its weight, by hand.
    moved = copy.deepcopy(model)
    params = list(moved.named_parameters())
    grads = torch.autograd.grad(F.cross_entropy(moved(x), y), [p for _, p in params])
    g = dict(zip([n for n, _ in params], grads, strict=True))["hidden.2.linear.weight"]
    with torch.no_grad():
        for (name, p), grad in zip(params, grads, strict=True):
            if name.startswith(("hidden.0.", "hidden.1.")):
                p -= 0.3 * grad
    g_after = torch.autograd.grad(F.cross_entropy(moved(x), y), moved.hidden[2].linear.weight)[0]
    assert rows[2]["l2_diff"] == pytest.approx((g - g_after).norm().item(), rel=1e-4)
    assert rows[2]["cosine"] == pytest.approx(
        F.cosine_similarity(g.flatten(), g_after.flatten(), dim=0).item()
    )


def test_shift_statistics_of_identical_shifted_and_scaled_samples():
    sample = torch.randn(3, 50, dtype=torch.float64)
    # Exact for identical samples: the same reductions of the same values give m - m = 0 and s / s = 1.
    assert [t.tolist() for t in shift_statistics(sample, sample.clone())] == [[0.0] * 3, [1.0] * 3, [0.0] * 3]
    mean_shift, std_ratio, wasserstein = shift_statistics(sample, sample + 0.25)
    assert torch.allclose(mean_shift, torch.full((3,), 0.25, dtype=torch.float64))
    assert torch.allclose(wasserstein, torch.full((3,), 0.25, dtype=torch.float64))
    assert torch.allclose(shift_statistics(sample, 2 * sample)[1], torch.full((3,), 2.0, dtype=torch.float64))


@pytest.mark.parametrize("norm,mode", [("noisy_bn", "train"), ("builtin", "eval"), ("none", "train")])
def test_ics_distribution_first_writes_nothing_then_no_change_is_exactly_0_1_0(norm, mode):
    model = _mlp(norm)
    before = _state(model)
    measurement = ICSDistribution(units=[0, 2, 99], num_examples=20, mode=mode)
    ctx = _context(model, None, None, test_x=_batch(30)[0], step=0)
    measurement.setup(ctx)  # a fresh run: no sample before the first measurement
    assert measurement.measure(ctx) == []
    rows = measurement.measure(ctx)
    assert [(r["layer"], r["unit"]) for r in rows] == [(f"hidden{i}", u) for i in (1, 2, 3) for u in (0, 2)]
    assert all((r["mean_shift"], r["std_ratio"], r["wasserstein"]) == (0.0, 1.0, 0.0) for r in rows)
    assert _same_state(_state(model), before)
    with torch.no_grad():
        model.hidden[0].linear.weight.mul_(1.5)
    assert any(r["wasserstein"] > 0 for r in measurement.measure(ctx))
    with pytest.raises(ValueError, match="mode='sideways' is not valid; valid choices: train, eval"):
        ICSDistribution(mode="sideways")


def test_landscape_of_a_quadratic_loss_is_its_curvature():
    # L(w) = mean((w x)^2) over x = (1, 2): 2.5 w^2, gradient 5 w, curvature 5.
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    x, y = torch.tensor([[1.0], [2.0]]), torch.zeros(2, 1)
    etas = [0.01, 0.05, 0.1]
    probe = along_gradient(model, x, y, F.mse_loss, [[eta] for eta in etas])
    assert probe.losses == pytest.approx([2.5 * (1 - 5 * eta) ** 2 for eta in etas], rel=1e-6)
    ctx = _context(model, torch.optim.SGD(model.parameters(), lr=0.02), (x, y), loss_fn=F.mse_loss)
    row = Landscape(step_sizes=[0.5, 1.0, 2.5]).measure(ctx)[0]  # 0.01, 0.02, 0.05
    assert row["beta_smoothness"] == pytest.approx(5.0, rel=1e-5)
    assert row["loss"] == pytest.approx(2.5)
    assert (row["loss_min"], row["loss_max"]) == pytest.approx((2.5 * 0.75**2, 2.5 * 0.95**2), rel=1e-6)
    assert (row["grad_diff_min"], row["grad_diff_max"]) == pytest.approx(
        (5 * 0.01 * 5, 5 * 0.05 * 5), rel=1e-5
    )


def test_landscape_beta_is_the_curvature_along_the_gradient_in_two_dims():
    # L(w) = mean((X w - y)^2): Hessian H = 2 X^T X / n; the gradient changes by -eta H g, so the
    # effective beta-smoothness is ||H g|| / ||g|| at every step size.
    torch.manual_seed(0)
    X, y = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 1, dtype=torch.float64)
    model = nn.Linear(2, 1, bias=False).double()
    w = model.weight.detach().reshape(2, 1).clone()
    H = 2 * X.T @ X / 5
    g = H @ w - 2 * X.T @ y / 5
    ctx = _context(model, torch.optim.SGD(model.parameters(), lr=0.1), (X, y), loss_fn=F.mse_loss)
    row = Landscape(step_sizes=[0.01, 0.3], relative=False).measure(ctx)[0]
    assert row["beta_smoothness"] == pytest.approx(((H @ g).norm() / g.norm()).item(), rel=1e-9)
    assert row["grad_diff_max"] == pytest.approx(0.3 * (H @ g).norm().item(), rel=1e-9)
    zero_lr = _context(model, torch.optim.SGD(model.parameters(), lr=0.0), (X, y), loss_fn=F.mse_loss)
    assert math.isnan(Landscape().measure(zero_lr)[0]["beta_smoothness"])
    with pytest.raises(ValueError, match=r"step_sizes=\[0.5, -1\] is not valid"):
        Landscape(step_sizes=[0.5, -1])


@pytest.mark.parametrize("model", [
    ["norm=noisy_bn"],
    ["model=vgg", "model.width=0.125", "model.head=[16]", "norm=builtin"],
    ["model=linear_deep", "model.depth=5", "model.hidden_width=16", "norm=custom"],
])  # fmt: skip
def test_the_measurements_never_change_training(model, tmp_path):
    plain = train(compose_config([*SMOKE, *model]), tmp_path / "plain")
    measured = train(compose_config([*SMOKE, *model, *MEASURED]), tmp_path / "measured")

    def metrics(run):
        return [{k: v for k, v in r.items() if k not in ("wall_time_s", "steps_per_s")}
                for r in read_csv(tmp_path / run / "metrics.csv")]  # fmt: skip

    assert metrics("measured") == metrics("plain")
    assert measured["final_test_acc_population_stats"] == plain["final_test_acc_population_stats"]
    assert sorted({r["step"] for r in read_measurement(tmp_path / "measured", "ics_gradient")}) == [
        3,
        6,
        9,
        12,
    ]
    assert sorted({r["step"] for r in read_measurement(tmp_path / "measured", "landscape")}) == [3, 6, 9, 12]
    # after_step: step 0 (no rows: nothing to compare with), then every 3rd step and the last.
    assert sorted({r["step"] for r in read_measurement(tmp_path / "measured", "ics_distribution")}) == [
        3,
        6,
        9,
        12,
    ]


def test_each_measurement_reports_its_cost_in_the_summary(tmp_path, monkeypatch):
    """summary.json: seconds in each measurement and per call; they survive a resume and are left out
    of train_time_s."""
    overrides = [*SMOKE, *MEASURED, "trainer.checkpoint_every=4"]
    whole = train(compose_config(overrides), tmp_path / "whole")
    names = {"activations", "ics_gradient", "landscape", "ics_distribution"}
    assert set(whole["measure_time_s"]) == names == set(whole["measure_ms_per_call"])
    assert all(seconds > 0 for seconds in whole["measure_time_s"].values())
    # ics_gradient ran at steps 3, 6, 9, 12: 4 calls.
    per_call = whole["measure_ms_per_call"]["ics_gradient"]
    # measure_time_s is rounded to the ms: within 0.5 ms / 4 calls of the exact per-call figure.
    assert per_call == pytest.approx(1000 * whole["measure_time_s"]["ics_gradient"] / 4, abs=0.13)
    assert whole["train_time_s"] + sum(whole["measure_time_s"].values()) <= whole["wall_time_s"] + 0.05

    interrupted_at_evaluation(monkeypatch, compose_config(overrides), tmp_path / "parts", evaluation=3)
    resumed = train(compose_config(overrides), tmp_path / "parts")
    assert resumed["resumed_from_step"] == 8
    # Calls before the checkpoint at step 8 are counted from the checkpoint, the rest by the resumed run.
    assert set(resumed["measure_time_s"]) == names
