"""Section 3.3-3.4's measurements and option: `scale` (BN's scale invariance, the 1/a law), `jacobian`
(the singular values of each hidden layer's Jacobian) and the MLP's `model.dropout`."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import SMOKE, compose_config
from torch import nn

from bn_repro import norms
from bn_repro.batched.grouping import unbatchable_reason
from bn_repro.config import ConfigError, resolve_config
from bn_repro.measures import MeasureContext, isolated
from bn_repro.measures.jacobian import per_example_singular_values, singular_values, summarize
from bn_repro.measures.weight_scale import Scale, normalized_layers, rescaling_rows
from bn_repro.models.mlp import MLP
from bn_repro.records.run_files import read_csv, read_measurement
from bn_repro.train import train

SCALES = (0.1, 0.5, 2.0, 10.0)


# ----------------------------------------------------------------------------------- scale invariance


def _bn_layer(kind: str, w: torch.Tensor, eps: float) -> tuple[nn.Linear, nn.Module]:
    linear = nn.Linear(w.shape[1], w.shape[0], bias=False).double()
    with torch.no_grad():
        linear.weight.copy_(w)
    norm = norms.factory({"kind": kind, "eps": eps})(w.shape[0], 2).double().train()
    return linear, norm


def _output_and_grad(kind, w, eps, u, r):
    linear, norm = _bn_layer(kind, w, eps)
    out = norm(linear(u))
    (grad,) = torch.autograd.grad((out * r).sum(), linear.weight)
    return out.detach(), grad


@pytest.mark.parametrize("kind", ["builtin", "custom"])
def test_bn_is_scale_invariant_and_the_gradient_scales_by_1_over_a(kind):
    """Paper section 3.3: BN((aW)u) = BN(Wu) and dL/d(aW) = (1/a) dL/dW, in training mode. Exactly so
    with eps scaled along (BN_eps((aW)u) = BN_{eps/a^2}(Wu)); with eps -> 0, the plain statement."""
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(32, 20, generator=gen, dtype=torch.float64)
    w = 0.1 * torch.randn(8, 20, generator=gen, dtype=torch.float64)
    r = torch.randn(32, 8, generator=gen, dtype=torch.float64)  # L = <BN(Wu), r>
    for a in SCALES:
        for eps in (1e-5, 0.3):  # a large eps: the exact law is not the plain one
            out_a, grad_a = _output_and_grad(kind, a * w, eps, u, r)
            out_ref, grad_ref = _output_and_grad(kind, w, eps / a**2, u, r)
            torch.testing.assert_close(out_a, out_ref, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(a * grad_a, grad_ref, rtol=1e-10, atol=1e-12)
        out_a, grad_a = _output_and_grad(kind, a * w, 1e-14, u, r)
        out, grad = _output_and_grad(kind, w, 1e-14, u, r)
        torch.testing.assert_close(out_a, out, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(a * grad_a, grad, rtol=1e-8, atol=1e-10)
        assert (grad_a.norm() * a / grad.norm()).item() == pytest.approx(1, abs=1e-9)
    # Without a norm there is no such law.
    lin_a, lin = nn.Linear(20, 8, bias=False).double(), nn.Linear(20, 8, bias=False).double()
    with torch.no_grad():
        lin_a.weight.copy_(2 * w)
        lin.weight.copy_(w)
    g_a = torch.autograd.grad((torch.sigmoid(lin_a(u)) * r).sum(), lin_a.weight)[0]
    g = torch.autograd.grad((torch.sigmoid(lin(u)) * r).sum(), lin.weight)[0]
    assert not torch.allclose(2 * g_a, g, rtol=1e-3)


def test_the_law_on_an_mlp_holds_for_the_layers_before_a_norm_only():
    torch.manual_seed(0)
    model = MLP((1, 6, 6), 4, norms.factory("builtin"), hidden=(16, 16), init_std=1.0)
    x, y = torch.randn(40, 1, 6, 6), torch.randint(0, 4, (40,))
    before = copy.deepcopy(model.state_dict())
    rows = rescaling_rows(model, x, y, F.cross_entropy, SCALES)
    layers = ("hidden.0.linear", "hidden.1.linear", "out")
    assert [r["layer"] for r in rows] == [n for n in layers for _ in SCALES]
    for row in rows:
        if row["layer"] == "out":
            assert row["norm"] == ""
            assert abs(row["ratio"] - 1) > 1e-2
        else:
            assert row["norm"].endswith("(builtin)")
            assert row["ratio_eps"] == pytest.approx(1, abs=1e-4)  # float32 rounding
            assert row["ratio"] == pytest.approx(1, abs=1e-2)  # eps's share
            assert row["cosine"] == pytest.approx(1, abs=1e-4)
            assert row["loss_change"] < 1e-3 and row["output_change"] < 1e-2
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # model untouched
    assert normalized_layers(MLP((1, 6, 6), 4, norms.factory("none"), hidden=(16,)), x) == {}


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_scale_reports_the_step_the_optimizer_takes(momentum):
    torch.manual_seed(0)
    model = MLP((1, 6, 6), 4, norms.factory("builtin"), hidden=(16, 16), init_std=0.3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum, weight_decay=1e-3)
    x, y = torch.randn(40, 1, 6, 6), torch.randint(0, 4, (40,))
    for _ in range(2):  # momentum buffers that are not zero
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    ctx = MeasureContext(step=3, model=model, batch=(x, y), loss_fn=F.cross_entropy, optimizer=optimizer,
                         data=None, device=torch.device("cpu"))  # fmt: skip
    with isolated(model, optimizer, ctx.device):
        rows = {r["layer"]: r for r in Scale().measure(ctx)}
    # The run's own step, taken afterwards: the measurement saw the same update.
    weights = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    grads = {n: m.weight.grad.clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    optimizer.step()
    assert list(rows) == ["hidden.0.linear", "hidden.1.linear", "out"]
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        row, w, g = rows[name], weights[name], grads[name]
        assert row["weight_norm"] == pytest.approx(w.norm().item(), rel=1e-6)
        assert row["grad_norm"] == pytest.approx(g.norm().item(), rel=1e-5)
        assert row["update_norm"] == pytest.approx((module.weight - w).norm().item(), rel=1e-5)
        assert row["effective_step"] == pytest.approx(row["update_norm"] / row["weight_norm"])
        cos = (w * g).sum().item() / (w.norm() * g.norm()).item()
        assert row["cos_weight_grad"] == pytest.approx(cos, abs=1e-5)
        if name != "out":  # a layer before BN: its gradient is orthogonal to it (up to eps)
            assert abs(row["cos_weight_grad"]) < 1e-3
    assert abs(rows["out"]["cos_weight_grad"]) > 1e-2


# ------------------------------------------------------------------------------------------ Jacobians


def _mlp(kind: str, width: int, activation: str, hidden=2) -> MLP:
    return MLP((width,), 3, norms.factory(kind), hidden=[width] * hidden, activation=activation)


def _set_weights(model: MLP, w: torch.Tensor) -> None:
    with torch.no_grad():
        for layer in model.hidden:
            layer.linear.weight.copy_(w)
            if layer.linear.bias is not None:
                layer.linear.bias.zero_()


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_an_identity_layer_has_singular_values_1_and_a_scaled_one_c(mode):
    torch.manual_seed(0)
    x = torch.randn(20, 6)
    model = _mlp("none", 6, "identity")
    _set_weights(model, torch.eye(6))
    for values in singular_values(model, x, mode).values():
        assert values.shape == (20, 6)
        torch.testing.assert_close(values, torch.ones(20, 6))
    q, _ = torch.linalg.qr(torch.randn(6, 6))
    _set_weights(model, 2.5 * q)  # a scaled rotation: every singular value 2.5
    values = singular_values(model, x, mode)
    torch.testing.assert_close(values["hidden2"], torch.full((20, 6), 2.5))
    row = summarize(values["hidden1"])
    assert all(row[k] == pytest.approx(2.5, rel=1e-5) for k in ("min", "p10", "p50", "p90", "max", "mean"))


def test_bn_layer_jacobian_with_the_statistics_held_fixed():
    """W = cI, identity nonlinearity, gamma 1, beta 0: dz/du = diag(c / sqrt(c^2 Var_B[u] + eps)) with
    the probe set's batch variance (mode=train), diag(c / sqrt(running_var + eps)) in eval mode."""
    torch.manual_seed(0)
    x = 3 * torch.randn(50, 6) + 1
    for c in (0.5, 4.0):
        model = _mlp("builtin", 6, "identity", hidden=1)
        _set_weights(model, c * torch.eye(6))
        eps = model.hidden[0].norm.eps
        expected = (c / torch.sqrt(c**2 * x.var(0, unbiased=False) + eps)).sort(descending=True).values
        torch.testing.assert_close(singular_values(model, x, "train")["hidden1"], expected.expand(50, 6))
        with torch.no_grad():
            model.hidden[0].norm.running_var.copy_(torch.arange(1.0, 7.0))
        expected = (c / torch.sqrt(torch.arange(1.0, 7.0) + eps)).sort(descending=True).values
        torch.testing.assert_close(singular_values(model, x, "eval")["hidden1"], expected.expand(50, 6))


@pytest.mark.parametrize("kind", ["none", "builtin", "custom", "layernorm"])
def test_the_per_example_jacobians_are_those_of_autograd(kind):
    torch.manual_seed(0)
    model = MLP((1, 5, 5), 3, norms.factory(kind), hidden=(7, 4), init_std=0.5).eval()
    u = torch.randn(6, 25)
    layer = model.hidden[0]
    expected = torch.stack([
        torch.linalg.svdvals(torch.autograd.functional.jacobian(lambda v: layer(v[None])[0], ui)) for ui in u
    ])  # fmt: skip
    torch.testing.assert_close(per_example_singular_values(layer, u), expected, rtol=1e-4, atol=1e-6)
    # The activation's Jacobian is diag(g') times the pre-activation's: sigmoid' <= 1/4.
    act = singular_values(model, u.view(6, 1, 5, 5), "eval")
    pre = singular_values(model, u.view(6, 1, 5, 5), "eval", output="pre_activation")
    assert (act["hidden1"] <= pre["hidden1"] / 4 + 1e-6).all()


def test_the_jacobian_refuses_a_model_without_hidden_layers(tmp_path):
    config = compose_config([*SMOKE, "model=vgg", "model.width=0.125", "data.synthetic.shape=cifar",
                             "measure.jacobian.every=4"])  # fmt: skip
    with pytest.raises(ValueError, match="model.hidden"):
        train(config, tmp_path)


# ---------------------------------------------------------------------------------- on the seam


def test_both_measurements_run_in_training_and_change_nothing(tmp_path):
    on = ["measure.scale.every=4", "measure.jacobian.every=4", "measure.jacobian.num_examples=20"]
    summary = train(compose_config([*SMOKE, "norm=builtin", *on]), tmp_path / "measured")
    train(compose_config([*SMOKE, "norm=builtin"]), tmp_path / "plain")
    scale = read_measurement(tmp_path / "measured", "scale")
    assert sorted({r["step"] for r in scale}) == [4, 8, 12]  # before the step: not at step 0
    assert {r["layer"] for r in scale} == {"hidden.0.linear", "hidden.1.linear", "hidden.2.linear", "out"}
    jacobian = read_measurement(tmp_path / "measured", "jacobian")
    assert sorted({r["step"] for r in jacobian}) == [0, 4, 8, 12]
    assert [r["layer"] for r in jacobian if r["step"] == 0] == ["hidden1", "hidden2", "hidden3"]
    assert all(r["min"] <= r["p10"] <= r["p50"] <= r["p90"] <= r["max"] for r in jacobian)
    assert {"scale", "jacobian"} <= set(summary["measure_ms_per_call"])

    def metrics(run):
        return [{k: v for k, v in r.items() if k not in ("wall_time_s", "steps_per_s")}
                for r in read_csv(tmp_path / run / "metrics.csv")]  # fmt: skip

    assert metrics("measured") == metrics("plain")


def test_bad_options_are_refused(tmp_path):
    for override in ("measure.jacobian.mode=batch", "measure.jacobian.num_examples=0",
                     "measure.jacobian.output=z", "+measure.scale.p=2"):  # fmt: skip
        with pytest.raises(ConfigError):
            resolve_config(compose_config([*SMOKE, override]))


# -------------------------------------------------------------------------------------------- dropout


def test_dropout_0_leaves_the_mlp_as_it_was():
    torch.manual_seed(0)
    plain = MLP((1, 6, 6), 4, norms.factory("builtin"), hidden=(8, 8))
    torch.manual_seed(0)
    zero = MLP((1, 6, 6), 4, norms.factory("builtin"), hidden=(8, 8), dropout=0.0)
    assert not any(isinstance(m, nn.Dropout) for m in zero.modules())
    assert [n for n, _ in zero.named_modules()] == [n for n, _ in plain.named_modules()]
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in zero.state_dict().items())
    x = torch.randn(10, 1, 6, 6)
    rng = torch.get_rng_state()
    torch.testing.assert_close(zero.train()(x), plain.train()(x), rtol=0, atol=0)
    assert torch.equal(torch.get_rng_state(), rng)  # no draw at 0


def test_dropout_masks_after_each_hidden_nonlinearity():
    torch.manual_seed(0)
    model = MLP((1, 6, 6), 4, norms.factory("none"), hidden=(8, 8), dropout=0.5)
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 2
    x = torch.randn(10, 1, 6, 6)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    reference = MLP((1, 6, 6), 4, norms.factory("none"), hidden=(8, 8))
    reference.load_state_dict(model.state_dict())  # the same parameters: dropout holds none
    torch.testing.assert_close(model(x), reference.eval()(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"model.dropout=1.0"):
        MLP((1, 6, 6), 4, norms.factory("none"), dropout=1.0)


def test_dropout_is_a_declared_option_and_not_batched():
    config = resolve_config(compose_config([*SMOKE, "+model.dropout=0.2"]))
    assert config["model"]["dropout"] == 0.2
    assert "model.dropout=0.2" in unbatchable_reason(config)
    config = resolve_config(compose_config([*SMOKE, "+model.dropout=0.0"]))
    assert unbatchable_reason(config) is None
    for bad in ("1.0", "-0.1", "true"):
        with pytest.raises(ConfigError, match="model.dropout"):
            resolve_config(compose_config([*SMOKE, f"+model.dropout={bad}"]))


def test_the_presets_compose():
    scale = resolve_config(compose_config(["experiment=scale_jacobian_fig1"]))
    assert scale["measure"]["scale"]["every"] == scale["measure"]["jacobian"]["every"] == 500
    dropout = resolve_config(compose_config(["experiment=dropout_fig1", "model.dropout=0.5"]))
    assert dropout["model"]["dropout"] == 0.5 and dropout["trainer"]["max_steps"] == 50000


def test_train_eval_is_the_eval_mode_fit_to_the_training_set(tmp_path):
    """train_eval's rows are evaluate() on the training images in eval mode (dropout off): recomputed here
    from the final checkpoint's model, and training is unchanged by the measurement."""
    on = ["+model.dropout=0.5", "measure.train_eval.every=4", "measure.train_eval.num_examples=50"]
    train(compose_config([*SMOKE, "norm=builtin", *on]), tmp_path / "measured")
    train(compose_config([*SMOKE, "norm=builtin", "+model.dropout=0.5"]), tmp_path / "plain")
    rows = read_measurement(tmp_path / "measured", "train_eval")
    assert [r["step"] for r in rows] == [0, 4, 8, 12]
    assert all(0.0 <= r["train_acc"] <= 1.0 and r["train_loss"] > 0 for r in rows)

    def metrics(run):
        return [{k: v for k, v in r.items() if k not in ("wall_time_s", "steps_per_s")}
                for r in read_csv(tmp_path / run / "metrics.csv")]  # fmt: skip

    assert metrics("measured") == metrics("plain")


def test_evaluate_on_the_training_split_reads_the_training_images():
    from bn_repro.data.dataset import DeviceDataset  # noqa: F401 - the type evaluate() reads
    from bn_repro.engine.evaluate import evaluate

    class Data:  # the two splits differ, so each result tells which split was read
        train_x = torch.zeros(30, 1, 2, 2, dtype=torch.uint8)
        train_y = torch.zeros(30, dtype=torch.long)
        test_x = torch.zeros(20, 1, 2, 2, dtype=torch.uint8)
        test_y = torch.ones(20, dtype=torch.long)

        @staticmethod
        def normalize(x):
            return x.float()

    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([1.0, 0.0]))  # always class 0
    assert evaluate(model, Data, 7, split="train")[1] == 1.0
    assert evaluate(model, Data, 7)[1] == 0.0
    assert evaluate(model, Data, 7, limit=10, split="train")[1] == 1.0
    assert evaluate(model, Data, 7, limit=10, split="train")[0] == pytest.approx(
        F.cross_entropy(torch.tensor([[1.0, 0.0]]), torch.tensor([0])).item()
    )


def test_train_eval_refuses_a_bad_count(tmp_path):
    with pytest.raises(ConfigError):
        resolve_config(compose_config([*SMOKE, "measure.train_eval.num_examples=0"]))
