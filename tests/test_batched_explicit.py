"""The batched training step with its backward written out (bn_repro/batched/explicit.py) against the
same step through autograd: the same losses, gradients and running statistics, to float32 rounding."""

import copy

import pytest
import torch

from bn_repro.batched.explicit import explicit_losses, unsupported_reason
from bn_repro.batched.model import BatchedMLP, StackedSGD, batched_train_step, member_losses
from bn_repro.models.mlp import MLP
from bn_repro.norms import factory

BN = {"kind": "builtin", "eps": 1e-5, "momentum": 0.1}
CUSTOM = {"kind": "custom", "eps": 1e-5, "momentum": 0.1, "backward": "autograd", "impl": "fast"}
NORM_MIXES = {
    "none": [{"kind": "none"}] * 3,
    "builtin": [BN] * 3,
    "mixed": [{"kind": "none"}] * 2 + [BN] * 2 + [{**CUSTOM, "backward": "explicit"}] * 2,
    "custom variants": [
        {**CUSTOM, "momentum": None},  # cumulative running averages
        {**CUSTOM, "impl": "reference", "eps": 1e-3},
        {**CUSTOM, "backward": "explicit", "momentum": 0.5},
    ],
}
SGD = {"name": "sgd", "momentum": 0.9, "nesterov": False, "weight_decay": 0.0}


def _group(norm_cfgs, activation="sigmoid", hidden=(20, 16), seed=0, sgd=SGD):
    torch.manual_seed(seed)
    members = [
        MLP((1, 6, 6), 5, factory(cfg), hidden=hidden, activation=activation, init_std=0.3)
        for cfg in norm_cfgs
    ]
    options = {k: sgd[k] for k in ("momentum", "nesterov", "weight_decay")}
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1, **options) for m in members]
    model = BatchedMLP(members, norm_cfgs)
    model.train()
    return model, StackedSGD(model, sgd, optimizers)


def _close(actual, expected, what, floor=0.0):
    """Equal to float32 rounding of another order of operations, relative to the tensor's size, or to
    `floor` where the tensor is a sum that cancels to rounding noise (in an identity-activation net the
    gradient of a BN's beta before a linear layer and another BN is 0 but for rounding, as is the next BN's
    batch mean)."""
    scale = max(expected.abs().max().item(), floor) or 1.0
    assert (actual.double() - expected.double()).abs().max().item() <= 2e-5 * scale, what


def _assert_same_state(explicit, autograd):
    for (name, a), b in zip(autograd.state_dict().items(), explicit.state_dict().values(), strict=True):
        if a.dtype == torch.long:
            assert torch.equal(a, b), name
        else:
            _close(b, a, name, floor=1e-2)  # weights, BN's gamma and running statistics are O(0.1-1)


@pytest.mark.parametrize("mix", NORM_MIXES)
@pytest.mark.parametrize("activation", ["sigmoid", "relu", "identity"])
def test_explicit_gradients_are_autograds(mix, activation):
    norm_cfgs = NORM_MIXES[mix]
    model, optimizer = _group(norm_cfgs, activation)
    twin = copy.deepcopy(model)
    step = explicit_losses(twin)
    assert step is not None and unsupported_reason(twin) is None
    x, y = torch.randn(len(norm_cfgs), 8, 1, 6, 6), torch.randint(0, 5, (len(norm_cfgs), 8))
    losses, logits = member_losses(model, x, y)
    optimizer.zero_grad()
    losses.sum().backward()
    explicit_out, explicit_logits = step(x, y)
    assert not explicit_out.requires_grad
    _close(explicit_out, losses.detach(), "losses")
    _close(explicit_logits, logits.detach(), "logits")
    params = dict(model.named_parameters())
    largest = max(p.grad.abs().max().item() for p in params.values())
    for name, p in twin.named_parameters():
        assert p.grad is not None, name
        _close(p.grad, params[name].grad, name, floor=1e-2 * largest)
    _assert_same_state(twin, model)  # running statistics and batch counts


SGDS = {
    "momentum": SGD,
    "momentum, weight decay": {**SGD, "weight_decay": 1e-2},
    "nesterov": {**SGD, "nesterov": True},  # its update needs the gradient: nothing folded
    "plain": {**SGD, "momentum": 0.0},
}


# Members that draw the same batches (one seed under several norms or rates): member k reads row
# streams[k] of the distinct batches. For the 6 "mixed" members the segments' rows are in order ([0, 1]:
# a view of the batches), reversed ([1, 0]: a gather) and in order again; the 3 "custom variants" are
# one member per segment.
STREAMS = {"mixed": [0, 1, 1, 0, 0, 1], "custom variants": [1, 0, 1]}


@pytest.mark.parametrize("sgd", SGDS)
@pytest.mark.parametrize("mix", ["mixed", "custom variants"])
@pytest.mark.parametrize("rates", ["shared", "per member"])
@pytest.mark.parametrize("inputs", ["own", "shared streams"])
def test_explicit_steps_train_as_autograds_do(mix, sgd, rates, inputs):
    """30 SGD steps, the weights' gradients folded into the momentum buffers (StackedSGD.fold_gradient)
    where the optimizer can: the members' losses, weights, running statistics and momentum buffers stay
    autograd's; with members reading shared batches too (the first layer's matmul and weight gradient
    then run per norm segment, each on its own rows of the batches)."""
    norm_cfgs = NORM_MIXES[mix]
    model, optimizer = _group(norm_cfgs, seed=1, sgd=SGDS[sgd])
    twin, twin_optimizer = _group(norm_cfgs, seed=1, sgd=SGDS[sgd])  # the same members, their own optimizers
    step = explicit_losses(twin, twin_optimizer)
    lrs = [0.1 * (k + 1) if rates == "per member" else 0.1 for k in range(len(norm_cfgs))]
    streams = STREAMS[mix] if inputs == "shared streams" else None
    rows = len(norm_cfgs) if streams is None else max(streams) + 1
    for _ in range(30):
        x, y = torch.randn(rows, 8, 1, 6, 6), torch.randint(0, 5, (len(norm_cfgs), 8))
        # The autograd step reads each member's rows gathered (batched_train_step), the explicit one the
        # distinct batches.
        expected, _ = batched_train_step(model, optimizer, x, y, lrs, streams=streams)
        losses, _ = batched_train_step(twin, twin_optimizer, x, y, lrs, step, streams)
        _close(losses, expected, "losses")
    _assert_same_state(twin, model)
    folded = [p.grad is None for p in twin.parameters() if p.dim() == 3]  # the layers' weights
    assert all(folded) == (SGDS[sgd]["momentum"] != 0 and not SGDS[sgd]["nesterov"]) and any(folded) == all(
        folded
    )
    for buffer, expected_buffer in zip(twin_optimizer.buffers, optimizer.buffers, strict=True):
        if expected_buffer is None:
            assert buffer is None
        else:
            _close(buffer, expected_buffer, "momentum buffer", floor=1e-2)


def test_a_model_the_explicit_step_does_not_cover_keeps_autograd():
    cfgs = [{"kind": "groupnorm", "groups": 2}] * 2
    torch.manual_seed(0)
    members = [MLP((1, 6, 6), 5, factory(cfg), hidden=(8,)) for cfg in cfgs]
    model = BatchedMLP(members, cfgs)
    assert unsupported_reason(model) == "norm GroupNorm"
    assert explicit_losses(model) is None
    bn, _ = _group([BN] * 2)
    bn.hidden[0].segments[0].norm.track_running_stats = False  # no norm config builds this; a caller could
    assert unsupported_reason(bn) == "BN without gamma, beta or running statistics"
