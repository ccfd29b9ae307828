"""The norm registry: entries, options, labels, DDP rules and Algorithm 2 asked of it, and the two
registry-only norms (layernorm, groupnorm) against torch's layers."""

from __future__ import annotations

import pytest
import torch
from conftest import SMOKE, compose_config
from torch import nn

from bn_repro import norms
from bn_repro.config import ConfigError
from bn_repro.models import build_model
from bn_repro.norms import registry
from bn_repro.norms.batchnorm import BatchNorm
from bn_repro.train import train


@pytest.fixture
def scratch_entry():
    """Registers entries for one test and removes them afterwards."""
    before = dict(registry._REGISTRY)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(before)


def test_the_registered_norms_and_their_configs():
    assert {"none", "builtin", "custom", "layernorm", "groupnorm"} <= set(norms.names())
    from conftest import CONFIG_DIR

    for name in norms.names():
        assert (CONFIG_DIR / "norm" / f"{name}.yaml").exists(), f"configs/norm/{name}.yaml"
        config = compose_config([f"norm={name}"])
        norms.check_config(config.norm)  # every yaml holds only options its entry takes


@pytest.mark.parametrize(
    ("kind", "options", "dim", "expected"),
    [
        ("none", {}, 2, nn.Identity),
        ("builtin", {}, 2, nn.BatchNorm1d),
        ("builtin", {}, 3, nn.BatchNorm1d),
        ("builtin", {}, 4, nn.BatchNorm2d),
        ("builtin", {}, 5, nn.BatchNorm3d),
        ("custom", {"backward": "explicit"}, 4, BatchNorm),
        ("layernorm", {}, 2, nn.LayerNorm),
        ("layernorm", {}, 4, nn.GroupNorm),
        ("groupnorm", {"groups": 4}, 4, nn.GroupNorm),
    ],
)
def test_build_gives_the_layer_for_the_input_rank(kind, options, dim, expected):
    layer = norms.build(kind, 8, dim, **options)
    assert type(layer) is expected
    assert norms.kind_of(layer) == kind


def test_unknown_kind_and_option_name_the_choices():
    with pytest.raises(norms.NormConfigError, match="norm.kind='nope': valid choices: .*builtin"):
        norms.build("nope", 4, 2)
    with pytest.raises(norms.NormConfigError, match=r"no option 'groups'; its options: eps, momentum"):
        norms.build("builtin", 4, 2, groups=2)
    with pytest.raises(norms.NormConfigError, match="norm.backward='fancy': valid choices: autograd, expl"):
        norms.factory({"kind": "custom", "backward": "fancy"})


def test_config_errors_come_before_any_data(tmp_path):
    # MNIST in a missing folder: any error other than the config's would be the missing data.
    for overrides, message in (
        (["norm=builtin", "+norm.groups=3"], "no option 'groups'"),
        (["norm=custom", "norm.backward=fancy"], "valid choices: autograd, explicit"),
        (["norm=custom", "norm.impl=turbo"], "valid choices: fast, reference"),
        (["norm=groupnorm", "norm.groups=0"], "norm.groups=0: expected an integer >= 1"),
        (["norm=groupnorm"], "norm.groups=32: does not divide a layer's 100 channels"),  # checked on meta
    ):
        config = compose_config([*SMOKE, "data.name=mnist", "data.root=/nonexistent", *overrides])
        with pytest.raises(ConfigError, match=message):
            train(config, tmp_path / "run")


def test_labels_come_from_the_registry():
    assert norms.label({"kind": "none"}) == "no BN"
    assert norms.label({"kind": "builtin", "eps": 1e-5}) == "BN (builtin)"
    assert norms.label({"kind": "custom", "backward": "explicit"}) == "BN (custom, explicit)"
    assert norms.label({"kind": "custom"}) == "BN (custom, autograd)"  # the entry's default
    assert norms.label({"kind": "groupnorm", "groups": 8}) == "GroupNorm (8 groups)"
    assert norms.label({"kind": "retired_norm"}) == "BN (retired_norm)"  # runs of an unregistered kind


def test_a_new_norm_is_one_registration(scratch_entry, tmp_path):
    seen = []

    @norms.register_norm("scaled_bn", label="BN x{scale}", synchronizes=False, population_stats=True)
    def scaled_bn(num_features: int, dim: int, *, scale: float = 2.0, eps: float = 1e-5) -> nn.Module:
        seen.append((num_features, dim))
        return nn.BatchNorm1d(num_features, eps=eps)

    assert "scaled_bn" in norms.names()
    factory = norms.factory({"kind": "scaled_bn", "scale": 3.0})
    model = build_model({"name": "mlp", "hidden": [7, 5]}, factory, (1, 4, 4), 3)
    assert seen == [(7, 2), (5, 2)]
    assert model.hidden[0].linear.bias is None  # a norm replaces the bias (not the identity entry)
    assert norms.label({"kind": "scaled_bn", "scale": 3.0}) == "BN x3.0"
    assert len(norms.batch_norm_layers(model)) == 2


def test_builders_must_take_num_features_and_dim(scratch_entry):
    with pytest.raises(TypeError, match="num_features, dim"):

        @norms.register_norm("bad", label="bad", synchronizes=False, population_stats=False)
        def bad(channels: int) -> nn.Module:
            return nn.Identity()


def test_population_statistics_apply_where_the_registry_says():
    for kind, applies in (("builtin", True), ("custom", True), ("layernorm", False), ("groupnorm", False)):
        layer = norms.build(kind, 8, 4, **({"groups": 2} if kind == "groupnorm" else {}))
        assert bool(norms.batch_norm_layers(nn.Sequential(layer))) is applies, kind
    # A layer the registry did not build: torch's BN keeps running statistics, so it counts.
    assert norms.batch_norm_layers(nn.Sequential(nn.BatchNorm2d(3)))


def test_synchronize_follows_each_entry_rule(scratch_entry):
    converted = []

    def convert(layer, device):
        converted.append(device)
        return nn.BatchNorm1d(layer.num_features)

    @norms.register_norm("convertible", label="c", synchronizes=convert, population_stats=True)
    def convertible(num_features: int, dim: int) -> nn.Module:
        return nn.BatchNorm1d(num_features)

    model = nn.Sequential(norms.build("convertible", 4, 2), norms.build("layernorm", 4, 2), nn.BatchNorm1d(4))
    original = model[0]
    norms.synchronize(model, torch.device("cpu"))
    assert converted == [torch.device("cpu")]
    assert model[0] is not original and norms.kind_of(model[0]) == "convertible"
    assert isinstance(model[1], nn.LayerNorm)  # synchronizes=False: left as it is


def test_builtin_on_cpu_warns_that_it_cannot_synchronize():
    model = nn.Sequential(norms.build("builtin", 4, 2))
    with pytest.warns(UserWarning, match="SyncBatchNorm needs CUDA"):
        norms.synchronize(model, torch.device("cpu"))
    assert isinstance(model[0], nn.BatchNorm1d)


@pytest.mark.parametrize("shape", [(6, 12), (4, 12, 5), (3, 12, 4, 4), (2, 12, 2, 3, 2)])
@pytest.mark.parametrize("kind", ["layernorm", "groupnorm"])
def test_layernorm_and_groupnorm_match_torch(kind, shape):
    torch.manual_seed(0)
    ours = norms.build(kind, shape[1], len(shape), **({"groups": 3} if kind == "groupnorm" else {}))
    if kind == "layernorm" and len(shape) == 2:
        reference = nn.LayerNorm(shape[1])
    else:
        reference = nn.GroupNorm(1 if kind == "layernorm" else 3, shape[1])
    with torch.no_grad():
        for p_ours, p_ref in zip(ours.parameters(), reference.parameters(), strict=True):
            p_ours.normal_()
            p_ref.copy_(p_ours)
    x = (torch.randn(shape) * 3 + 1).requires_grad_()
    grad = torch.randn(shape)
    y_ours, y_ref = ours(x), reference(x)
    torch.testing.assert_close(y_ours, y_ref)
    for a, b in zip(
        torch.autograd.grad(y_ours, [x, *ours.parameters()], grad),
        torch.autograd.grad(y_ref, [x, *reference.parameters()], grad),
        strict=True,
    ):
        torch.testing.assert_close(a, b)
    # LayerNorm over (C, ...): every example standardised over all of its features.
    if kind == "layernorm":
        plain = norms.build(kind, shape[1], len(shape))
        flat = plain(x.detach()).flatten(1)
        torch.testing.assert_close(flat.mean(1), torch.zeros(shape[0]), atol=1e-5, rtol=0)
        torch.testing.assert_close(flat.var(1, unbiased=False), torch.ones(shape[0]), atol=1e-3, rtol=0)


def test_groupnorm_refuses_groups_that_do_not_divide():
    with pytest.raises(norms.NormConfigError, match="norm.groups=32: does not divide a layer's 100 channels"):
        norms.build("groupnorm", 100, 2, groups=32)


@pytest.mark.parametrize(
    "overrides", [["norm=layernorm"], ["norm=groupnorm", "norm.groups=10"]], ids=["layernorm", "groupnorm"]
)
def test_registry_norms_train_the_fig1_mlp(overrides, tmp_path):
    summary = train(compose_config([*SMOKE, *overrides]), tmp_path / "run")
    assert summary["status"] == "finished"
    assert "final_test_acc_population_stats" not in summary  # Algorithm 2 does not apply
