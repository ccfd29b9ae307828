"""K Fig. 1 MLPs as one batched model, and their SGD as one stacked optimizer.

    model = BatchedMLP(members, norms.factory(config["norm"]))   # members: K bn_repro.models.MLP
    optimizer = StackedSGD(model, config["optim"], member_optimizers)
    losses, logits = batched_train_step(model, optimizer, x, y, lrs)   # x: (K, B, ...), y: (K, B)
    model.scatter(); optimizer.scatter()                      # back into each member's own model

Every tensor of the batched model is its members' tensors stacked, under the member's own state_dict
name: a linear weight (out, in) becomes (K, in, out), each member's transposed, and runs as one batched
matmul; a norm of C
channels becomes one norm of K*C channels over the members' activations laid side by side,
(K, B, C) -> (B, K*C), so each member keeps its own batch statistics and running statistics. Member k
is `tensor.view(K, *member_shape)[k]`. The loss is the sum of the members' mean losses, so each
member's gradient is its single-run gradient; SGD (momentum, weight decay, nesterov) is elementwise,
so the stacked update is each member's update, with a per-member learning rate where they differ.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bn_repro.models.mlp import MLP
from bn_repro.norms import NormFactory


class BatchedLinear(nn.Module):
    """K linear layers: (K, B, in) -> (K, B, out). The weight is held as (K, in, out), member k's weight
    transposed: the batched matmul reads it as is, and its gradient comes out in that layout (held as
    (K, out, in), autograd would copy every weight gradient into a contiguous tensor)."""

    def __init__(self, members: Sequence[nn.Linear]):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([m.weight.detach().t() for m in members]).contiguous())
        if members[0].bias is None:
            self.register_parameter("bias", None)
        else:
            self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in members]))

    def forward(self, x: Tensor) -> Tensor:
        if self.bias is None:
            return torch.bmm(x, self.weight)
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight)


class BatchedHidden(nn.Module):
    """K hidden layers g(BN(Wu)): one batched matmul, one norm over the K*C channels side by side."""

    def __init__(self, members: Sequence[nn.Module], norm_layer: NormFactory):
        super().__init__()
        self.linear = BatchedLinear([m.linear for m in members])
        width = members[0].linear.out_features
        self.norm = norm_layer(len(members) * width, 2)
        self.act = copy.deepcopy(members[0].act)  # elementwise and stateless (sigmoid, relu)

    def forward(self, x: Tensor) -> Tensor:
        h = self.linear(x)
        if not isinstance(self.norm, nn.Identity):
            k, b, c = h.shape
            h = self.norm(h.transpose(0, 1).reshape(b, k * c)).view(b, k, c).transpose(0, 1)
        return self.act(h)


class BatchedMLP(nn.Module):
    """K bn_repro.models.MLP of one architecture as one model; `gather`/`scatter` move their state."""

    def __init__(self, members: Sequence[MLP], norm_layer: NormFactory):
        super().__init__()
        self.k = len(members)
        self.hidden = nn.ModuleList(
            BatchedHidden([m.hidden[i] for m in members], norm_layer) for i in range(len(members[0].hidden))
        )
        self.out = BatchedLinear([m.out for m in members])
        mine = self.state_dict(keep_vars=True)
        theirs = [m.state_dict(keep_vars=True) for m in members]
        if any(set(t) != set(mine) for t in theirs):
            raise ValueError(f"members do not have the batched model's tensors: {sorted(mine)}")
        # (batched tensor, each member's tensor of the same name); views into it are member slices.
        self.pairs = [(mine[name], [t[name] for t in theirs]) for name in mine]
        self.names = list(mine)
        # The tensors held as (K, in, out), their members' transposed (BatchedLinear weights).
        self.transposed = {id(m.weight) for m in self.modules() if isinstance(m, BatchedLinear)}
        self.gather()

    def forward(self, x: Tensor) -> Tensor:
        h = x.flatten(2)
        for layer in self.hidden:
            h = layer(h)
        return self.out(h)

    def member_view(self, batched: Tensor, like: Tensor, layout_of: Tensor | None = None) -> Tensor:
        """The (K, *member shape) view of `batched` (laid out as the batched tensor `layout_of`, by default
        itself: a momentum buffer is laid out as its parameter); a tensor shared by all (a BN batch
        count) as is."""
        if batched.dim() == 0:
            return batched
        if id(batched if layout_of is None else layout_of) in self.transposed:
            return batched.transpose(1, 2)
        return batched.view(self.k, *like.shape)

    @torch.no_grad()
    def gather(self) -> None:
        """Members' parameters and buffers -> the batched model."""
        for batched, members in self.pairs:
            if batched.dim() == 0:  # shared, e.g. num_batches_tracked
                if any(not torch.equal(m, members[0]) for m in members):
                    raise ValueError(
                        "members differ in a tensor the batched model shares (num_batches_tracked)"
                    )
                batched.copy_(members[0])
            else:
                self.member_view(batched, members[0]).copy_(torch.stack(members))

    @torch.no_grad()
    def scatter(self) -> None:
        """The batched model -> each member's own parameters and buffers."""
        for batched, members in self.pairs:
            view = self.member_view(batched, members[0])
            for k, member in enumerate(members):
                member.copy_(view if view is batched else view[k])


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
        pairs = [(b, members) for b, members in model.pairs if isinstance(b, nn.Parameter)]
        self.params = [b for b, _ in pairs]
        self.member_params = [members for _, members in pairs]
        for k, optimizer in enumerate(self.optimizers):
            held = {id(p) for group in optimizer.param_groups for p in group["params"]}
            if held != {id(members[k]) for members in self.member_params}:
                raise ValueError(f"member {k}'s optimizer does not hold exactly its model's parameters")
        self.buffers: list[Tensor | None] = [None] * len(self.params)
        self.gather()

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, lrs: Sequence[float]) -> None:
        same = all(lr == lrs[0] for lr in lrs)
        scale = None if same else torch.tensor(lrs, dtype=self.params[0].dtype, device=self.params[0].device)
        for i, param in enumerate(self.params):
            grad = param.grad
            if self.weight_decay != 0:
                grad = grad.add(param, alpha=self.weight_decay)
            if self.momentum != 0:
                buf = self.buffers[i]
                if buf is None:
                    buf = self.buffers[i] = grad.detach().clone()
                else:
                    buf.mul_(self.momentum).add_(grad)
                grad = grad.add(buf, alpha=self.momentum) if self.nesterov else buf
            if same:
                param.add_(grad, alpha=-lrs[0])
            else:
                rows = param.view(self.model.k, -1)
                rows.addcmul_(grad.view(self.model.k, -1), scale.unsqueeze(1), value=-1)

    @torch.no_grad()
    def gather(self) -> None:
        """The members' momentum buffers -> the stacked ones (none before the first step)."""
        for i, members in enumerate(self.member_params):
            found = [
                opt.state.get(p, {}).get("momentum_buffer")
                for opt, p in zip(self.optimizers, members, strict=True)
            ]
            if all(b is None for b in found):
                self.buffers[i] = None
            elif any(b is None for b in found):
                raise ValueError("some members have momentum buffers and some not: they are not at one step")
            else:
                param = self.params[i]
                buffer = torch.empty_like(param)
                self.model.member_view(buffer, found[0], layout_of=param).copy_(torch.stack(found))
                self.buffers[i] = buffer

    @torch.no_grad()
    def scatter(self) -> None:
        """The stacked momentum buffers -> each member's optimizer state (what its checkpoint saves)."""
        for buf, param, members in zip(self.buffers, self.params, self.member_params, strict=True):
            if buf is None:
                continue
            rows = self.model.member_view(buf, members[0], layout_of=param)
            for opt, p, row in zip(self.optimizers, members, rows, strict=True):
                opt.state[p]["momentum_buffer"] = row.clone()


def batched_train_step(
    model: BatchedMLP, optimizer: StackedSGD, x: Tensor, y: Tensor, lrs: Sequence[float]
) -> tuple[Tensor, Tensor]:
    """One step of every member; returns the detached per-member losses (K,) and logits (K, B, classes)."""
    logits = model(x)
    k, b = y.shape
    losses = F.cross_entropy(logits.reshape(k * b, -1), y.reshape(-1), reduction="none").view(k, b).mean(1)
    optimizer.zero_grad()
    losses.sum().backward()
    optimizer.step(lrs)
    return losses.detach(), logits.detach()
