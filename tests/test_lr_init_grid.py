"""scripts/lr_init_grid.py and bn_repro/analysis/lr_init_grid.py on a small fake grid with known numbers."""

import csv
import math
import subprocess
import sys

import pytest
from conftest import REPO
from scipy import stats as scipy_stats

from bn_repro.analysis.figures import load_all
from bn_repro.analysis.lr_init_grid import (
    CELL_COLUMNS,
    analyse,
    area_rows,
    cell_markdown,
    cell_rows,
    grid_cells,
    spread_rows,
    summary_text,
)
from bn_repro.records.run_files import METRICS_COLUMNS, METRICS_FILE, SUMMARY_FILE, CsvLog, write_json_atomic

STEPS = (0, 500, 1000, 1500, 2000)
MAX_STEPS = STEPS[-1]
SEEDS = (0, 1, 2)
INIT_STDS = (0.01, None)
LRS = (0.01, 0.1)


def write_run(
    run_dir, *, norm, momentum, init_std, lr, seed, accs, status="finished", max_steps=MAX_STEPS, **model
):
    """One run dir as bn_repro.train writes it: metrics.csv and summary.json with the resolved config."""
    run_dir.mkdir(parents=True)
    log = CsvLog(run_dir / METRICS_FILE, METRICS_COLUMNS)
    for step, acc in zip(STEPS, accs, strict=False):
        log.write(
            {
                "step": step,
                "epoch": 0,
                "train_loss": 1.0,
                "train_acc": acc,
                "test_loss": 1.0,
                "test_acc": acc,
                "lr": lr,
                "wall_time_s": step / 100,
                "steps_per_s": 100.0,
            }
        )
    log.close()
    config = {
        "experiment_name": "lr_init_grid",
        "seed": seed,
        "data": {"name": "fashion_mnist", "batch_size": 60, "augment": False},
        "model": {"name": "mlp", "hidden": [100, 100, 100], "init_std": init_std, **model},
        "norm": {"kind": norm},
        "optim": {"name": "sgd", "lr": lr, "momentum": momentum},
        "trainer": {"max_steps": max_steps, "eval_every": 500},
    }
    write_json_atomic(
        run_dir / SUMMARY_FILE,
        {
            "status": status,
            "experiment_name": "lr_init_grid",
            "final_test_acc": accs[-1],
            "best_test_acc": max(accs),
            "steps": STEPS[len(accs) - 1],
            "diverged": status == "diverged",
            "config": config,
        },
    )


def jump(final, at):
    """Chance (0.1) until step `at`, then `final`: the first evaluation >= 0.8 is `at` when final >= 0.8."""
    return [0.1 if step < at else final for step in STEPS]


def cell_curves(momentum, norm, init_std, lr):
    """{seed: (accs, status)} of each cell. BN trains everywhere; no BN at init std 0.01 never does; no BN
    at PyTorch's default trains at lr 0.01 with momentum (not without), and at lr 0.1 seed 0 diverges after
    passing 0.8 (it must not count as reaching it)."""
    if norm == "builtin":
        at = 500 if lr == 0.1 else 1000
        return {s: (jump(0.85 + 0.01 * s, at + 500 * s), "finished") for s in SEEDS}
    if init_std == 0.01:
        return {s: ([0.1] * len(STEPS), "finished") for s in SEEDS}
    if lr == 0.01:
        final = 0.82 if momentum else 0.60
        return {s: (jump(final + 0.01 * s, 1500), "finished") for s in SEEDS}
    return {
        0: ([0.1, 0.85, 0.1], "diverged"),
        1: (jump(0.83, 1000), "finished"),
        2: (jump(0.84, 1000), "finished"),
    }


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """Nested like results/<sweep>/runs/<job>/ and searched recursively; one extra run still running."""
    root = tmp_path_factory.mktemp("grid") / "runs"
    job = 0
    for momentum in (0.9, 0.0):
        for norm in ("none", "builtin"):
            for init_std in INIT_STDS:
                for lr in LRS:
                    for seed, (accs, status) in cell_curves(momentum, norm, init_std, lr).items():
                        write_run(
                            root / str(job),
                            norm=norm,
                            momentum=momentum,
                            init_std=init_std,
                            lr=lr,
                            seed=seed,
                            accs=accs,
                            status=status,
                        )
                        job += 1
    write_run(
        root / str(job),
        norm="builtin",
        momentum=0.9,
        init_std=0.01,
        lr=0.01,
        seed=3,
        accs=[0.1, 0.2],
        status="running",
    )
    return root


@pytest.fixture(scope="module")
def rows(grid):
    return cell_rows(grid_cells(load_all([grid])))


def find(rows, momentum, norm, init_std, lr):
    key = (momentum, norm, init_std, lr)
    (row,) = [r for r in rows if (r["momentum"], r["norm"], r["init_std"], r["lr"]) == key]
    return row


def t_half(values):
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return scipy_stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)


def test_cells_and_their_order(rows):
    assert len(rows) == 16
    keys = [(r["momentum"], r["norm"], r["init_std"], r["lr"]) for r in rows]
    assert keys[:4] == [
        (0.9, "none", 0.01, 0.01),
        (0.9, "none", 0.01, 0.1),
        (0.9, "none", None, 0.01),
        (0.9, "none", None, 0.1),
    ]
    assert keys[8][:2] == (0.0, "none") and {r["protocol"] for r in rows} == {"momentum0.9", "plain_sgd"}


def test_final_accuracy_and_steps_with_intervals(rows):
    bn = find(rows, 0.9, "builtin", 0.01, 0.1)
    finals = [0.85, 0.86, 0.87]
    assert bn["runs"] == 3 and bn["diverged"] == 0 and bn["incomplete"] == 0
    assert bn["final_acc_mean"] == pytest.approx(0.86)
    assert bn["final_acc_ci95"] == pytest.approx(t_half(finals))
    assert bn["steps_to_target_per_seed"] == [500, 1000, 1500] and bn["seeds_reaching_target"] == 3
    assert bn["steps_to_target_mean"] == 1000
    assert bn["steps_to_target_ci95"] == pytest.approx(t_half([500, 1000, 1500]))

    never = find(rows, 0.9, "none", 0.01, 0.01)
    assert never["final_acc_mean"] == pytest.approx(0.1) and never["final_acc_ci95"] == pytest.approx(0.0)
    assert never["seeds_reaching_target"] == 0 and never["steps_to_target_mean"] is None

    below = find(rows, 0.0, "none", None, 0.01)  # reaches 60-62%, never 80%
    assert below["final_acc_mean"] == pytest.approx(0.61) and below["seeds_reaching_target"] == 0


def test_a_diverged_run_counts_as_not_trained(rows):
    cell = find(rows, 0.9, "none", None, 0.1)
    assert cell["runs"] == 3 and cell["diverged"] == 1
    # Its final accuracy is its last evaluation's (chance), in the mean; it passed 0.85 before diverging
    # but does not reach the target.
    assert cell["final_acc_per_seed"] == [0.1, 0.83, 0.84]
    assert cell["final_acc_mean"] == pytest.approx((0.1 + 0.83 + 0.84) / 3)
    assert cell["final_acc_ci95"] == pytest.approx(t_half([0.1, 0.83, 0.84]))
    assert cell["steps_to_target_per_seed"] == [None, 1000, 1000] and cell["seeds_reaching_target"] == 2
    assert cell["steps_to_target_mean"] == 1000


def test_a_running_run_is_left_out_and_counted(rows):
    cell = find(rows, 0.9, "builtin", 0.01, 0.01)
    assert cell["incomplete"] == 1 and cell["runs"] == 3 and cell["seeds"] == [0, 1, 2]
    assert cell["final_acc_mean"] == pytest.approx(0.86)


def test_area_where_each_trains(rows):
    area = {(a["protocol"], a["norm"], a["init_std"]): a for a in area_rows(rows)}
    whole = area[("momentum0.9", "none", "all")]
    # 0.01: 10%, 10%; default: 83% (trains), 59% (>= 50% only).
    assert (whole["cells"], whole["trains_80"], whole["trains_50"]) == (4, 1, 2)
    assert whole["lrs_trains"] == [0.01] and whole["diverged"] == 1 and whole["runs"] == 12
    assert whole["best_final_acc"] == pytest.approx(0.83) and whole["best_final_acc_init_std"] is None
    # (default, 0.1) reaches it at 1,000 steps but with 2 of 3 seeds: the fastest full cell is lr 0.01's.
    assert whole["fewest_steps_to_target"] == 1500 and whole["fewest_steps_lr"] == 0.01
    small = area[("momentum0.9", "none", 0.01)]
    assert (small["cells"], small["trains_80"], small["trains_50"]) == (2, 0, 0)
    assert small["fewest_steps_to_target"] is None and "fewest_steps_init_std" not in small
    default = area[("momentum0.9", "none", None)]
    assert (default["cells"], default["trains_80"], default["trains_50"]) == (2, 1, 2)
    plain = area[("plain_sgd", "none", "all")]
    assert (plain["trains_80"], plain["trains_50"]) == (0, 2)
    for protocol in ("momentum0.9", "plain_sgd"):
        bn = area[(protocol, "builtin", "all")]
        assert (bn["cells"], bn["trains_80"], bn["trains_50"], bn["diverged"]) == (4, 4, 4, 0)
        assert bn["lrs_trains"] == [0.01, 0.1] and bn["fewest_steps_to_target"] == 1000


def test_spread_across_init_stds(rows):
    spread = {(s["protocol"], s["norm"], s["lr"]): s for s in spread_rows(rows)}
    s = spread[("momentum0.9", "none", 0.01)]
    assert s["final_acc_min"] == pytest.approx(0.1) and s["final_acc_max"] == pytest.approx(0.83)
    assert s["final_acc_spread"] == pytest.approx(0.73) and s["init_stds_reaching_target"] == 1
    assert s["steps_to_target_min"] == s["steps_to_target_max"] == 1500
    bn = spread[("momentum0.9", "builtin", 0.1)]
    assert bn["final_acc_spread"] == pytest.approx(0.0) and bn["init_stds_reaching_target"] == 2


def test_markdown_table_and_summary(rows):
    momentum = [r for r in rows if r["momentum"] == 0.9]
    md = cell_markdown(momentum)
    half = 100 * t_half([0.1, 0.83, 0.84])
    assert f"| no BN | PyTorch default | 0.1 | 59.00% +- {half:.2f} (3) | 1,000 +- 0 (2/3) | 1 |" in md
    assert "| no BN | 0.01 | 0.01 | 10.00% +- 0.00 (3) | >2,000 (0/3) | 0 |" in md
    assert "| BN | 0.01 | 0.01 | 86.00% +- " in md and "(3, 1 incomplete)" in md
    area, spread = area_rows(rows), spread_rows(rows)
    text = summary_text(rows, area, spread)
    assert "Fashion-MNIST, 2,000 steps" in text
    assert "no BN trains in 1 of 4 cells (>= 50%: 2)" in text and "BN trains in 4 of 4 cells" in text
    assert "1 of 12 runs diverged" in text and "**plain SGD (momentum 0)**: no BN trains in 0 of 4" in text


def test_script_writes_figures_and_tables(grid, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "lr_init_grid.py"), str(grid), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert (out / "lr_init_grid_summary.md").read_text() in result.stdout
    for tag in ("momentum0.9", "plain_sgd"):
        for png in (f"lr_init_grid_final_acc_{tag}.png", f"lr_init_grid_steps_to_80_{tag}.png"):
            assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / f"lr_init_grid_table_{tag}.md").is_file()
    with open(out / "lr_init_grid_table_momentum0.9.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == CELL_COLUMNS and len(table) == 8
    row = next(r for r in table if (r["norm"], r["init_std"], r["lr"]) == ("none", "null", "0.1"))
    assert (row["runs"], row["diverged"], row["seeds_reaching_target"]) == ("3", "1", "2")
    assert float(row["final_acc_mean"]) == pytest.approx(0.59)
    assert row["steps_to_target_per_seed"] == ";1000;1000"
    with open(out / "lr_init_grid_area.csv", newline="") as f:
        area = {(r["protocol"], r["norm"], r["init_std"]): r for r in csv.DictReader(f)}
    assert area[("momentum0.9", "none", "all")]["trains_80"] == "1"
    assert area[("momentum0.9", "none", "null")]["trains_50"] == "2"
    assert "## Area of the grid where each trains" in (out / "lr_init_grid.md").read_text()


def test_cells_that_would_mix_settings_are_an_error(tmp_path):
    accs = jump(0.85, 500)
    common = {"norm": "none", "momentum": 0.9, "init_std": 0.01, "lr": 0.1, "accs": accs}
    write_run(tmp_path / "a" / "0", seed=0, **common)
    write_run(tmp_path / "a" / "1", seed=1, activation="relu", **common)
    with pytest.raises(ValueError, match="differ in another setting"):
        grid_cells(load_all([tmp_path / "a"]))
    write_run(tmp_path / "b" / "0", seed=0, **common)
    write_run(tmp_path / "b" / "1", seed=1, max_steps=4000, **common)
    with pytest.raises(ValueError, match="mix planned lengths"):
        grid_cells(load_all([tmp_path / "b"]))
    with pytest.raises(FileNotFoundError):
        analyse(load_all([tmp_path / "nowhere"]), tmp_path / "out")
