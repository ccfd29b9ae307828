import csv
import json
import math
import statistics
import subprocess
import sys

import pytest
from conftest import REPO

from bn_repro.analysis.speedup import (
    FIG3_COLUMNS,
    PAPER_ORDER,
    fig3_markdown,
    fig3_table,
    load_runs,
    paper_speedup,
    steps_to_target,
    write_fig3,
)
from bn_repro.records.run_files import METRICS_COLUMNS, CsvLog, write_json_atomic

STEPS = [0, 1000, 2000, 3000, 4000, 5000]
# Fixture sweep: test accuracy at STEPS per (variant, seed), and the run's final status.
BASELINE_SEEDS = {0: [0.10, 0.40, 0.60, 0.70, 0.78, 0.80], 1: [0.10, 0.45, 0.62, 0.74, 0.80, 0.79]}
FAST = [0.10, 0.70, 0.79, 0.82, 0.83, 0.84]  # passes the baseline's best (0.795, seed mean) at 3000
NEVER = [0.10, 0.50, 0.60, 0.65, 0.70, 0.72]


def _write_run(root, name, experiment, seed, accs, status="finished", lr=0.01):
    run_dir = root / name
    run_dir.mkdir(parents=True)
    log = CsvLog(run_dir / "metrics.csv", METRICS_COLUMNS)
    for step, acc in zip(STEPS, accs, strict=False):
        log.write({"step": step, "epoch": 0, "train_loss": 1.0, "train_acc": acc, "test_loss": 1.0,
                   "test_acc": acc, "lr": lr, "wall_time_s": step / 100, "steps_per_s": 100})  # fmt: skip
    log.close()
    summary = {"status": status, "experiment_name": experiment, "diverged": status == "diverged",
               "best_test_acc": max(accs), "config": {"seed": seed, "optim": {"lr": lr}}}  # fmt: skip
    write_json_atomic(run_dir / "summary.json", summary)
    return run_dir


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "multirun" / "2026-01-01"
    for seed, accs in BASELINE_SEEDS.items():
        _write_run(root, f"{seed}", "fig2_inception", seed, accs, lr=0.005)
    _write_run(root, "2", "fig2_bn_x5", 0, FAST, lr=0.025)
    _write_run(root, "3", "fig2_bn_x30", 0, FAST[:3], status="diverged", lr=0.15)
    _write_run(root, "4", "fig2_bn_x30", 1, FAST, lr=0.15)
    _write_run(root, "5", "fig2_sigmoid", 0, [0.10, 0.10], status="diverged", lr=0.005)
    _write_run(root, "6", "fig2_bn_x5_sigmoid", 0, NEVER, lr=0.025)
    _write_run(root, "7", "fig2_bn_baseline", 0, FAST[:2], status="running", lr=0.005)
    return tmp_path / "multirun"


def _rows_by_variant(rows):
    return {row["variant"]: row for row in rows}


def test_steps_to_target_is_the_first_evaluation_at_or_above():
    assert steps_to_target(STEPS, FAST, 0.79) == 2000
    assert steps_to_target(STEPS, FAST, 0.70) == 1000
    assert steps_to_target(STEPS, NEVER, 0.80) is None


def test_load_runs_finds_every_run_dir_below_a_folder(sweep):
    runs = load_runs([sweep])
    assert len(runs) == 8
    assert {r.experiment_name for r in runs} == set(PAPER_ORDER)


def test_fig3_table(sweep):
    rows = fig3_table([sweep])
    assert [r["variant"] for r in rows] == list(PAPER_ORDER)
    by = _rows_by_variant(rows)
    mean_baseline = [(a + b) / 2 for a, b in zip(*BASELINE_SEEDS.values(), strict=True)]
    target = max(mean_baseline)
    baseline_steps = STEPS[mean_baseline.index(target)]
    assert all(math.isclose(r["target_acc"], target) for r in rows)

    base = by["fig2_inception"]
    assert base["status"] == "reached" and base["steps_to_target"] == baseline_steps
    assert base["speedup"] == 1.0 and base["runs"] == 2 and math.isclose(base["max_acc"], target)
    per_seed = [steps_to_target(STEPS, accs, target) for accs in BASELINE_SEEDS.values()]
    assert base["steps_to_target_per_seed"] == per_seed

    fast_steps = steps_to_target(STEPS, FAST, target)
    x5 = by["fig2_bn_x5"]
    assert x5["status"] == "reached" and x5["steps_to_target"] == fast_steps
    assert math.isclose(x5["speedup"], baseline_steps / fast_steps) and x5["max_acc"] == max(FAST)
    assert x5["lr"] == 0.025

    # One diverged seed: reported, and left out of the curve; the finished seed still counts.
    x30 = by["fig2_bn_x30"]
    assert x30["runs"] == 2 and x30["diverged"] == 1 and x30["status"] == "reached"
    assert x30["steps_to_target"] == fast_steps and x30["best_acc_per_seed"] == [max(FAST)]

    sigmoid = by["fig2_sigmoid"]
    assert sigmoid["status"] == "diverged" and sigmoid["diverged"] == 1
    assert sigmoid["steps_to_target"] is None and sigmoid["speedup"] is None

    never = by["fig2_bn_x5_sigmoid"]
    assert never["status"] == "not reached" and never["steps_to_target"] is None and never["speedup"] is None
    assert never["max_acc"] == max(NEVER)

    running = by["fig2_bn_baseline"]
    assert running["status"] == "incomplete" and running["incomplete"] == 1


def test_fixed_target(sweep):
    by = _rows_by_variant(fig3_table([sweep], target=0.7))
    assert by["fig2_inception"]["steps_to_target"] == 3000
    assert by["fig2_bn_x5"]["steps_to_target"] == 1000 and by["fig2_bn_x5"]["speedup"] == 3.0
    assert by["fig2_bn_x5_sigmoid"]["steps_to_target"] == 4000


def test_markdown_and_csv(sweep, tmp_path):
    rows = fig3_table([sweep])
    md = fig3_markdown(rows)
    lines = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| fig2_")}
    assert "| 1.0x |" in lines["fig2_inception"]
    assert "| diverged |" in lines["fig2_sigmoid"] and "(1 diverged)" in lines["fig2_sigmoid"]
    assert "| - | - |" in lines["fig2_bn_x5_sigmoid"]  # never reached: no steps, no speedup
    assert "(1 diverged)" in lines["fig2_bn_x30"]

    md_path, csv_path = write_fig3(rows, tmp_path / "out")
    assert "fig3" in md_path.name and "fig3" in csv_path.name
    assert md_path.read_text() == md
    with open(csv_path, newline="") as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == FIG3_COLUMNS
    assert [r["variant"] for r in table] == [r["variant"] for r in rows]
    by = {r["variant"]: r for r in table}
    assert by["fig2_bn_x5_sigmoid"]["steps_to_target"] == "" and by["fig2_sigmoid"]["status"] == "diverged"
    assert int(by["fig2_bn_x5"]["steps_to_target"]) == _rows_by_variant(rows)["fig2_bn_x5"]["steps_to_target"]


def test_missing_or_unusable_baseline(tmp_path):
    _write_run(tmp_path / "a", "0", "fig2_bn_x5", 0, FAST)
    with pytest.raises(ValueError, match="baseline 'fig2_inception'; variants found: fig2_bn_x5"):
        fig3_table([tmp_path / "a"])
    _write_run(tmp_path / "b", "0", "fig2_inception", 0, [0.1, 0.1], status="diverged")
    with pytest.raises(ValueError, match="no finished run"):
        fig3_table([tmp_path / "b"])
    with pytest.raises(FileNotFoundError):
        fig3_table([tmp_path / "nowhere"])


def test_script_writes_the_table(sweep, tmp_path):
    out = tmp_path / "results"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "speedup_table.py"), str(sweep), "--out", str(out)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (out / "fig3_table.md").read_text() in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["fig3_table.csv", "fig3_table.md"]


def test_cpu_family_seeds_give_mean_and_spread_and_the_papers_numbers(tmp_path):
    """fig2cpu_* runs: the baseline is fig2cpu_inception; per-seed steps, speedups and max accuracies
    get a mean and sample std; the control row is labelled with the paper's outcome."""
    root = tmp_path / "cpu"
    for seed, accs in BASELINE_SEEDS.items():
        _write_run(root, f"i{seed}", "fig2cpu_inception", seed, accs, lr=0.005)
    # Seeds reaching the target (0.795) at 3000 and 2000 steps; their mean curve at 2000.
    _write_run(root, "x0", "fig2cpu_bn_x5", 0, FAST, lr=0.025)
    _write_run(root, "x1", "fig2cpu_bn_x5", 1, [0.10, 0.60, 0.81, 0.81, 0.82, 0.83], lr=0.025)
    _write_run(root, "c0", "fig2cpu_inception_x5", 0, [0.10, 0.10], status="diverged", lr=0.025)
    rows = _rows_by_variant(fig3_table([root]))
    assert list(rows) == ["fig2cpu_inception", "fig2cpu_bn_x5", "fig2cpu_inception_x5"]
    x5 = rows["fig2cpu_bn_x5"]
    baseline_steps = rows["fig2cpu_inception"]["steps_to_target"]
    assert baseline_steps == 5000 and x5["steps_to_target_per_seed"] == [3000, 2000]
    assert x5["steps_to_target_mean"] == 2500 and x5["steps_to_target_std"] == pytest.approx(math.sqrt(5e5))
    assert x5["steps_to_target"] == 2000 and x5["speedup"] == 2.5
    assert x5["speedup_mean"] == pytest.approx((5000 / 2000 + 5000 / 3000) / 2)
    assert x5["max_acc_mean"] == pytest.approx((0.84 + 0.83) / 2) and x5["reached_seeds"] == 2
    assert (x5["paper_steps_to_target"], x5["paper_max_acc"]) == ("2.1e6", "73.0%")
    assert rows["fig2cpu_inception_x5"]["status"] == "diverged"
    assert rows["fig2cpu_inception_x5"]["paper_max_acc"] == "diverged"
    markdown = fig3_markdown(list(rows.values()))
    assert (
        "| fig2cpu_bn_x5 | 0.025 | 2 | 2,000 | 2,500 +- 707 (2/2) | 2.5x | 2.1 +- 0.6x | 83.50 +- 0.71% |"
        in markdown
    )
    assert "| 2.1e6 (14.8x), 73.0% |" in markdown and "| -, diverged |" in markdown
    assert "fig2cpu_inception_x5: the paper's control" in markdown


def test_papers_speedups_are_inceptions_steps_over_the_variants():
    assert paper_speedup("fig2cpu_inception") == 1.0 and paper_speedup("fig2_bn_x5") == pytest.approx(
        31 / 2.1
    )
    assert paper_speedup("fig2_bn_baseline") == pytest.approx(31 / 13.3)
    assert paper_speedup("fig2cpu_bn_x5_sigmoid") is None and paper_speedup("fig1_mnist") is None


def test_a_target_reached_at_step_0_gives_no_speedup_instead_of_a_division_by_zero(tmp_path):
    for seed, accs in BASELINE_SEEDS.items():
        _write_run(tmp_path, f"i{seed}", "fig2cpu_inception", seed, accs)
    _write_run(tmp_path, "x0", "fig2cpu_bn_x5", 0, FAST)
    _write_run(tmp_path, "x1", "fig2cpu_bn_x5", 1, FAST)
    rows = _rows_by_variant(fig3_table([tmp_path], target=0.1))  # every curve is there at step 0
    for row in rows.values():
        assert row["steps_to_target"] == 0 and row["speedup"] is None and row["speedup_mean"] is None
    assert "| fig2cpu_bn_x5 |" in fig3_markdown(list(rows.values()))


def test_a_cpu_sweep_without_its_baseline_names_the_missing_one(tmp_path):
    _write_run(tmp_path, "x0", "fig2cpu_bn_x5", 0, FAST)
    with pytest.raises(ValueError, match="baseline 'fig2cpu_inception'; variants found: fig2cpu_bn_x5"):
        fig3_table([tmp_path])


def test_cpu_family_and_paper_family_are_separate_figures(tmp_path):
    from bn_repro.analysis.figures import make_figures

    for seed, accs in BASELINE_SEEDS.items():
        _write_run(tmp_path / "runs", f"i{seed}", "fig2cpu_inception", seed, accs, lr=0.005)
        _write_run(tmp_path / "runs", f"p{seed}", "fig2_inception", seed, accs, lr=0.005)
    for run in (tmp_path / "runs").iterdir():  # the figure code reads the dataset and planned steps
        summary = json.loads((run / "summary.json").read_text())
        summary["config"].update(data={"name": "fashion_mnist"}, trainer={"max_steps": 5000},
                                 norm={"kind": "none"})  # fmt: skip
        (run / "summary.json").write_text(json.dumps(summary))
    report = make_figures([tmp_path / "runs"], tmp_path / "out")
    names = {p.name for p in report.written}
    assert {"fig3_table_fashion_mnist.md", "fig3_table_cpu_scale_fashion_mnist.md"} <= names


def test_kernel_spread_pairs_each_rerun_with_its_reference_and_sets_it_beside_the_seeds(tmp_path):
    """scripts/kernel_spread.py: re-runs inside the reference folder are paired, not counted as seeds."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("kernel_spread", REPO / "scripts" / "kernel_spread.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    root = tmp_path / "fig2cpu"
    for seed, accs in BASELINE_SEEDS.items():
        _write_run(root, f"inception{seed}", "fig2cpu_inception", seed, accs)
    _write_run(root, "x5_0", "fig2cpu_bn_x5", 0, FAST)
    _write_run(root, "x5_1", "fig2cpu_bn_x5", 1, NEVER)
    # The re-run of BN-x5 seed 0: 2 points lower at every evaluation, so it reaches the target later.
    rerun = [a - 0.02 for a in FAST]
    _write_run(root / "portable", "x5_0", "fig2cpu_bn_x5", 0, rerun)
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "kernel_spread.py"), str(root), str(root / "portable"),
         "--out", str(out)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    text = (out / "kernel_spread.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| fig2cpu_bn_x5 | 1 | 2 |"))
    cells = [c.strip() for c in row.strip("|").split("|")][3:]
    # first evaluation: |68 - 70| = 2 points against the seeds' std of (70, 50); final: 2 against (84, 72)
    assert cells[0] == f"2.00 / {statistics.stdev([70.0, 50.0]):.2f}"
    assert cells[1] == f"2.00 / {statistics.stdev([84.0, 72.0]):.2f}"
    # the target (0.795) is reached at step 3000 (0.82) by the reference and 3000 (0.80) by the re-run
    assert cells[3].startswith("0 / ")
    assert (
        "| fig2cpu_bn_x5 | 0 | portable | 70.00 -> 68.00 | 84.00 -> 82.00 | 84.00 -> 82.00 | 3,000 -> 3,000 |"
        in text
    )
    assert script.MEASURES[0] in text
