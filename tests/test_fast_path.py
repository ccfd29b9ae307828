"""The training step's fast path (bn_repro/engine/fast_path.py): bf16 autocast, channels_last, compile."""

import copy
import math

import pytest
import torch
from conftest import NEEDS_INDUCTOR_CPU, SMOKE, compose_config
from torch import nn

from bn_repro import norms
from bn_repro.config import ConfigError
from bn_repro.data.augment import RandomCropFlip
from bn_repro.engine.fast_path import FastPath
from bn_repro.models.inception import Inception
from bn_repro.norm import BatchNorm
from bn_repro.records.run_files import read_csv
from bn_repro.train import train

CPU = torch.device("cpu")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
TRAINER = {"precision": "auto", "channels_last": "auto", "compile": False, "deterministic": True}
# The Fig. 2 network at a quarter width on generated CIFAR-shaped data.
INCEPTION_SMOKE = ["experiment=fig2_bn_x5", *SMOKE, "data.synthetic.shape=cifar", "model.width=0.25"]


def _conv_net():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())


def test_auto_is_the_plain_fp32_path_on_cpu():
    fast = FastPath.from_config(TRAINER, CPU, _conv_net())
    assert fast.describe() == {"precision": "fp32", "channels_last": False, "compile": False,
                               "cudnn_benchmark": False}  # fmt: skip
    with fast.autocast():
        assert _conv_net()(torch.randn(2, 3, 8, 8)).dtype == torch.float32


def test_explicit_settings_are_honoured_on_cpu():
    fast = FastPath.from_config({**TRAINER, "precision": "bf16", "channels_last": True}, CPU, _conv_net())
    assert fast.precision == "bf16" and fast.channels_last
    model = fast.prepare(_conv_net())
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = fast.input(torch.randn(2, 3, 8, 8))
    assert x.is_contiguous(memory_format=torch.channels_last)
    flat = torch.randn(2, 5)
    assert fast.input(flat) is flat
    with fast.autocast():
        out = model(x)
    assert out.dtype == torch.bfloat16 and model[1].running_mean.dtype == torch.float32


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.precision=fp16", "valid choices: auto, fp32, bf16"),
        ("trainer.channels_last=sometimes", "valid choices: true, false, auto"),
        ("trainer.compile=1", "trainer.compile=1: valid choices: true, false"),
        ("data.augment=yes", "data.augment='yes': valid choices: true, false"),
    ],
)
def test_bad_fast_path_values_fail_before_any_work(override, message, tmp_path, smoke_overrides):
    with pytest.raises(ConfigError, match=message):
        train(compose_config([*smoke_overrides, override]), tmp_path)
    assert not (tmp_path / "metrics.csv").exists()


def _losses(run_dir):
    return [float(r["train_loss"]) for r in read_csv(run_dir / "metrics.csv")[1:]]


def test_channels_last_computes_the_same_function_on_cpu():
    torch.manual_seed(0)
    model = Inception((3, 32, 32), 10, norms.factory("builtin"), width=0.25)
    nhwc = FastPath.from_config({**TRAINER, "channels_last": True}, CPU, model)
    twin = nhwc.prepare(copy.deepcopy(model))
    x = torch.randn(16, 3, 32, 32)
    # Different kernels round differently (a ReLU input near 0 may then change sign, so the gradients
    # of two layouts need not agree closely); the function itself agrees to float32 accuracy.
    torch.testing.assert_close(twin(nhwc.input(x)), model(x), rtol=1e-3, atol=1e-3)


def test_channels_last_run_on_cpu(tmp_path):
    summary = train(compose_config([*INCEPTION_SMOKE, "trainer.channels_last=true"]), tmp_path)
    assert summary["status"] == "finished" and summary["fast_path"]["channels_last"] is True
    assert all(math.isfinite(v) for v in _losses(tmp_path))


@pytest.mark.parametrize("norm", ["builtin", "custom"])
def test_bf16_autocast_on_cpu_trains(norm, tmp_path):
    summary = train(compose_config([*INCEPTION_SMOKE, f"norm={norm}", "trainer.precision=bf16"]), tmp_path)
    assert summary["status"] == "finished" and summary["fast_path"]["precision"] == "bf16"
    assert all(math.isfinite(v) for v in _losses(tmp_path))


@pytest.mark.parametrize("backward", ["autograd", "explicit"])
def test_custom_bn_computes_in_float32_under_bf16_autocast(backward):
    torch.manual_seed(0)
    bn = BatchNorm(16, backward=backward)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    # An offset larger than the spread: statistics computed in bf16 would lose most of the variance.
    x = (torch.randn(32, 16, 8, 8) * 0.5 + 20.0).to(torch.bfloat16).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = bn(x)
    assert y.dtype == torch.bfloat16
    assert bn.running_mean.dtype == torch.float32 and bn.running_var.dtype == torch.float32

    reference = x.detach().double()
    mean = reference.mean(dim=(0, 2, 3))
    var = reference.var(dim=(0, 2, 3), unbiased=False)
    x_hat = (reference - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + bn.eps)
    expected = x_hat * bn.weight.double().view(1, -1, 1, 1) + bn.bias.double().view(1, -1, 1, 1)
    # float32 arithmetic, one rounding to bf16 at the end: within a bf16 ulp of the exact result.
    assert (y.double() - expected).abs().max().item() <= 2**-7 * expected.abs().max().item()
    torch.testing.assert_close(bn.running_mean.double(), 0.1 * mean, rtol=1e-5, atol=1e-5)
    n = x.numel() // x.shape[1]
    torch.testing.assert_close(bn.running_var.double(), 0.9 + 0.1 * var * n / (n - 1), rtol=1e-5, atol=1e-5)
    y.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and bn.weight.grad.dtype == torch.float32


@NEEDS_INDUCTOR_CPU
@pytest.mark.slow
def test_compile_on_cpu_trains_like_eager(tmp_path, smoke_overrides):
    # The Fig. 1 MLP: the smallest graph, so the first compile stays short on a CPU.
    eager = train(compose_config([*smoke_overrides, "norm=builtin"]), tmp_path / "eager")
    overrides = [*smoke_overrides, "norm=builtin"]
    compiled = train(compose_config([*overrides, "trainer.compile=true"]), tmp_path / "compiled")
    assert compiled["status"] == "finished" and compiled["fast_path"]["compile"] is True
    assert eager["fast_path"]["compile"] is False
    assert _losses(tmp_path / "compiled") == pytest.approx(_losses(tmp_path / "eager"), rel=1e-4)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("norm", ["builtin", "custom"])
def test_gpu_fast_path_trains(norm, tmp_path):
    overrides = [*INCEPTION_SMOKE, f"norm={norm}", "trainer.device=cuda", "trainer.compile=true"]
    summary = train(compose_config(overrides), tmp_path)
    assert summary["status"] == "finished"
    expected = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    assert summary["fast_path"] == {"precision": expected, "channels_last": True, "compile": True,
                                    "cudnn_benchmark": True}  # fmt: skip
    assert all(math.isfinite(v) for v in _losses(tmp_path))


@pytest.mark.gpu
@needs_cuda
def test_gpu_augmentation_is_deterministic_and_per_image():
    x = torch.randint(1, 256, (64, 3, 32, 32), dtype=torch.uint8, device="cuda")
    first = RandomCropFlip(4, seed=0, device="cuda")(x)
    assert torch.equal(first, RandomCropFlip(4, seed=0, device="cuda")(x))
    flips_only = RandomCropFlip(0, seed=0, device="cuda")(x)
    same = (flips_only == x).flatten(1).all(1)
    mirrored = (flips_only == x.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and bool(mirrored.any()) and bool(same.any())
