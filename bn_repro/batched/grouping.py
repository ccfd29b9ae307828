"""Which jobs of a sweep can be members of one batched model, and how they are split into groups.

    groups, notes = plan(configs, max_members=20, workers=2)   # configs: resolved job configs
    # groups: lists of job indices, each one batched model; notes: {job index: why it runs alone}

Jobs share a model when their resolved configs differ only in BATCHED_KEYS: `seed`, `optim.lr` and
`optim.schedule` (each member's scheduler sets its own lr), `model.init_std` (the initial weights are the
member's own) and `norm` (members of one norm form one segment of the batched model:
bn_repro/batched/model.py). A group split over several processes gets an equal share of each norm, so
that the processes take about as long.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

# The keys in which the members of one group may differ.
BATCHED_KEYS = (("seed",), ("optim", "lr"), ("optim", "schedule"), ("model", "init_std"), ("norm",))
NORMS = ("none", "builtin", "custom")
ALONE = (
    "differs from every other job in more than seed, optim.lr, optim.schedule, model.init_std and norm, so "
    "there is nothing to batch it with"
)


def unbatchable_reason(config: Mapping[str, Any]) -> str | None:
    """Why the job of resolved `config` cannot be a batched member; None when it can."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        return f"DDP (WORLD_SIZE={world_size}) is not supported for batched groups, which run in one process"
    model, norm, trainer = config["model"]["name"], config["norm"]["kind"], config["trainer"]
    if model != "mlp":
        return (
            f"model={model}: only the MLP runs as batched members (conv nets would need grouped convolutions)"
        )
    dropout = config["model"].get("dropout", 0.0)
    if dropout:
        return (
            f"model.dropout={dropout}: the batched MLP has no dropout (each member would need its own masks "
            f"from its own RNG), so the job runs as an ordinary one"
        )
    if norm not in NORMS:
        return f"norm={norm}: batched members support norm={'|'.join(NORMS)}"
    if config["optim"]["name"] != "sgd":
        return f"optim={config['optim']['name']}: batched members support SGD only"
    if trainer["precision"] == "bf16" or (trainer["precision"] == "auto" and _cuda(trainer["device"])):
        return "bf16 autocast: batched members train in float32"
    return None


def _cuda(device: str) -> bool:
    if device == "cpu":
        return False
    import torch

    return device == "cuda" or torch.cuda.is_available()


def group_key(config: Mapping[str, Any]) -> str:
    """Equal for jobs that differ only in BATCHED_KEYS."""
    rest = copy.deepcopy(dict(config))
    for path in BATCHED_KEYS:
        node = rest
        for key in path[:-1]:
            node = node[key]
        node.pop(path[-1], None)
    return json.dumps(rest, sort_keys=True, default=str)


def _split(jobs: list[int], parts: int, configs: Sequence[Mapping[str, Any]]) -> list[list[int]]:
    """`jobs` in `parts` groups of sizes that differ by at most one, each with an equal share (to one) of
    every norm: the jobs ordered by norm, then dealt round-robin. A BN member's step costs more than one
    without BN, so a split by position (all of one norm in one group) leaves one process idle at the end."""
    ordered = sorted(jobs, key=lambda i: (json.dumps(configs[i]["norm"], sort_keys=True, default=str), i))
    return [sorted(ordered[p::parts]) for p in range(parts)]


def plan(
    configs: Sequence[Mapping[str, Any]], max_members: int, workers: int = 1
) -> tuple[list[list[int]], dict[int, str]]:
    """The groups (job indices, each one batched model of at most `max_members`) and, for every job that
    runs as an ordinary job instead, the reason. With more `workers` (group processes) than groups, the
    largest groups are halved until every worker has one (a group keeps at least two members)."""
    if max_members < 2:
        raise ValueError(f"hydra.launcher.max_members={max_members}: a batched group needs at least 2")
    notes: dict[int, str] = {}
    by_key: dict[str, list[int]] = {}
    for i, config in enumerate(configs):
        reason = unbatchable_reason(config)
        if reason is not None:
            notes[i] = reason
        else:
            by_key.setdefault(group_key(config), []).append(i)
    groups: list[list[int]] = []
    for jobs in by_key.values():
        if len(jobs) == 1:
            notes[jobs[0]] = ALONE
            continue
        for part in _split(jobs, -(-len(jobs) // max_members), configs):
            if len(part) == 1:
                notes[part[0]] = f"left alone when hydra.launcher.max_members={max_members} split its group"
            else:
                groups.append(part)
    while len(groups) < workers:
        largest = max(groups, key=len, default=[])
        if len(largest) < 4:
            break
        groups.remove(largest)
        groups.extend(_split(largest, 2, configs))
    return groups, notes
