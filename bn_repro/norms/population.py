"""Algorithm 2: inference with population statistics, recomputed from training batches.

`recompute_population_statistics` replaces the moving averages of every BN layer of a model by the
population statistics of Algorithm 2: E[x] = E_B[mu_B], Var[x] = m/(m-1) E_B[sigma_B^2].
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from bn_repro.norms import registry
from bn_repro.norms.batchnorm import batch_statistics

__all__ = ["batch_norm_layers", "recompute_population_statistics"]


def batch_norm_layers(model: nn.Module) -> list[nn.Module]:
    """The layers of `model` that Algorithm 2 applies to and that keep running statistics.

    A layer the norm registry built is one when its entry says `population_stats`; any other layer
    (a model not built from a config) is one when it keeps running_mean and running_var buffers, as
    torch's BatchNorm1d/2d/3d and SyncBatchNorm do.
    """
    layers = []
    for module in model.modules():
        kind = registry.kind_of(module)
        applies = registry.get(kind).population_stats if kind is not None else hasattr(module, "running_var")
        if applies and getattr(module, "running_mean", None) is not None:
            layers.append(module)
    return layers


def recompute_population_statistics(model: nn.Module, batches: Iterable, num_batches: int) -> nn.Module:
    """Set every BN layer's running statistics to the population statistics of Algorithm 2.

    Runs `num_batches` items of `batches` (input tensors, or tuples/lists whose first element is the
    input, already on the model's device) through `model` in training mode under no_grad. For each
    BN layer with running statistics (this module's BatchNorm and torch's BatchNorm1d/2d/3d and
    SyncBatchNorm) a forward pre-hook records the batch mean mu_B and the biased batch variance
    sigma_B^2 of the layer's input (in float32 for float16/bfloat16 inputs; an empty batch is
    skipped); afterwards

        running_mean = E_B[mu_B],   running_var = E_B[m/(m-1) sigma_B^2]   (m values per channel),

    which is m/(m-1) E_B[sigma_B^2] when every batch has the same size, and num_batches_tracked is
    the number of (non-empty) batches the layer saw. The statistics are those of the local process: under DDP
    each rank sees only its shard. Parameters, momentum and every module's training flag are left as
    they were. Raises ValueError when the model has no BN layer with running statistics, when
    num_batches < 1, or when `batches` runs out before num_batches (the model is then unchanged).
    Returns the model.
    """
    layers = batch_norm_layers(model)
    if not layers:
        raise ValueError("model has no BatchNorm layer with running statistics (track_running_stats=True)")
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
        raise ValueError(f"num_batches must be a positive int, got {num_batches!r}")

    sums = {layer: [0.0, 0.0, 0] for layer in layers}

    def record(layer: nn.Module, inputs: tuple) -> None:
        x = inputs[0]
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        mean, var, count = batch_statistics(x)
        if count < 2:
            # An empty batch (N = 0, e.g. a DDP rank's empty shard) has no statistics; a batch of
            # one value per channel makes the forward raise its own error right after this hook.
            return
        acc = sums[layer]
        acc[0] = acc[0] + mean.view(-1).double()
        acc[1] = acc[1] + var.view(-1).double() * (count / (count - 1))
        acc[2] += 1

    # The training-mode forwards also move the running averages; on failure they are put back.
    saved = {layer: [t.clone() for t in _layer_stats(layer)] for layer in layers}
    flags = {module: module.training for module in model.modules()}
    # Layers that add training noise (norm=noisy_bn) run without it: the statistics are those of the
    # network that inference runs, not of the noisy one that training ran.
    noisy = {m: m.noise_enabled for m in model.modules() if hasattr(m, "noise_enabled")}
    handles = [layer.register_forward_pre_hook(record) for layer in layers]
    try:
        model.train()
        for module in noisy:
            module.noise_enabled = False
        seen = 0
        with torch.no_grad():
            for batch in batches:
                model(batch[0] if isinstance(batch, (tuple, list)) else batch)
                seen += 1
                if seen == num_batches:
                    break
        if seen < num_batches:
            raise ValueError(f"batches ran out after {seen} of num_batches={num_batches} batches")
    except BaseException:
        _put_back(saved)
        raise
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in flags.items():
            module.training = flag
        for module, enabled in noisy.items():
            module.noise_enabled = enabled

    with torch.no_grad():
        for layer, (mean_sum, var_sum, forwards) in sums.items():
            if forwards == 0:
                warnings.warn(
                    f"{type(layer).__name__} layer saw no input; its running statistics are unchanged",
                    stacklevel=2,
                )
                _put_back({layer: saved[layer]})
                continue
            layer.running_mean.copy_(mean_sum / forwards)
            layer.running_var.copy_(var_sum / forwards)
            if layer.num_batches_tracked is not None:
                layer.num_batches_tracked.fill_(forwards)
    return model


def _put_back(saved: dict[nn.Module, list[Tensor]]) -> None:
    with torch.no_grad():
        for layer, stats in saved.items():
            for buffer, old in zip(_layer_stats(layer), stats, strict=True):
                buffer.copy_(old)


def _layer_stats(layer: nn.Module) -> list[Tensor]:
    return [t for t in (layer.running_mean, layer.running_var, layer.num_batches_tracked) if t is not None]
