"""One group of batched members: each member is a single run's Session (bn_repro/engine/loop.py), and
their training steps are one batched model's (bn_repro/batched/model.py).

    summaries = train_group([(config, run_dir), ...], group=0, jobs=[0, 2], threads=1)
    summaries = train_group(..., backward="autograd")   # the training step through autograd

Each member's Session is built by the normal setup with its own seed, so its initial weights, batch
order and augmentation stream are those of the single run; every step draws each member's batch from its
own run. Members that draw the same batches (one seed under several norms or rates: the batch order is
the seed's) have them gathered once, and the first layer reads one input for them. Before each
evaluation, measurement or checkpoint the batched state is copied back into the members' own models,
optimizers and windows, and the Session's own code evaluates, measures, checkpoints and writes the run
files, so they are a single run's files (summary.json adds "batched"). A member whose loss explodes
(Session.explosion) stops alone: it is evaluated and checkpointed as a single run that diverges, and the
others go on as a smaller batched model. A finished member is skipped (its run dir says so); a signal
stops every member after the same step, each checkpointed.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bn_repro.batched.explicit import explicit_losses
from bn_repro.batched.model import (
    BatchedMLP,
    StackedSGD,
    batched_evaluate,
    batched_train_step,
    compiled_losses,
    predictions,
)
from bn_repro.config import resolve_configs
from bn_repro.engine import interrupts, memory, setup
from bn_repro.engine.evaluate import population_stats_accuracy
from bn_repro.engine.loop import Session
from bn_repro.engine.progress import Progress
from bn_repro.engine.run_dir import Claim, claim_run_dir
from bn_repro.models.mlp import MLP
from bn_repro.norms import batch_norm_layers

__all__ = ["BACKWARDS", "train_group"]

BACKWARDS = ("explicit", "autograd")


def train_group(
    members: Sequence[tuple[Any, Path | str]],
    group: int = 0,
    jobs: Sequence[int] | None = None,
    threads: int | None = None,
    lock: bool = True,
    names: Sequence[str] | None = None,
    backward: str = "explicit",
) -> list[dict[str, Any]]:
    """Train `members` ((config, run dir) pairs whose configs differ only in seed and optim.lr) as one
    batched model; write each member's run files; return their summaries, in order.

    `threads`: torch's intra-op threads for the group (None: the members' trainer.threads). `lock`:
    claim each run dir's lock here (False: the caller holds them, as the batched launcher does). `names`:
    each member's wandb run name (default: from its config); with logger=wandb each member is its own
    wandb run, all open at once in this process. `backward`: "explicit", the training step's backward
    written out where it covers the model (bn_repro/batched/explicit.py), else autograd; "autograd"
    always (trainer.compile=true compiles the autograd step either way)."""
    if backward not in BACKWARDS:
        raise ValueError(f"backward={backward!r} is not valid; valid choices: {', '.join(BACKWARDS)}")
    configs = resolve_configs([config for config, _ in members])
    memory.keep_freed_memory()  # a step's buffers reused from the heap, not page-faulted in again
    claims: list[Claim] = []
    results: dict[int, dict[str, Any]] = {}
    sessions: dict[int, Session] = {}
    statuses: dict[int, str] = {}
    try:
        for (_, run_dir), config in zip(members, configs, strict=True):
            claims.append(claim_run_dir(Path(run_dir), config, lock=lock))
        with interrupts.watch(), setup.shared_data():
            for k, claim in enumerate(claims):
                if claim.action == "finished":
                    results[k] = {**claim.summary, "skipped": True}  # type: ignore[dict-item]
                else:
                    name = names[k] if names is not None else None
                    sessions[k] = Session(configs[k], claim.run_dir, claim, name, concurrent_tracking=True)
            if threads is not None:
                torch.set_num_threads(threads)
            jobs = list(jobs) if jobs is not None else list(range(len(members)))
            for k, session in sessions.items():
                if not isinstance(session.run.model, MLP):
                    raise ValueError(f"batched members must be MLPs, got {type(session.run.model).__name__}")
                batched = {"group": group, "member": k, "members": len(members), "jobs": jobs}
                session.facts["batched"] = batched
                session.facts["threads"] = torch.get_num_threads()
                # One progress bar for the group (_fit), not one per member.
                session.progress.close()
                session.progress = Progress(0, enabled=False)
            order = sorted(sessions)
            member_statuses: dict[int, str] = {}
            try:
                _fit([sessions[k] for k in order], member_statuses, backward)
            finally:
                statuses = {order[i]: status for i, status in member_statuses.items()}
    finally:
        for k, session in sessions.items():
            session.close(statuses.get(k, "failed"))
        for claim in claims:
            claim.release()
    results.update({k: session.summary(statuses[k]) for k, session in sessions.items()})
    return [results[k] for k in range(len(members))]


def _fit(sessions: list[Session], statuses: dict[int, str], backward: str = "explicit") -> None:
    """Session.fit for every member, the training steps batched."""
    if not sessions:
        return
    max_steps = sessions[0].config["trainer"]["max_steps"]
    for session in sessions:
        session.loop_start = time.perf_counter() - session.state.wall_time_s
        if session.state.step == 0 and session.state.final_test_acc is None:  # not again on a resume
            session.after_step(0, None, evaluate_now=True, last=False)
        session.run.net.train()
    pending = [s for s in sessions if not s.state.diverged and s.state.step < max_steps]
    # Members resumed from checkpoints of different steps train as one group per step.
    for start in sorted({s.state.step for s in pending}):
        _train_together([s for s in pending if s.state.step == start], start, backward)
    for k, session in enumerate(sessions):
        statuses[k] = _finish(session)


def _finish(session: Session) -> str:
    """The end of Session.fit: Algorithm 2's population statistics, and the status."""
    run, state, trainer = session.run, session.state, session.config["trainer"]
    signum = interrupts.requested()
    if not state.diverged and state.step < trainer["max_steps"] and signum is not None:
        session.interrupted_by = signum
        if state.checkpointed_step != state.step:
            session.checkpoint(state.step)
        return "interrupted"
    if trainer["population_stats_batches"] and batch_norm_layers(run.model) and not state.diverged:
        loss, acc = population_stats_accuracy(
            run.model, run.data, run.batches, trainer["population_stats_batches"], trainer["eval_batch_size"]
        )
        state.extra.update(final_test_acc_population_stats=acc, final_test_loss_population_stats=loss)
    return "diverged" if state.diverged else "finished"


class _Window:
    """The members' training windows (bn_repro/engine/state.Window) stacked, kept on the device."""

    def __init__(self, members: Sequence[Session]):
        self.members = members
        self.loss = torch.stack([m.state.window.loss for m in members])
        self.correct = torch.stack([m.state.window.correct for m in members])
        self.steps = members[0].state.window.steps

    def add(self, losses: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """losses (K,), logits (K, classes, B), targets (K, B)."""
        self.loss += losses
        self.correct += (predictions(logits) == targets).sum(1)
        self.steps += 1

    def scatter(self) -> None:
        for k, member in enumerate(self.members):
            member.state.window.loss.copy_(self.loss[k])
            member.state.window.correct.copy_(self.correct[k])
            member.state.window.steps = self.steps


class _Batched:
    """The batched model, optimizer and window of `members`, built from their current state."""

    def __init__(self, members: Sequence[Session], backward: str = "explicit"):
        self.members = list(members)
        self.model = BatchedMLP([m.run.model for m in members], [m.config["norm"] for m in members])
        self.model.train()
        self.optimizer = StackedSGD(
            self.model, members[0].config["optim"], [m.run.optimizer for m in members]
        )
        self.window = _Window(self.members)
        # trainer.compile=true (the same for every member: it is no batched key): the training forward and
        # loss compiled, as a single run compiles its net; evaluations stay eager, as a single run's do.
        # Otherwise the explicit step where it covers the model, else autograd (losses_fn None).
        if members[0].config["trainer"]["compile"]:
            self.losses_fn = compiled_losses(self.model)
        else:
            self.losses_fn = explicit_losses(self.model, self.optimizer) if backward == "explicit" else None

    def scatter(self) -> None:
        """Everything the members' own code reads: parameters, buffers, momentum, training window."""
        self.model.scatter()
        self.optimizer.scatter()
        self.window.scatter()


def _due(session: Session, phase: str, step: int, last: bool) -> bool:
    return any(s.due(step, phase, last) for s in session.measurements)


def _shared_inputs(members: Sequence[Session]) -> torch.Tensor | None:
    """The whole training set normalised once, when every member reads it as is: members that share
    one data set (setup.shared_data) and need no augmentation, replica split or memory-format change.
    A batch is then one gather from it: the same values as K calls of next_batch (normalising a
    pixel is elementwise), at a fraction of the per-step cost. On the CPU the copy is advised onto huge
    pages (memory.empty_on_huge_pages: its rows are read at random, 600 a step for 10 members)."""
    runs = [m.run for m in members]
    first = runs[0]
    if all(
        r.data is first.data and r.augment is None and not r.replicas.active and not r.fast.channels_last
        for r in runs
    ):
        pixels = first.data.train_x
        if pixels.device.type != "cpu":
            return first.data.normalize(pixels)
        return first.data.normalize(pixels, out=memory.empty_on_huge_pages(pixels.shape))
    return None


def _stream_key(member: Session) -> str:
    """Equal for members that draw the same batches: the batch order is the seed's and the data
    config's (bn_repro/data/batches.make_batches); _next_batches checks it each step."""
    config = member.config
    return json.dumps([config["seed"], config["data"]], sort_keys=True, default=str)


def _streams(members: Sequence[Session], inputs: torch.Tensor | None) -> list[int] | None:
    """Member k's batch stream (an index into the distinct ones, in order of first appearance), when
    members share one normalised training set (_shared_inputs) and some draw the same batches (the
    sweep's seeds under several norms or learning rates): their batch is gathered once and their first
    layer reads one input. None where every member draws its own."""
    if inputs is None:
        return None
    keys = [_stream_key(m) for m in members]
    distinct = list(dict.fromkeys(keys))
    return None if len(distinct) == len(keys) else [distinct.index(key) for key in keys]


def _next_batches(
    members: Sequence[Session], inputs: torch.Tensor | None, streams: Sequence[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[int] | None]:
    """Every member's next batch (Components.next_batch): (K, B, ...) inputs, (K, B) targets, None; from
    `inputs` (_shared_inputs) where there are. With `streams` (_streams), and where the members of one
    stream did draw the same indices, the inputs are the distinct batches (D, B, ...), of which member k
    reads row streams[k], and `streams` comes back in third place."""
    runs = [m.run for m in members]
    if inputs is None:
        batches = [r.next_batch() for r in runs]
        return torch.stack([b[0] for b in batches]), torch.stack([b[1] for b in batches]), None
    indices = [next(r.batches) for r in runs]  # every member's own sampler moves on, as in its run
    targets = runs[0].data.train_y.index_select(0, torch.cat(indices)).view(len(runs), -1)
    if streams is not None:
        first = [streams.index(s) for s in range(max(streams) + 1)]  # each stream's first member
        if all(torch.equal(idx, indices[first[s]]) for idx, s in zip(indices, streams, strict=True)):
            idx = torch.cat([indices[k] for k in first])
            return inputs.index_select(0, idx).view(len(first), -1, *inputs.shape[1:]), targets, list(streams)
    # One gather for all members: index_select copies whole rows, 5-7x faster than inputs[idx].
    idx = torch.cat(indices)
    return inputs.index_select(0, idx).view(len(runs), -1, *inputs.shape[1:]), targets, None


def _evaluate_together(batched: _Batched, members: Sequence[Session], due: bool) -> tuple[list | None, list]:
    """Every member's test loss and accuracy, and the inputs of the batched model's nonlinearities on the
    first test batch (for the members' probes), from one evaluation forward of all members; (None, [])
    where it is not `due`."""
    if not due:
        return None, []
    trainer, probed = members[0].config["trainer"], []
    tests = batched_evaluate(
        batched.model, members[0].run.data, trainer["eval_batch_size"], trainer.get("eval_examples"), probed
    )
    return tests, probed


def _member_batch(
    x: torch.Tensor, y: torch.Tensor, streams: Sequence[int] | None, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Member k's (inputs, targets) of a _next_batches step."""
    return (x[k] if streams is None else x[streams[k]]), y[k]


def _member_probe_inputs(member: Session, probed: Sequence[torch.Tensor], k: int) -> dict | None:
    """Member k's probe points' inputs (MeasureContext.probe_inputs), (B, C) each, from `probed`
    (batched_evaluate's, per hidden layer (K, C, B)); None where its probe points are not all the hidden
    layers' nonlinearities."""
    model = member.run.model
    if not probed or not hasattr(model, "probe_points"):
        return None
    layer_of = {id(layer.act): i for i, layer in enumerate(model.hidden)}
    points = model.probe_points()
    if any(id(module) not in layer_of for module in points.values()):
        return None
    return {name: probed[layer_of[id(module)]][k].t() for name, module in points.items()}


def _norm_key(member: Session) -> str:
    return json.dumps(member.config["norm"], sort_keys=True, default=str)


def _advance_constant_schedule(scheduler: Any, steps: int) -> None:
    """`steps` calls of step() on a constant schedule (LambdaLR at factor 1, engine/setup.build_scheduler)
    at once: its lr stays, and its counters move as those calls would (what the checkpoint saves)."""
    scheduler.last_epoch += steps
    scheduler._step_count += steps


def _schedulers(members: Sequence[Session]) -> tuple[list, list]:
    """The members' schedulers of constant schedules, which are not stepped each step but brought up to
    date before the members' own code reads them, and the others, which set a new lr per step."""
    schedulers = [(m.run.scheduler, m.config["optim"]["schedule"]["name"]) for m in members]
    lazy = [s for s, schedule in schedulers if s is not None and schedule == "constant"]
    return lazy, [s for s, _ in schedulers if s is not None and s not in lazy]


def _train_together(members: list[Session], start: int, backward: str = "explicit") -> None:
    """Steps start+1 .. max_steps of `members` (all at step `start`) as one batched model."""
    trainer, name = members[0].config["trainer"], members[0].config["experiment_name"]
    max_steps = trainer["max_steps"]
    checkpoints_on = bool(trainer["checkpoint_every"] or trainer.get("checkpoint_every_s"))
    # One norm segment per config (bn_repro/batched/model.py), each in the order of its batch streams.
    members = sorted(members, key=lambda m: (_norm_key(m), _stream_key(m)))
    batched = _Batched(members, backward)
    inputs = _shared_inputs(members)
    streams = _streams(members, inputs)
    # One batched evaluation for all members when they read one test set (setup.shared_data).
    shared_test = all(m.run.data is members[0].run.data for m in members)
    lazy, stepped = _schedulers(members)
    owed = 0  # the steps the lazy schedulers have not been told of

    def sync() -> None:
        """Everything the members' own code reads: the batched state and their schedulers."""
        nonlocal owed
        batched.scatter()
        for scheduler in lazy:
            _advance_constant_schedule(scheduler, owed)
        owed = 0

    lrs = [m.run.optimizer.param_groups[0]["lr"] for m in members]
    # The group's progress; its test_acc is the members' mean.
    progress = Progress(max_steps, start, f"{name} x{len(members)}", enabled=trainer["progress"])
    try:
        for step in range(start + 1, max_steps + 1):
            if interrupts.requested() is not None:
                sync()  # _finish checkpoints each member as it stands
                break
            x, y, shared = _next_batches(members, inputs, streams)
            if _due(members[0], "before_step", step, last=False):
                sync()
                for k, member in enumerate(members):
                    member.measure("before_step", step, _member_batch(x, y, shared, k), last=False)
            losses, logits = batched_train_step(
                batched.model, batched.optimizer, x, y, lrs, batched.losses_fn, shared
            )
            owed += 1
            if stepped:
                with warnings.catch_warnings():
                    # The members' schedulers set each member's lr; their optimizers never step themselves.
                    warnings.filterwarnings(
                        "ignore", message="Detected call of `lr_scheduler.step", category=UserWarning
                    )
                    for scheduler in stepped:
                        scheduler.step()
                lrs = [m.run.optimizer.param_groups[0]["lr"] for m in members]
            batched.window.add(losses, logits, y)
            last = step == max_steps
            evaluate_now = last or step % trainer["eval_every"] == 0
            diverged: set[int] = set()
            if last or step % trainer["log_every"] == 0:
                progress.update(step)
                means = (batched.window.loss / batched.window.steps).tolist()
                diverged = {k for k, mean in enumerate(means) if members[k].explosion(mean)}
            checkpoint_now = members[0].checkpoint_due(step, last) or bool(diverged)
            for member in members:
                member.state.step = step
            if not (evaluate_now or diverged or checkpoint_now or _due(members[0], "after_step", step, last)):
                continue
            tests, probed = _evaluate_together(batched, members, due=evaluate_now and shared_test)
            sync()
            for k, member in enumerate(members):
                stop = k in diverged
                member.state.diverged = member.state.diverged or stop
                test = tests[k] if tests is not None else None
                probes = _member_probe_inputs(member, probed, k)
                batch = _member_batch(x, y, shared, k)
                member.after_step(step, batch, evaluate_now or stop, last or stop, test, probes)
                if checkpoint_now and checkpoints_on:
                    member.checkpoint(step)
            diverged |= {k for k, member in enumerate(members) if member.state.diverged}  # NaN test loss
            if evaluate_now:
                accs = [m.state.final_test_acc for m in members if m.state.final_test_acc is not None]
                progress.evaluated(step, None, sum(accs) / len(accs) if accs else None)
                # Each window restarted at its own member's evaluation; the group's steps start now.
                now = time.perf_counter()
                for member in members:
                    member.state.window.started = now
            if diverged:
                members = [m for k, m in enumerate(members) if k not in diverged]
                lrs = [lr for k, lr in enumerate(lrs) if k not in diverged]
                lazy = [m.run.scheduler for m in members if m.run.scheduler in lazy]
                stepped = [m.run.scheduler for m in members if m.run.scheduler in stepped]
                if not members:
                    break
                streams = _streams(members, inputs)
            batched = _Batched(members, backward)
    finally:
        progress.close()
