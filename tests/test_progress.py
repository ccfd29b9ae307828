"""bn_repro.engine.progress.Progress with a fake clock and fake streams: the bar on a terminal, plain
lines in a log file, nothing when disabled."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from conftest import REPO

from bn_repro.engine.progress import Progress, duration


class Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lines_of(stream: Stream) -> list[str]:
    return stream.getvalue().splitlines()


def run_log(total=1000, initial=0, step_s=0.01, log_every=10, evaluate_every=100, **options):
    """A loop as bn_repro/engine/loop.py drives it, `step_s` seconds a step, printing to a log file."""
    stream, clock = Stream(tty=False), Clock()
    progress = Progress(total, initial, "fig1", True, stream=stream, clock=clock, **options)
    assert progress.mode == "lines"
    if initial == 0:
        progress.evaluated(0, float("nan"), 0.1)
    for step in range(initial + 1, total + 1):
        clock.now += step_s
        if step % log_every == 0 or step == total:
            progress.update(step)
        if step % evaluate_every == 0 or step == total:
            progress.evaluated(step, 1.0 / step, step / total)
    progress.close()
    return lines_of(stream)


# ---------------------------------------------------------------- without a terminal: log lines


def test_a_line_every_five_percent_and_one_at_the_end():
    lines = run_log(total=1000, step_s=1.0)  # one step a second: every 5% is 50 s, past the interval
    assert len(lines) == 20
    assert lines[0] == "fig1: step 50/1000 (5%), 1.00 steps/s, ETA 15m50s, test_acc 0.1000"
    # The loop updates before it evaluates: a line shows the evaluation before it.
    assert lines[1] == "fig1: step 100/1000 (10%), 1.00 steps/s, ETA 15m00s, test_acc 0.1000"
    assert lines[2] == "fig1: step 150/1000 (15%), 1.00 steps/s, ETA 14m10s, loss 0.0100, test_acc 0.1000"
    assert [line.split()[2] for line in lines[:-1]] == [f"{50 * k}/1000" for k in range(1, 20)]
    assert lines[-1] == "fig1: done, step 1000/1000 in 16m40s, 1.00 steps/s, loss 0.0010, test_acc 1.0000"


def test_step_zero_shows_no_nan_loss():
    lines = run_log(total=100, step_s=1.0, log_every=1, evaluate_every=1000)
    assert "nan" not in "\n".join(lines)
    assert lines[0].endswith("ETA 1m35s, test_acc 0.1000")


def test_at_most_one_line_per_interval():
    # 80 steps/s: every 5% (50 steps) is 0.625 s; a line at most every 2 s, i.e. every 160 steps.
    lines = run_log(total=1000, step_s=1 / 80, min_interval_s=2.0)
    steps = [int(line.split("step ")[1].split("/")[0]) for line in lines]
    assert steps == [50, 210, 370, 530, 690, 850, 1000]
    assert "80.0 steps/s" in lines[0] and "ETA 11s" in lines[0]  # 950 steps at 80 steps/s: 11.9 s
    assert lines[-1].startswith("fig1: done, step 1000/1000 in 12s, 80.0 steps/s")


def test_a_resumed_run_counts_its_own_steps_and_its_marks_from_zero():
    lines = run_log(total=1000, initial=430, step_s=0.5)
    assert lines[0].startswith("fig1: step 450/1000 (45%), 2.00 steps/s, ETA 4m35s")
    assert lines[-1].startswith("fig1: done, step 1000/1000 in 4m45s, 2.00 steps/s")
    assert len(lines) == 12  # 45%, 50%, .., 95%, and the end


def test_a_run_that_stops_early_says_so_at_close():
    stream, clock = Stream(tty=False), Clock()
    progress = Progress(1000, 0, "", True, stream=stream, clock=clock)
    clock.now += 12.0
    progress.update(30)  # under 5%: no line yet
    assert stream.getvalue() == ""
    progress.evaluated(30, 2.5, 0.25)
    clock.now += 100.0  # the time after the last step (evaluation, population statistics) is not counted
    progress.close()
    progress.close()
    assert lines_of(stream) == ["stopped, step 30/1000 in 12s, 2.50 steps/s, loss 2.5000, test_acc 0.2500"]


def test_nothing_to_report_prints_nothing():
    stream = Stream(tty=False)
    with Progress(100, 100, "done-already", True, stream=stream, clock=Clock()) as progress:
        progress.update(100)
    assert stream.getvalue() == ""


def test_lines_go_to_stdout_when_stderr_is_not_a_terminal(capsys):
    progress = Progress(10, 0, "run", True, every=0.5, min_interval_s=0.0)
    assert progress.mode == "lines"  # pytest's captured stderr is not a terminal
    progress.update(5)
    progress.close()
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0].startswith("run: step 5/10 (50%)") and captured.err == ""


def test_a_log_file_shows_the_lines_while_the_run_goes_on(tmp_path):
    """Flushed line by line: a log file (nohup, SLURM) has the first line before the process ends."""
    log = tmp_path / "log"
    code = (
        "import sys, time\n"
        "from bn_repro.engine.progress import Progress\n"
        "p = Progress(100, 0, 'job', True, min_interval_s=0.0)\n"
        "p.update(50)\n"
        "print('@@', sys.stdin.readline().strip(), flush=True)\n"
        "p.close()\n"
    )
    with open(log, "w") as out:
        child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdin=subprocess.PIPE,
                                 stdout=out, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        try:
            for _ in range(600):  # the line appears while the child waits on stdin
                if "job: step 50/100 (50%)" in log.read_text():
                    break
                subprocess.run(["sleep", "0.05"])
            assert log.read_text().startswith("job: step 50/100 (50%)")
        finally:
            child.communicate("go\n", timeout=60)
    assert log.read_text().splitlines()[1:] == ["@@ go"]


# ---------------------------------------------------------------- on a terminal: tqdm's bar


def test_a_terminal_gets_the_bar_without_a_nan_loss_at_step_zero():
    stream = Stream(tty=True)
    progress = Progress(500, 0, "fig1", True, stream=stream)
    assert progress.mode == "bar"
    progress.evaluated(0, float("nan"), 0.1)
    bar = str(progress._bar)
    assert "fig1" in bar and "test_acc=0.1000" in bar and "loss" not in bar
    progress.update(50)
    progress.evaluated(50, 0.5, 0.625)
    assert progress._bar.n == 50
    assert "loss=0.5000, test_acc=0.6250" in str(progress._bar)
    progress.evaluated(60, None, None)
    assert "loss" not in str(progress._bar) and "test_acc" not in str(progress._bar)
    progress.close()
    assert "fig1" in stream.getvalue() and "step" in stream.getvalue()  # it drew to the stream


def test_a_resumed_bar_starts_at_its_step():
    progress = Progress(500, 200, "x", True, stream=Stream(tty=True))
    progress.update(250)
    assert progress._bar.n == 250 and progress._bar.total == 500
    progress.close()


# ---------------------------------------------------------------- trainer.progress=false


@pytest.mark.parametrize("tty", [True, False])
def test_disabled_shows_nothing(tty):
    stream = Stream(tty=tty)
    progress = Progress(100, 0, "quiet", False, stream=stream, clock=Clock(), min_interval_s=0.0)
    progress.evaluated(0, float("nan"), 0.1)
    for step in range(1, 101):
        progress.update(step)
    progress.evaluated(100, 0.1, 0.9)
    progress.close()
    assert progress.mode == "off" and stream.getvalue() == ""


def test_no_torch_and_a_valid_fraction():
    code = "import sys, bn_repro.engine.progress; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True).stdout
    assert out.strip() == "False"
    with pytest.raises(ValueError, match="every=0"):
        Progress(10, every=0)


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (42.4, "42s"), (185, "3m05s"), (3720, "1h02m")])
def test_duration(seconds, text):
    assert duration(seconds) == text
