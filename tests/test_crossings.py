"""Steps to a test-accuracy level over seeds (bn_repro/analysis/crossings.py, its script)."""

import json
import subprocess
import sys

import pytest
from conftest import REPO
from test_figures import write_run

from bn_repro.analysis import stats
from bn_repro.analysis.crossings import crossing_rows, crossings_markdown, load_curves

STEPS = (0, 100, 200, 300, 400)
# Plateau at chance, then a jump: seed 0 leaves it at step 200, seed 1 at 300, seed 2 at 400; seed 3
# never does; seed 4 diverged (left out, though its curve would cross first).
CURVES = {
    0: [0.1, 0.1, 0.5, 0.8, 0.85],
    1: [0.1, 0.1, 0.1, 0.6, 0.8],
    2: [0.1, 0.1, 0.1, 0.1, 0.7],
    3: [0.1, 0.1, 0.1, 0.1, 0.1],
}


@pytest.fixture
def runs_root(tmp_path):
    for seed, acc in CURVES.items():
        write_run(tmp_path / f"none_{seed}", "fig1_fashion_mnist", "none", seed, STEPS, acc)
    write_run(tmp_path / "none_4", "fig1_fashion_mnist", "none", 4, STEPS[:2], [0.9, 0.9], status="diverged")
    write_run(tmp_path / "bn_0", "fig1_fashion_mnist", "builtin", 0, STEPS, [0.1, 0.9, 0.9, 0.9, 0.9])
    return tmp_path


def test_each_seed_crosses_at_its_first_evaluation_at_or_above_the_level(runs_root):
    curves = load_curves([runs_root])
    assert sorted(curves) == ["fig1_fashion_mnist, norm=builtin", "fig1_fashion_mnist, norm=none"]
    rows = {(r["curve"], r["level"]): r for r in crossing_rows(curves, [0.5, 0.8])}
    none = rows[("fig1_fashion_mnist, norm=none", 0.5)]
    assert none["per_seed"] == {0: 200, 1: 300, 2: 400, 3: None}
    assert (none["runs"], none["finished"], none["seeds_reaching"]) == (5, 4, 3)
    assert (none["steps_mean"], none["steps_ci95"]) == stats.t_interval([200, 300, 400])
    assert (none["steps_min"], none["steps_max"]) == (200, 400)
    # The seed-mean curve: 0.1, 0.1, 0.2, 0.4, 0.6125 -> first at or above 0.5 at step 400.
    assert none["mean_curve_steps"] == 400
    high = rows[("fig1_fashion_mnist, norm=none", 0.8)]
    assert high["per_seed"] == {0: 300, 1: 400, 2: None, 3: None}
    assert high["mean_curve_steps"] is None
    bn = rows[("fig1_fashion_mnist, norm=builtin", 0.8)]
    assert (bn["steps_mean"], bn["steps_ci95"], bn["mean_curve_steps"]) == (100, None, 100)
    text = crossings_markdown(list(rows.values()))
    assert "| fig1_fashion_mnist, norm=none | 50.00% | 3 (4) | 300 +- 248 | 200-400 | 400 |" in text


def test_the_script_prints_the_table_and_refuses_bad_levels(runs_root, tmp_path):
    script = [sys.executable, str(REPO / "scripts" / "steps_to_accuracy.py")]
    out = tmp_path / "table.md"
    done = subprocess.run([*script, str(runs_root), "--levels", "0.5", "--out", str(out)],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == out.read_text() and "norm=none | 50.00% | 3 (4)" in done.stdout
    bad = subprocess.run([*script, str(runs_root), "--levels", "50"], capture_output=True, text=True)
    assert bad.returncode == 2 and "(0, 1], got [50.0]" in bad.stderr
    missing = subprocess.run(
        [*script, str(tmp_path / "nope"), "--levels", "0.5"], capture_output=True, text=True
    )
    assert missing.returncode == 1 and "nope" in missing.stderr and "Traceback" not in missing.stderr


def test_runs_that_differ_in_a_setting_are_separate_curves(tmp_path):
    # Two learning rates of one norm are two curves, never one mean (as the figures split them).
    for seed, lr in ((0, 0.01), (1, 0.1)):
        run_dir = tmp_path / f"none_lr{lr}"
        write_run(run_dir, "fig1_fashion_mnist", "none", seed, STEPS, CURVES[seed])
        summary = json.loads((run_dir / "summary.json").read_text())
        summary["config"]["optim"]["lr"] = lr
        (run_dir / "summary.json").write_text(json.dumps(summary))
    curves = load_curves([tmp_path])
    assert sorted(curves) == [
        "fig1_fashion_mnist, norm=none [optim.lr=0.01]",
        "fig1_fashion_mnist, norm=none [optim.lr=0.1]",
    ]
    rows = {r["curve"]: r for r in crossing_rows(curves, [0.5])}
    assert rows["fig1_fashion_mnist, norm=none [optim.lr=0.1]"]["per_seed"] == {1: 300}
