import pytest
import torch
import torch.nn.functional as F
from conftest import compose_config
from omegaconf import OmegaConf
from torch import nn

from bn_repro import norms
from bn_repro.measures.activations import ActivationProbe
from bn_repro.models import build_model
from bn_repro.models.inception import MODULES, Inception
from bn_repro.norm import BatchNorm

CIFAR, MNIST = (3, 32, 32), (1, 28, 28)


def _model_cfg(**changes) -> dict:
    """The model config of configs/model/inception.yaml, with `changes`."""
    cfg = OmegaConf.to_container(compose_config(["model=inception"]).model, resolve=True)
    return {**cfg, **changes}


def _build(norm: str = "builtin", shape=CIFAR, **changes) -> nn.Module:
    torch.manual_seed(0)
    return build_model(_model_cfg(**changes), norms.factory(norm), shape, 10)


@pytest.mark.parametrize("shape", [CIFAR, MNIST])
@pytest.mark.parametrize("norm", ["none", "builtin"])
def test_output_shape_follows_the_data(shape, norm):
    model = _build(norm, shape)
    assert model(torch.randn(3, *shape)).shape == (3, 10)
    assert model.stem.conv.conv.in_channels == shape[0]


def test_parameter_count_is_small_inception_sized():
    # The issue asks for a few hundred thousand to a few million parameters.
    count = sum(p.numel() for p in _build("builtin").parameters())
    assert 300_000 <= count <= 5_000_000


def _convs_and_norms(model):
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, BatchNorm))]
    return convs, norms


def test_without_bn_every_conv_has_a_bias_and_there_is_no_bn():
    convs, norms = _convs_and_norms(_build("none"))
    assert convs and all(c.bias is not None for c in convs)
    assert norms == []


@pytest.mark.parametrize(("norm", "bn_class"), [("builtin", nn.BatchNorm2d), ("custom", BatchNorm)])
def test_bn_follows_every_conv_and_replaces_its_bias(norm, bn_class):
    model = _build(norm)
    convs, norms = _convs_and_norms(model)
    assert all(c.bias is None for c in convs)
    assert len(norms) == len(convs) and all(isinstance(n, bn_class) for n in norms)
    for module in model.modules():
        if hasattr(module, "conv") and isinstance(module.conv, nn.Conv2d):  # every ConvNorm
            assert module.norm.num_features == module.conv.out_channels


def test_bn_and_no_bn_differ_only_by_bias_and_bn_parameters():
    with_bn = sum(p.numel() for p in _build("builtin").parameters())
    without = sum(p.numel() for p in _build("none").parameters())
    convs, norms = _convs_and_norms(_build("builtin"))
    # Each conv's bias (out_channels) becomes BN's beta, and BN adds gamma (out_channels).
    assert with_bn - without == sum(n.num_features for n in norms)


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_probe_points_are_the_hidden_nonlinearities_in_depth_order(activation):
    model = _build("builtin", activation=activation)
    points = model.probe_points()
    assert list(points) == ["stem", *MODULES]  # last hidden layer last
    expected = nn.ReLU if activation == "relu" else nn.Sigmoid
    assert all(isinstance(m, expected) for m in points.values())
    assert points["inc5b"] is model.blocks["inc5b"].act

    model.eval()
    probe = ActivationProbe(points, units=[0, 1])
    result = probe.measure(lambda: model(torch.randn(2, *CIFAR)))
    assert {r["layer"] for r in result.rows} == set(points)
    # The last module's act sees every output channel of that module (it has no pass-through branch).
    channels = model.blocks["inc5b"].out_channels
    assert result.layer_values["inc5b"].numel() == 2 * channels * 4 * 4  # 32 -> 16 (stem) -> 8 -> 4


def test_reduction_passes_activated_values_through_once():
    # The max-pool branch of a reduction module joins after the shared nonlinearity: a sigmoid
    # network must not squash those values a second time.
    model = _build("builtin", activation="sigmoid").eval()
    seen = {}
    model.blocks["inc3b"].register_forward_hook(lambda m, i, out: seen.update(inc3b=out))
    model.blocks["inc3c"].register_forward_hook(lambda m, i, out: seen.update(inc3c=out))
    model(torch.randn(2, *CIFAR))
    pooled = F.max_pool2d(seen["inc3b"], 3, stride=2, padding=1)
    assert torch.equal(seen["inc3c"][:, -pooled.shape[1] :], pooled)  # exact: a max selects, never rounds


def test_lrn_and_dropout_flags():
    plain = _build("none")
    assert not any(isinstance(m, nn.LocalResponseNorm) for m in plain.modules())
    assert plain.dropout.p == 0.0
    baseline = _build("none", lrn=True, dropout=0.4)
    assert sum(isinstance(m, nn.LocalResponseNorm) for m in baseline.modules()) == 1
    assert baseline.dropout.p == 0.4
    x = torch.randn(2, *CIFAR)
    baseline.eval()
    assert torch.equal(baseline(x), baseline(x))  # dropout is off in eval mode
    baseline.train()
    torch.manual_seed(1)
    first = baseline(x)
    torch.manual_seed(2)
    assert not torch.equal(first, baseline(x))


def test_width_scales_the_channels():
    narrow, full = _build("builtin", width=0.5), _build("builtin")
    assert narrow.out.in_features < full.out.in_features
    assert _build("builtin", MNIST, width=0.5)(torch.randn(2, *MNIST)).shape == (2, 10)


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"width": 0}, "model.width=0"), ({"dropout": 1.0}, "model.dropout=1.0"), ({"lrn": "yes"}, "model.lrn")],
)
def test_bad_options_name_the_value(changes, message):
    with pytest.raises(ValueError, match=message):
        Inception(CIFAR, 10, norms.factory("none"), **changes)


def test_relu_network_without_bn_keeps_activation_scale_at_init():
    # The init is chosen so a deep ReLU net without BN starts with activations of order one.
    model = _build("none").eval()
    probe = ActivationProbe(model.probe_points(), units=[0])
    result = probe.measure(lambda: model(torch.randn(64, *CIFAR)))
    stds = [result.layer_values[name].std().item() for name in model.probe_points()]
    assert all(0.1 < s < 10 for s in stds), stds
