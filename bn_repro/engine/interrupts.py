"""Stopping cleanly on a signal: the run finishes its step, checkpoints, and exits 128 + the signal.

    with interrupts.watch():                 # the app's process, and each batched worker
        ...                                  # the loop polls interrupts.requested() after each step
    interrupts.hand_over()                   # after the checkpoint: the signal's previous handler

SIGINT (Ctrl-C), SIGTERM (SLURM before preemption and at the time limit), SIGUSR1 and SIGUSR2 (what a
cluster sends ahead of the end: `sbatch --signal`, submitit's preemption signal) only set a flag here;
the loop reads it at the next step boundary. A second Ctrl-C exits at once (code 130): the last
checkpoint and every row already written stay intact. A signal is forwarded to this process's children
(the batched launcher's group processes), except SIGINT, which a terminal already sends to the whole
process group. When the signal had a handler before ours (submitit's checkpoint-and-requeue on SIGUSR2
under hydra/launcher=slurm), hand_over() calls it once our checkpoint is written, so the job requeues
and resumes from it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class _Watch:
    def __init__(self) -> None:
        self.depth = 0
        self.received: int | None = None
        self.previous: dict[int, object] = {}


_watch = _Watch()
_app_process: int | None = None


def mark_app_process() -> None:
    """This process is the app's own (bn_repro.train.main), not a launcher's worker running its jobs."""
    global _app_process
    _app_process = os.getpid()


def in_app_process() -> bool:
    return _app_process == os.getpid()


def _say(message: str) -> None:
    # os.write, not print: a handler may run while the main thread is inside print on the same stream.
    with contextlib.suppress(OSError):
        os.write(2, (message + "\n").encode())


def _children() -> list[int]:
    """This process's child PIDs (Linux /proc; elsewhere none)."""
    pids: list[int] = []
    for task in Path(f"/proc/{os.getpid()}/task").glob("*/children"):
        with contextlib.suppress(OSError, ValueError):
            pids.extend(int(p) for p in task.read_text().split())
    return pids


def _handle(signum: int, frame) -> None:
    if _watch.received is not None:
        if signum == signal.SIGINT:
            _say("second interrupt: stopping now, without a new checkpoint (the last one and all rows stay)")
            os._exit(128 + signal.SIGINT)
        return
    _watch.received = signum
    _say(
        f"{signal.Signals(signum).name} received: finishing the current step, then writing a checkpoint "
        f"(press Ctrl-C again to stop at once)"
    )
    if signum != signal.SIGINT:
        for pid in _children():
            with contextlib.suppress(OSError):
                os.kill(pid, signum)


@contextlib.contextmanager
def watch() -> Iterator[None]:
    """Catch SIGNALS while inside (re-entrant; a no-op outside the main thread, where Python cannot
    install handlers). The previous handlers come back on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _watch.depth == 0:
        _watch.received = None
        _watch.previous = {s: signal.signal(s, _handle) for s in SIGNALS}
    _watch.depth += 1
    try:
        yield
    finally:
        _watch.depth -= 1
        if _watch.depth == 0:
            for s, handler in _watch.previous.items():
                signal.signal(s, handler)  # type: ignore[arg-type]
            _watch.previous = {}


def requested() -> int | None:
    """The signal received since watch() began (None: none)."""
    return _watch.received


def name(signum: int) -> str:
    return signal.Signals(signum).name


def exit_code(signum: int) -> int:
    """The shell's convention: 128 + the signal (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + int(signum)


def hand_over() -> None:
    """Call the received signal's previous handler when it was a function (e.g. submitit's requeue)."""
    signum = _watch.received
    previous = _watch.previous.get(signum) if signum is not None else None
    if callable(previous) and previous is not signal.default_int_handler:
        previous(signum, None)


def die_with_parent() -> None:
    """Have the kernel send this process SIGTERM when its parent dies (Linux): torchrun's workers and
    the batched launcher's group processes then stop with a checkpoint when their parent is killed,
    instead of training on, writing the run dir, with nobody left to stop them."""
    import ctypes

    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: workers outlive a killed agent, as before
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
