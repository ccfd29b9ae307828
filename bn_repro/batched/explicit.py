"""The batched model's training step with its backward written out: no autograd graph.

    step = explicit_losses(model, optimizer)   # None where the model has a part it does not cover
    losses, logits = step(x, y)                # as member_losses, the gradients filled; then optimizer.step
    losses, logits = step(x, y, streams)       # x: (D, B, ...) distinct batches, member k's is x[streams[k]]

A step of K Fig. 1 MLPs is a few batched matmuls and, between them, elementwise passes over (K, C, B)
activations. Under autograd each op is a node (saved tensors, a backward function, an accumulated
gradient) and torch's BN kernel runs the (1, K*C, B) layout along its channels; here each layer is its
matmul written into its slice of one output buffer (no torch.cat of the segments), BN forward as a sum,
the centring in place, a sum of squares and one multiply-add, its backward as two, the nonlinearity in
place, and the gradients assigned to .grad, the weights' summed by their matmul straight into their
momentum buffers (StackedSGD.fold_gradient) where the optimizer allows. The first layer reads its input
as it comes, (K, B, in), and multiplies it by W^T, per norm segment, each segment reading its members'
rows of the batches (with `streams`, members that draw the same batch read one copy of it). The formulas
are torch's: BN's backward as native_batch_norm_backward's
(dx = (dy - mean(dy) - xc * sum(dy * xc) / (N var')) * gamma / std, with var' = var + eps), the loss's
through log_softmax's own backward, the sigmoid's and ReLU's through theirs; each member's gradient is
its single run's within float32 rounding (tests/test_batched.py).

Covers what BatchedMLP holds: hidden layers of sigmoid, ReLU or identity, each segment with a bias (no
norm) or a BatchNorm (built-in or bn_repro's custom one, either backward, in training mode, with gamma,
beta and running statistics, as the norm configs build them); anything else keeps the autograd step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bn_repro.norms.batchnorm import BatchNorm

__all__ = ["ExplicitStep", "explicit_losses", "unsupported_reason"]

_ACTIVATIONS = (nn.Sigmoid, nn.ReLU, nn.Identity)


def unsupported_reason(model: nn.Module) -> str | None:
    """Why `model` (a BatchedMLP) keeps the autograd step; None where the explicit one covers it."""
    if not len(model.hidden):
        return "no hidden layer"
    for layer in model.hidden:
        if not isinstance(layer.act, _ACTIVATIONS):
            return f"activation {type(layer.act).__name__}"
        for segment in layer.segments:
            norm = segment.norm
            if norm is not None and not isinstance(norm, nn.BatchNorm1d | BatchNorm):
                return f"norm {type(norm).__name__}"
            if norm is not None and getattr(norm, "process_group", None) is not None:
                return "synchronized BN"
            if norm is not None and (
                norm.weight is None or norm.bias is None or not norm.track_running_stats
            ):
                return "BN without gamma, beta or running statistics"
    if any(p.dtype != torch.float32 for p in model.parameters()):
        return "parameters not float32"
    return None


def explicit_losses(model: nn.Module, optimizer=None) -> ExplicitStep | None:
    """The step function of `model`, or None where unsupported_reason names what it does not cover.
    `optimizer`: the model's StackedSGD, which takes the weights' gradients into its momentum buffers
    (StackedSGD.fold_gradient) where it can; its step() must follow each call."""
    if unsupported_reason(model) is not None:
        return None
    return ExplicitStep(model, optimizer)


class ExplicitStep:
    """step(x, y) -> (losses (K,), logits (K, classes, B)), the gradients filled. x: (K, B, ...), or,
    with `streams`, (D, B, ...) distinct batches of which member k reads x[streams[k]] (members that
    draw the same batches, e.g. one seed under two norms: one gather and one input for them)."""

    def __init__(self, model: nn.Module, optimizer=None):
        self.model, self.optimizer = model, optimizer

    def __call__(self, x: Tensor, y: Tensor, streams: Sequence[int] | None = None) -> tuple[Tensor, Tensor]:
        return _step(self.model, x, y, self.optimizer, streams)


def _activate_(z: Tensor, act: nn.Module) -> None:
    if isinstance(act, nn.Sigmoid):
        z.sigmoid_()
    elif isinstance(act, nn.ReLU):
        z.relu_()


def _activation_backward(dz: Tensor, z: Tensor, act: nn.Module) -> Tensor:
    """The gradient before the nonlinearity from the one after it and its output, as autograd's."""
    if isinstance(act, nn.Sigmoid):
        return torch.ops.aten.sigmoid_backward(dz, z)
    if isinstance(act, nn.ReLU):
        return torch.ops.aten.threshold_backward(dz, z, 0)
    return dz


def _running_update(norm: nn.Module, mean: Tensor, var: Tensor, n: int) -> None:
    """torch's running statistics: num_batches_tracked + 1, then an exponential (momentum) or cumulative
    (momentum=None) average of the batch mean and the unbiased batch variance."""
    norm.num_batches_tracked.add_(1)
    factor = norm.momentum if norm.momentum is not None else 1.0 / float(norm.num_batches_tracked)
    with torch.no_grad():
        norm.running_mean.mul_(1 - factor).add_(mean.flatten(), alpha=factor)
        norm.running_var.mul_(1 - factor).add_(var.flatten(), alpha=factor * n / (n - 1))


def _norm_forward(segment, u: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    """BN of one segment's (K', C, B) pre-activations u, written into z; u becomes u - mean in place.
    Returns what the backward needs: 1 / sqrt(var + eps) and gamma times it, both (K', C, 1)."""
    norm = segment.norm
    k, c, n = u.shape
    # Two passes, the mean and then the centred sum of squares (torch.var_mean over the batch dim of
    # this layout takes 40x longer than a sum).
    mean = u.sum(2, keepdim=True).div_(n)
    u.sub_(mean)
    var = torch.linalg.vecdot(u, u, dim=2).unsqueeze(2).div_(n)
    inv_std = (var + norm.eps).rsqrt_()
    scale = inv_std * norm.weight.detach().view(k, c, 1)
    torch.addcmul(norm.bias.detach().view(k, c, 1), u, scale, out=z)
    _running_update(norm, mean, var, n)
    return inv_std, scale


def _norm_backward(segment, dy: Tensor, centred: Tensor, inv_std: Tensor, scale: Tensor) -> None:
    """native_batch_norm_backward in training mode, in place on dy (K', C, B); sets gamma's and beta's
    gradients."""
    norm = segment.norm
    n = dy.shape[2]
    dbeta = dy.sum(2, keepdim=True)
    dot = torch.linalg.vecdot(dy, centred, dim=2).unsqueeze(2)  # sum over the batch of dy * (u - mean)
    norm.weight.grad = (dot * inv_std).flatten()
    norm.bias.grad = dbeta.flatten()
    # dx = scale * (dy - dbeta / n - centred * dot * inv_std^2 / n)
    torch.addcmul(dbeta * (-scale / n), dy, scale, out=dy)
    dy.addcmul_(centred, dot * inv_std.square() * (-scale / n))


def _hidden_forward(layer, h: Tensor | None, first: list[Tensor] | None = None) -> tuple[Tensor, list]:
    """One hidden layer on h (K, in, B); the first layer on `first`, each segment's (K', B, in) input."""
    k, out, _ = layer.weight.shape
    batch = first[0].shape[1] if first is not None else h.shape[2]
    z = layer.weight.new_empty(k, out, batch)
    saved = []
    for i, segment in enumerate(layer.segments):
        rows = slice(segment.start, segment.stop)
        weight, zs = layer.weight[rows].detach(), z[rows]
        bias = None if segment.bias is None else segment.bias.detach().unsqueeze(2)
        if first is not None:
            # The input's own (K', B, in) layout times W^T: 10-15% faster than W times its transpose at
            # the first layer's shapes (MKL, batch 60, 784 inputs), then transposed into z's layout.
            pre = torch.bmm(first[i], weight.transpose(1, 2)).transpose(1, 2)
            u = zs if segment.norm is None else torch.empty_like(zs)
            if bias is None:
                u.copy_(pre)
            else:
                torch.add(pre, bias, out=u)
            if segment.norm is None:
                saved.append(None)
                continue
        elif segment.norm is None:
            if bias is None:
                torch.bmm(weight, h[rows], out=zs)
            else:
                torch.baddbmm(bias, weight, h[rows], out=zs)
            saved.append(None)
            continue
        else:
            u = torch.bmm(weight, h[rows])
            if bias is not None:
                u.add_(bias)
        saved.append((u, *_norm_forward(segment, u, zs)))
    _activate_(z, layer.act)
    return z, saved


def _weight_gradient(weight: Tensor, a: Tensor, b: Tensor, optimizer, rows: slice | None = None) -> None:
    """weight's gradient a @ b (of members `rows`, else all): folded into its momentum buffer where the
    optimizer can, else .grad."""
    if optimizer is not None and optimizer.fold_gradient(weight, a, b, rows):
        return
    if rows is None:
        weight.grad = torch.bmm(a, b)
        return
    if weight.grad is None:
        weight.grad = torch.empty_like(weight)
    torch.bmm(a, b, out=weight.grad[rows])


def _hidden_backward(
    layer, dz: Tensor, z: Tensor, h: Tensor | None, saved: list, optimizer, first: list[Tensor] | None = None
) -> Tensor | None:
    """The gradients of one hidden layer's parameters, and the gradient at its input h (K, in, B); of the
    first layer (`first`: each segment's (K', B, in) input, as _hidden_forward), no input gradient."""
    dy = _activation_backward(dz, z, layer.act)
    if dy is dz:
        dy = dz.clone()
    for segment, kept in zip(layer.segments, saved, strict=True):
        rows = dy[segment.start : segment.stop]
        if segment.norm is not None:
            _norm_backward(segment, rows, *kept)
        if segment.bias is not None:
            # With a norm after it the bias gets the gradient at the norm's input, as autograd gives it.
            segment.bias.grad = rows.sum(2)
    if first is not None:
        for segment, inputs in zip(layer.segments, first, strict=True):
            rows = slice(segment.start, segment.stop)
            _weight_gradient(layer.weight, dy[rows], inputs, optimizer, rows)
        return None
    _weight_gradient(layer.weight, dy, h.transpose(1, 2), optimizer)
    return torch.bmm(layer.weight.detach().transpose(1, 2), dy)


def _segment_inputs(model: nn.Module, x: Tensor, streams: Sequence[int] | None) -> list[Tensor]:
    """Each first-layer segment's (K', B, in) input: its members' rows of x (K, B, ...), or with `streams`
    the rows x[streams[k]] of x (D, B, ...): a view where they are consecutive rows in order."""
    flat = x.flatten(2)
    inputs = []
    for segment in model.hidden[0].segments:
        ids = range(segment.start, segment.stop) if streams is None else streams[segment.start : segment.stop]
        ids = list(ids)
        if ids == list(range(ids[0], ids[0] + len(ids))):
            inputs.append(flat[ids[0] : ids[0] + len(ids)])
        else:
            inputs.append(flat.index_select(0, torch.tensor(ids, device=flat.device)))
    return inputs


@torch.no_grad()
def _step(
    model: nn.Module, x: Tensor, y: Tensor, optimizer=None, streams: Sequence[int] | None = None
) -> tuple[Tensor, Tensor]:
    """Forward (keeping each layer's input, output and BN's centred input and scales), the loss, and the
    backward from the logits down; returns the members' losses (K,) and logits (K, classes, B)."""
    if not model.training:  # BN would normalise with its running statistics
        raise RuntimeError("the explicit step is a training step; the batched model is in eval mode")
    first = _segment_inputs(model, x, streams)
    h, inputs, outputs, saved = None, [], [], []
    for i, layer in enumerate(model.hidden):
        z, kept = _hidden_forward(layer, h, first if i == 0 else None)
        inputs.append(h)
        outputs.append(z)
        saved.append(kept)
        h = z
    out = model.out
    logits = torch.baddbmm(out.bias.detach().unsqueeze(2), out.weight.detach(), h)  # (K, classes, B)
    log_probs = torch.log_softmax(logits, 1)
    losses = F.nll_loss(log_probs, y, reduction="none").mean(1)
    # d(sum of the members' mean losses) / d logits, through nll_loss's and log_softmax's own backward
    n = y.shape[1]
    grad = torch.zeros_like(log_probs).scatter_(1, y.unsqueeze(1), -1.0 / n)
    dlogits = torch._log_softmax_backward_data(grad, log_probs, 1, log_probs.dtype)
    _weight_gradient(out.weight, dlogits, h.transpose(1, 2), optimizer)
    out.bias.grad = dlogits.sum(2)
    dz = torch.bmm(out.weight.detach().transpose(1, 2), dlogits)
    for i in reversed(range(len(model.hidden))):
        dz = _hidden_backward(
            model.hidden[i], dz, outputs[i], inputs[i], saved[i], optimizer, first if i == 0 else None
        )
    return losses, logits
