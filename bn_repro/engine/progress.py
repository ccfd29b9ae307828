"""A run's progress: a tqdm bar on a terminal, plain log lines otherwise (nohup, SLURM, `> file`).

    progress = Progress(total=max_steps, initial=step, desc=experiment_name, enabled=trainer["progress"])
    progress.update(step)                          # the steps done so far (cheap: call it every log_every)
    progress.evaluated(step, train_loss, test_acc)  # the latest numbers, shown with the progress
    progress.close()

On a terminal (stderr is a tty, as tqdm's `disable=None`) it is tqdm's bar with the latest loss and test
accuracy; step 0 has no training loss, so it shows the test accuracy only. Without one, it prints a
line to stdout (flushed, so a log file shows it at once) each time another `every` of the steps is
done, at most one a `min_interval_s`, and a last one at close():

    fig1_mnist: step 2500/50000 (5%), 312 steps/s, ETA 2m32s, loss 0.3120, test_acc 0.9123
    fig1_mnist: done, step 50000/50000 in 2m40s, 312 steps/s, loss 0.0612, test_acc 0.9781

`enabled=False` (trainer.progress=false) shows neither. No torch here.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import IO, Any

__all__ = ["Progress"]


def _is_terminal(stream: IO[str] | None) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def duration(seconds: float) -> str:
    """42s, 3m05s, 1h02m."""
    seconds = max(int(seconds), 0)  # whole seconds, rounded down
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def rate_text(steps_per_s: float) -> str:
    if steps_per_s >= 100:
        return f"{steps_per_s:.0f}"
    if steps_per_s >= 10:
        return f"{steps_per_s:.1f}"
    return f"{steps_per_s:.2f}"


class Progress:
    """The progress of steps `initial`..`total` (see the module docstring).

    `stream`: where both the bar and the lines go, and whose isatty() picks between them (tests pass a
    fake); None: the bar on stderr when stderr is a terminal, else the lines on stdout. `clock`: seconds
    (time.monotonic); `every`: the fraction of `total` between two lines; `min_interval_s`: the least
    time between two lines (the last one, at close(), is always printed)."""

    def __init__(
        self,
        total: int,
        initial: int = 0,
        desc: str = "",
        enabled: bool = True,
        *,
        stream: IO[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        every: float = 0.05,
        min_interval_s: float = 10.0,
    ):
        if not 0 < every <= 1:
            raise ValueError(f"every={every!r}: expected a fraction in (0, 1]")
        self.total, self.initial, self.n, self.desc = int(total), int(initial), int(initial), desc
        self.train_loss: float | None = None
        self.test_acc: float | None = None
        self._stream, self._clock = stream, clock
        self._every, self._min_interval_s = every, min_interval_s
        self._bar = None
        self._closed = False
        bar_stream = stream if stream is not None else sys.stderr
        if not enabled:
            self.mode = "off"
        elif _is_terminal(bar_stream):
            from tqdm import tqdm

            self.mode = "bar"
            self._bar = tqdm(
                total=self.total, initial=self.initial, desc=desc or None, unit="step", dynamic_ncols=True,
                leave=False, file=bar_stream,
            )  # fmt: skip
        else:
            self.mode = "lines"
        self._started = self._last_update = clock()
        self._last_line: float | None = None
        self._line_mark = self._mark(self.initial)  # a line when the steps reach the next mark
        self._printed_n = self.initial

    # ------------------------------------------------------------------------------------------ calls

    def update(self, step: int) -> None:
        """`step` steps are done (the counter only moves forward)."""
        if self.mode == "off" or step <= self.n:
            return
        self.n = int(step)
        if self._bar is not None:
            self._bar.update(self.n - self._bar.n)
            return
        now = self._last_update = self._clock()
        if self.n >= self.total:
            return  # the last line waits for close(), so that it has the final evaluation's numbers
        mark = self._mark(self.n)
        recent = self._last_line is not None and now - self._last_line < self._min_interval_s
        if mark > self._line_mark and not recent:
            self._line_mark = mark
            self._print(self._line(now, final=False), now)

    def evaluated(self, step: int, train_loss: float | None, test_acc: float | None) -> None:
        """The numbers of the evaluation at `step`; a training loss that is None or NaN (step 0 has
        none) is left out rather than shown as nan."""
        if self.mode == "off":
            return
        self.train_loss = float(train_loss) if _finite(train_loss) else None
        self.test_acc = float(test_acc) if _finite(test_acc) else None
        if self._bar is not None:
            postfix = {}
            if self.train_loss is not None:
                postfix["loss"] = f"{self.train_loss:.4f}"
            if self.test_acc is not None:
                postfix["test_acc"] = f"{self.test_acc:.4f}"
            self._bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        """Remove the bar, or print the last line (unless no step was taken since the last one)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "lines" and self.n > self._printed_n:
            self._print(self._line(self._last_update, final=True), self._clock())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ lines

    def _mark(self, step: int) -> int:
        return math.floor(step / (self._every * self.total)) if self.total > 0 else 0

    def _line(self, now: float, final: bool) -> str:
        elapsed = now - self._started
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 else float("inf")
        parts = []
        if final:
            head = "done" if self.n >= self.total else "stopped"
            parts.append(f"{head}, step {self.n}/{self.total} in {duration(elapsed)}")
        else:
            percent = math.floor(100 * self.n / self.total) if self.total > 0 else 100
            parts.append(f"step {self.n}/{self.total} ({percent}%)")
        if math.isfinite(rate) and done > 0:
            parts.append(f"{rate_text(rate)} steps/s")
            if not final:
                parts.append(f"ETA {duration((self.total - self.n) / rate)}")
        if self.train_loss is not None:
            parts.append(f"loss {self.train_loss:.4f}")
        if self.test_acc is not None:
            parts.append(f"test_acc {self.test_acc:.4f}")
        prefix = f"{self.desc}: " if self.desc else ""
        return prefix + ", ".join(parts)

    def _print(self, line: str, now: float) -> None:
        self._last_line = now
        self._printed_n = self.n
        print(line, file=self._stream if self._stream is not None else sys.stdout, flush=True)
