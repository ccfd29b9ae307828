"""K Fig. 1 MLPs as one batched model, and their SGD as one stacked optimizer.

    model = BatchedMLP(members, [m_config["norm"] for each member])   # members: K bn_repro.models.MLP
    optimizer = StackedSGD(model, config["optim"], member_optimizers)
    losses, logits = batched_train_step(model, optimizer, x, y, lrs)   # x: (K, B, ...), y: (K, B)
    model.scatter(); optimizer.scatter()                      # back into each member's own model

Every tensor of the batched model is its members' tensors stacked, each in the member's own layout:
member k is `tensor.view(K', *member_shape)[k]` for the K' members that hold it. Activations are laid
out (K, features, B), so every layer is one batched matmul W_k h_k with the weight (K, out, in) as the
members hold it, and its weight gradient g_k x_k^T comes out in that layout too. (Laid out (K, B, in)
with the weights transposed, as this model was first written, the first layer's weight gradient
x^T g, inner dimension 60, ran at under half the speed of g x^T: results/bench_sweep_cpu.md.)

Members may differ in their norm: they come in segments of consecutive members with one norm config
(the launcher orders them so), and a hidden layer normalises each segment's members as one norm of
K'*C channels, (K', C, B) -> (1, K'*C, B): a BatchNorm of a (N, C, L) input pools N and L, so each
member keeps its own batch statistics and running statistics. A segment without a norm adds its
members' biases instead (z = g(Wu + b)). The loss is the sum of the members' mean losses, so each
member's gradient is its single-run gradient; SGD (momentum, weight decay, nesterov) is elementwise,
so the stacked update is each member's update, with a per-member learning rate where they differ.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.sgd import sgd

from bn_repro import norms
from bn_repro.batched.explicit import ExplicitStep
from bn_repro.models.mlp import MLP


def segments_of(norm_configs: Sequence[Mapping[str, Any]]) -> list[tuple[int, int]]:
    """[start, stop) of each run of consecutive members with the same norm config."""
    keys = [json.dumps(c, sort_keys=True, default=str) for c in norm_configs]
    bounds = [0, *[k for k in range(1, len(keys)) if keys[k] != keys[k - 1]], len(keys)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


class _Slot:
    """One batched tensor and the member tensors it holds: members start..start+len(members)-1."""

    def __init__(self, batched: Tensor, members: Sequence[Tensor], start: int):
        self.batched, self.members, self.start = batched, list(members), start

    def view(self, tensor: Tensor | None = None) -> Tensor:
        """(K', *member shape) view of the batched tensor (or of `tensor`, laid out as it: a momentum
        buffer); a tensor shared by the members (a BN batch count) as is."""
        tensor = self.batched if tensor is None else tensor
        return tensor if tensor.dim() == 0 else tensor.view(len(self.members), *self.members[0].shape)


class _Segment(nn.Module):
    """Members start..stop of one hidden layer: their biases (no norm) or their norm of K'*C channels."""

    def __init__(self, members: Sequence[nn.Module], start: int, norm_cfg: Mapping[str, Any]):
        super().__init__()
        self.start, self.stop = start, start + len(members)
        linear = members[0].linear
        self.bias = (
            nn.Parameter(torch.stack([m.linear.bias.detach() for m in members])) if linear.bias is not None
            else None
        )  # fmt: skip
        norm = norms.factory(norm_cfg)(len(members) * linear.out_features, 2)
        self.norm = None if isinstance(norm, nn.Identity) else norm

    def forward(self, h: Tensor) -> Tensor:
        if self.bias is not None:
            h = h + self.bias.unsqueeze(2)
        if self.norm is not None:
            k, c, b = h.shape
            h = self.norm(h.reshape(1, k * c, b)).view(k, c, b)
        return h

    def slots(self, members: Sequence[nn.Module]) -> list[_Slot]:
        mine = members[self.start : self.stop]
        out = [] if self.bias is None else [_Slot(self.bias, [m.linear.bias for m in mine], self.start)]
        if self.norm is not None:
            for name, tensor in self.norm.state_dict(keep_vars=True).items():
                out.append(_Slot(tensor, [m.norm.state_dict(keep_vars=True)[name] for m in mine], self.start))
        return out


class BatchedHidden(nn.Module):
    """K hidden layers z = g(norm(Wu)) on (K, in, B): one batched matmul, then each norm segment."""

    def __init__(self, members: Sequence[nn.Module], bounds: Sequence[tuple[int, int]], norm_cfgs):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([m.linear.weight.detach() for m in members]))  # (K, out, in)
        self.segments = nn.ModuleList(
            _Segment(members[start:stop], start, norm_cfgs[start]) for start, stop in bounds
        )
        self.act = copy.deepcopy(members[0].act)  # elementwise and stateless (sigmoid, relu)

    def forward(self, h: Tensor) -> Tensor:
        if h.dim() == 2:  # (in, B), one input for every member (an evaluation): one matmul for all
            k, out, inputs = self.weight.shape
            h = (self.weight.view(k * out, inputs) @ h).view(k, out, -1)
        elif len(self.segments) == 1 and self.segments[0].norm is None and self.segments[0].bias is not None:
            # No norm anywhere: the bias inside the matmul, as nn.Linear's addmm.
            return self.act(torch.baddbmm(self.segments[0].bias.unsqueeze(2), self.weight, h))
        else:
            h = torch.bmm(self.weight, h)
        parts = [segment(h[segment.start : segment.stop]) for segment in self.segments]
        return self.act(parts[0] if len(parts) == 1 else torch.cat(parts))

    def slots(self, members: Sequence[nn.Module]) -> list[_Slot]:
        out = [_Slot(self.weight, [m.linear.weight for m in members], 0)]
        for segment in self.segments:
            out += segment.slots(members)
        return out


class BatchedOutput(nn.Module):
    """K output layers on (K, in, B) -> logits (K, classes, B)."""

    def __init__(self, members: Sequence[nn.Linear]):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in members]))
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in members]))

    def forward(self, h: Tensor) -> Tensor:
        return torch.baddbmm(self.bias.unsqueeze(2), self.weight, h)

    def slots(self, members: Sequence[nn.Linear]) -> list[_Slot]:
        return [
            _Slot(self.weight, [m.weight for m in members], 0),
            _Slot(self.bias, [m.bias for m in members], 0),
        ]


class BatchedMLP(nn.Module):
    """K bn_repro.models.MLP of one architecture as one model; `gather`/`scatter` move their state.

    `norm_cfgs`: each member's norm config (a NormFactory's config or kind), consecutive equal ones
    forming one segment; one config for all members may be given alone."""

    def __init__(self, members: Sequence[MLP], norm_cfgs: Sequence[Mapping[str, Any] | str] | Mapping | str):
        super().__init__()
        self.k = len(members)
        if isinstance(norm_cfgs, Mapping | str):
            norm_cfgs = [norm_cfgs] * self.k
        self.bounds = segments_of(norm_cfgs)
        self.hidden = nn.ModuleList(
            BatchedHidden([m.hidden[i] for m in members], self.bounds, norm_cfgs)
            for i in range(len(members[0].hidden))
        )
        self.out = BatchedOutput([m.out for m in members])
        self.slots = [
            s for i, layer in enumerate(self.hidden) for s in layer.slots([m.hidden[i] for m in members])
        ]
        self.slots += self.out.slots([m.out for m in members])
        # Every tensor of the batched model is one slot, and every member tensor is in exactly one.
        held = [id(t) for slot in self.slots for t in slot.members]
        wanted = {id(t) for m in members for t in m.state_dict(keep_vars=True).values()}
        if {id(s.batched) for s in self.slots} != {id(t) for t in self.state_dict(keep_vars=True).values()}:
            raise ValueError("the batched model's tensors are not all held by its slots")
        if len(held) != len(set(held)) or set(held) != wanted:
            raise ValueError("members do not have the batched model's tensors")
        self.gather()

    def forward(self, x: Tensor, shared: bool = False) -> Tensor:
        """(K, B, ...) inputs -> (K, classes, B) logits; `shared`: one (B, ...) input for all members."""
        # (K, in, B) or, shared, (in, B): a view, which the first matmul reads as is
        h = x.flatten(1).t() if shared else x.flatten(2).transpose(1, 2)
        for layer in self.hidden:
            h = layer(h)
        return self.out(h)

    @torch.no_grad()
    def gather(self) -> None:
        """Members' parameters and buffers -> the batched model."""
        for slot in self.slots:
            if slot.batched.dim() == 0:  # shared, e.g. num_batches_tracked
                if any(not torch.equal(m, slot.members[0]) for m in slot.members):
                    raise ValueError(
                        "members differ in a tensor the batched model shares (num_batches_tracked)"
                    )
                slot.batched.copy_(slot.members[0])
            else:
                slot.view().copy_(torch.stack(slot.members))

    @torch.no_grad()
    def scatter(self) -> None:
        """The batched model -> each member's own parameters and buffers."""
        for slot in self.slots:
            view = slot.view()
            for k, member in enumerate(slot.members):
                member.copy_(view if view is slot.batched else view[k])


class StackedSGD:
    """torch.optim.SGD over the batched parameters (the same per-tensor formula as torch's CPU path),
    with a learning rate per member; its momentum buffers move to and from the members' optimizers."""

    def __init__(
        self,
        model: BatchedMLP,
        optim_cfg: Mapping[str, Any],
        member_optimizers: Sequence[torch.optim.Optimizer],
    ):
        if optim_cfg["name"] != "sgd":
            raise ValueError(f"batched members support optim.name=sgd, not {optim_cfg['name']!r}")
        self.model = model
        self.momentum = optim_cfg["momentum"]
        self.nesterov = optim_cfg["nesterov"]
        self.weight_decay = optim_cfg["weight_decay"]
        self.optimizers = list(member_optimizers)
        self.slots = [s for s in model.slots if isinstance(s.batched, nn.Parameter)]
        self.params = [s.batched for s in self.slots]
        for k, optimizer in enumerate(self.optimizers):
            held = {id(p) for group in optimizer.param_groups for p in group["params"]}
            mine = {id(s.members[k - s.start]) for s in self.slots if s.start <= k < s.start + len(s.members)}
            if held != mine:
                raise ValueError(f"member {k}'s optimizer does not hold exactly its model's parameters")
        self.buffers: list[Tensor | None] = [None] * len(self.params)
        self._index = {id(p): i for i, p in enumerate(self.params)}
        self._folded: set[int] = set()  # the parameters whose gradient is in their buffer this step
        self._started: set[int] = set()  # those whose buffer this step starts (from their gradient)
        self.gather()

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def fold_gradient(self, param: Tensor, a: Tensor, b: Tensor, rows: slice | None = None) -> bool:
        """Momentum SGD's buffer update for `param` with its gradient a @ b (a batched matmul) inside it:
        one baddbmm, buf = momentum * buf + a @ b (weight decay then added), in place of a gradient written
        out and read back by the update (for the first layer of 10 Fig. 1 members, 3 MB each way a step);
        step() then applies the buffer. `rows`: the members (a slice of dim 0) whose gradient a @ b is,
        when each segment's matmul reads its own input; the calls of one step cover every row. False, and
        nothing done, without momentum or with nesterov (whose update needs the gradient itself): the
        caller sets param.grad. The matmul sums the gradient into the buffer, which rounds as torch's
        update up to a last bit a step."""
        i = self._index.get(id(param))
        if i is None or self.momentum == 0 or self.nesterov:
            return False
        whole = slice(None) if rows is None else rows
        if self.buffers[i] is None:  # the first step: the buffer starts as the gradient
            self.buffers[i] = torch.empty_like(param)
            self._started.add(i)
        buffer = self.buffers[i][whole]
        if i in self._started:
            torch.bmm(a, b, out=buffer)
        else:
            buffer.baddbmm_(a, b, beta=self.momentum)
        if self.weight_decay != 0:
            buffer.add_(param[whole], alpha=self.weight_decay)
        self._folded.add(i)
        return True

    @torch.no_grad()
    def step(self, lrs: Sequence[float]) -> None:
        """torch.optim.SGD's update. One learning rate for all members: torch's fused SGD kernel, one pass
        over each tensor (its CPU path runs momentum, weight decay and the update as three; the fused one
        rounds buf * momentum + grad once, a last-bit difference per step). Per-member rates: the same
        formula with foreach ops, the rate applied row by row. A parameter whose gradient was folded into
        its buffer this step (fold_gradient) takes only the update, param -= lr * buf."""
        folded, self._folded, self._started = self._folded, set(), set()
        rest = [i for i in range(len(self.params)) if i not in folded]
        self._sgd(rest, lrs)
        if folded:
            order = sorted(folded)
            self._apply(order, [self.buffers[i] for i in order], lrs)

    def _sgd(self, indices: list[int], lrs: Sequence[float]) -> None:
        """SGD of the parameters `indices` from their .grad."""
        if not indices:
            return
        params, buffers = [self.params[i] for i in indices], [self.buffers[i] for i in indices]
        grads = [p.grad for p in params]
        if all(lr == lrs[0] for lr in lrs):
            # Fills `buffers` on the first step (None: every buffer starts as its gradient).
            sgd(
                params, grads, buffers, fused=True, lr=lrs[0], momentum=self.momentum,
                weight_decay=self.weight_decay, dampening=0.0, nesterov=self.nesterov, maximize=False,
            )  # fmt: skip
        else:
            if self.weight_decay != 0:
                grads = torch._foreach_add(grads, params, alpha=self.weight_decay)
            if self.momentum != 0:
                if buffers[0] is None:  # the first step: every buffer starts as its gradient
                    buffers = [g.detach().clone() for g in grads]
                else:
                    torch._foreach_mul_(buffers, self.momentum)
                    torch._foreach_add_(buffers, grads)
                grads = torch._foreach_add(grads, buffers, alpha=self.momentum) if self.nesterov else buffers
            self._apply(indices, grads, lrs)
        for i, buffer in zip(indices, buffers, strict=True):
            self.buffers[i] = buffer

    def _apply(self, indices: list[int], updates: list[Tensor], lrs: Sequence[float]) -> None:
        """param -= lr * update for the parameters `indices`, the rate per member."""
        params = [self.params[i] for i in indices]
        if all(lr == lrs[0] for lr in lrs):
            torch._foreach_add_(params, updates, alpha=-lrs[0])
            return
        scale = torch.tensor(lrs, dtype=params[0].dtype, device=params[0].device)
        for i, param, update in zip(indices, params, updates, strict=True):
            slot, count = self.slots[i], len(self.slots[i].members)
            rows = param.view(count, -1)
            rows.addcmul_(
                update.view(count, -1), scale[slot.start : slot.start + count].unsqueeze(1), value=-1
            )

    def _member_buffers(self, slot: _Slot) -> list[Tensor | None]:
        optimizers = self.optimizers[slot.start : slot.start + len(slot.members)]
        return [
            opt.state.get(p, {}).get("momentum_buffer")
            for opt, p in zip(optimizers, slot.members, strict=True)
        ]

    @torch.no_grad()
    def gather(self) -> None:
        """The members' momentum buffers -> the stacked ones (none before the first step)."""
        for i, slot in enumerate(self.slots):
            found = self._member_buffers(slot)
            if all(b is None for b in found):
                self.buffers[i] = None
            elif any(b is None for b in found):
                raise ValueError("some members have momentum buffers and some not: they are not at one step")
            else:
                buffer = torch.empty_like(self.params[i])
                slot.view(buffer).copy_(torch.stack(found))
                self.buffers[i] = buffer

    @torch.no_grad()
    def scatter(self) -> None:
        """The stacked momentum buffers -> each member's optimizer state (what its checkpoint saves)."""
        for buf, slot in zip(self.buffers, self.slots, strict=True):
            if buf is None:
                continue
            optimizers = self.optimizers[slot.start : slot.start + len(slot.members)]
            for opt, p, row in zip(optimizers, slot.members, slot.view(buf), strict=True):
                opt.state[p]["momentum_buffer"] = row.clone()


def predictions(logits: Tensor) -> Tensor:
    """argmax over the classes of (K, classes, B) logits: (K, B). Classes last and contiguous first, as
    argmax over dim 1 of this layout takes a strided path 5x slower (73 vs 14 us for 10 members, batch 60);
    the same first index at a tie."""
    return logits.transpose(1, 2).contiguous().argmax(2)


@torch.no_grad()
def batched_evaluate(
    model: BatchedMLP, data: Any, batch_size: int, limit: int | None = None, probe_inputs: list | None = None
) -> list[tuple[float, float]]:
    """Each member's test loss and accuracy in eval mode, as bn_repro.engine.evaluate.evaluate gives them
    for the member alone (its first `limit` test images when given), from one forward of all members
    per test batch (the first layer one matmul of the K*out rows). `probe_inputs`: a list that receives,
    per hidden layer, the input of its nonlinearity on the first test batch, (K, C, B), each member's
    own (what the members' activation probes record: MeasureContext.probe_inputs)."""
    was_training = model.training
    model.eval()
    labels = data.test_y
    loss_sum = torch.zeros(model.k, device=labels.device, dtype=torch.float64)
    correct = torch.zeros(model.k, device=labels.device, dtype=torch.int64)
    n = len(labels) if limit is None else min(limit, len(labels))
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        y = labels[start:stop].expand(model.k, -1)
        hooks = []
        if start == 0 and probe_inputs is not None:
            record = lambda _module, inputs: probe_inputs.append(inputs[0])  # noqa: E731
            hooks = [layer.act.register_forward_pre_hook(record) for layer in model.hidden]
        try:
            logits = model(data.normalize(data.test_x[start:stop]), shared=True)  # (K, classes, B)
        finally:
            for hook in hooks:
                hook.remove()
        loss_sum += F.cross_entropy(logits.float(), y, reduction="none").sum(1)
        correct += (predictions(logits) == y).sum(1)
    model.train(was_training)
    return [(loss / n, hits / n) for loss, hits in zip(loss_sum.tolist(), correct.tolist(), strict=True)]


def member_losses(model: BatchedMLP, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Each member's mean loss (K,) and the logits (K, classes, B) of its batch."""
    logits = model(x)
    return F.cross_entropy(logits, y, reduction="none").mean(1), logits  # (K, classes, B) against (K, B)


def compiled_losses(model: BatchedMLP):
    """member_losses of `model` under torch.compile (trainer.compile=true): inductor fuses BN, the
    sigmoids and the loss, forward and backward, into a few kernels, 5.0-5.4 against 6.0-6.2 ms a step for
    10 Fig. 1 members on one core; the first step compiles (seconds; cached on disk after)."""
    return torch.compile(functools.partial(member_losses, model))


def batched_train_step(
    model: BatchedMLP,
    optimizer: StackedSGD,
    x: Tensor,
    y: Tensor,
    lrs: Sequence[float],
    losses_fn=None,
    streams: Sequence[int] | None = None,
) -> tuple[Tensor, Tensor]:
    """One step of every member; returns the detached per-member losses (K,) and logits (K, classes, B).
    `losses_fn`: member_losses of the model, its compiled_losses, or its explicit_losses (which fills the
    gradients without autograd: bn_repro/batched/explicit.py). `streams`: x holds distinct batches
    (D, B, ...) and member k reads x[streams[k]] (None: x is (K, B, ...))."""
    optimizer.zero_grad()
    if isinstance(losses_fn, ExplicitStep):
        losses, logits = losses_fn(x, y, streams)
    else:
        if streams is not None:
            x = x.index_select(0, torch.tensor(streams, device=x.device))
        losses, logits = losses_fn(x, y) if losses_fn is not None else member_losses(model, x, y)
    if losses.requires_grad:  # explicit_losses has filled the gradients itself
        losses.sum().backward()
    optimizer.step(lrs)
    return losses.detach(), logits.detach()
