"""Intervals over seeds (bn_repro/analysis/stats.py) and the Fig. 1 table's intervals, per-seed steps
and paired differences against torch's BN (bn_repro/analysis/figures.py)."""

import math

import numpy as np
import pytest
from test_figures import FIG1_STEPS, accuracy_curve, write_run

from bn_repro.analysis import stats
from bn_repro.analysis.figures import (
    _p50_over_seeds,
    fig1_differences,
    fig1_rows,
    load_all,
    make_figures,
    split_curves,
)
from bn_repro.records.run_files import read_csv


def test_t_interval_of_a_textbook_sample():
    # 1, 2, 3: mean 2, sample std 1; t(0.975, 2 df) = 4.3027 (any t table).
    mean, half = stats.t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert half == pytest.approx(4.3027 / math.sqrt(3), rel=1e-4)
    assert stats.t_interval([5.0]) == (5.0, None)
    assert stats.t_interval([]) == (None, None)
    with pytest.raises(ValueError, match="non-finite"):
        stats.t_interval([1.0, math.nan])


def test_the_t_interval_covers_the_mean_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    samples = rng.normal(3.0, 2.0, size=(4000, 10))
    covered = 0
    for sample in samples:
        mean, half = stats.t_interval(sample)
        covered += abs(mean - 3.0) <= half
    # Binomial(4000, 0.95): std 0.0034; 4 std either side.
    assert covered / len(samples) == pytest.approx(0.95, abs=0.014)


def test_a_paired_difference_uses_the_seeds_both_have():
    diff = stats.paired_difference({0: 1.0, 1: 2.1, 2: 3.7, 7: 9.0}, {0: 0.5, 1: 1.5, 2: 3.0, 3: 0.0})
    assert diff.pairs == 3
    assert diff.mean == pytest.approx(0.6)
    assert diff.ci == pytest.approx(stats.t_interval([0.5, 0.6, 0.7])[1])
    assert diff.excludes_zero is True
    same = stats.paired_difference({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0})
    assert (same.mean, same.ci, same.excludes_zero) == (0.0, 0.0, False)
    assert stats.paired_difference({0: 1.0}, {1: 1.0}).excludes_zero is None


SEEDS = range(4)


@pytest.fixture
def fig1_runs(tmp_path):
    """No BN (slow, lower), torch's BN and the custom BN (the same curves, one seed's final accuracy
    moved by +0.002), four seeds each."""
    for seed in SEEDS:
        write_run(tmp_path / f"none{seed}", "fig1_fashion_mnist", "none", seed, FIG1_STEPS,
                  accuracy_curve(FIG1_STEPS, 0.85 + 0.002 * seed, 400.0 + 40 * seed))  # fmt: skip
        bn = accuracy_curve(FIG1_STEPS, 0.88 + 0.003 * seed, 150.0 + 20 * seed)
        write_run(tmp_path / f"builtin{seed}", "fig1_fashion_mnist", "builtin", seed, FIG1_STEPS, bn)
        custom = [*bn[:-1], bn[-1] + (0.002 if seed == 1 else 0.0)]
        write_run(tmp_path / f"custom{seed}", "fig1_fashion_mnist", "custom", seed, FIG1_STEPS, custom)
    return tmp_path


def test_fig1_rows_give_intervals_and_each_seeds_steps_to_the_target(fig1_runs):
    runs = load_all([fig1_runs])
    rows = {r["curve"]: r for r in fig1_rows(runs)}
    curves = split_curves(runs, lambda r: r.norm_label)
    finals = [r.summary["final_test_acc"] for r in curves["BN (builtin)"]]
    assert rows["BN (builtin)"]["final_acc_ci95"] == pytest.approx(stats.t_interval(finals)[1])
    target = rows["no BN"]["target_acc"]
    per_seed = []
    for run in curves["BN (builtin)"]:
        accs = np.array(run.run.test_acc)
        per_seed.append(run.run.steps[int(np.flatnonzero(accs >= target)[0])])
    assert rows["BN (builtin)"]["seeds_reaching_target"] == len(SEEDS)
    mean, half = stats.t_interval(per_seed)
    assert rows["BN (builtin)"]["seed_steps_to_target_mean"] == pytest.approx(mean)
    assert rows["BN (builtin)"]["seed_steps_to_target_ci95"] == pytest.approx(half)
    # The no-BN target is the best of the seed-mean curve: only the best no-BN seeds reach it.
    assert 0 < rows["no BN"]["seeds_reaching_target"] < len(SEEDS)


def test_the_differences_against_torchs_bn_are_paired_by_seed(fig1_runs):
    rows = {r["curve"]: r for r in fig1_differences(load_all([fig1_runs]))}
    assert set(rows) == {"no BN", "BN (custom, explicit)"}
    custom = rows["BN (custom, explicit)"]
    assert custom["reference"] == "BN (builtin)" and custom["pairs"] == len(SEEDS)
    assert custom["final_acc_diff_mean"] == pytest.approx(0.002 / len(SEEDS))
    assert custom["final_acc_diff_ci95"] == pytest.approx(stats.t_interval([0, 0.002, 0, 0])[1])
    assert custom["interval_excludes_zero"] is False
    assert custom["best_acc_diff_mean"] == pytest.approx(0.002 / len(SEEDS))
    assert rows["no BN"]["final_acc_diff_mean"] < 0 and rows["no BN"]["interval_excludes_zero"] is True


def test_no_reference_no_differences(fig1_runs):
    runs = [r for r in load_all([fig1_runs]) if r.norm_kind != "builtin"]
    assert fig1_differences(runs) == []


def test_the_table_files_carry_the_intervals(fig1_runs, tmp_path):
    out = tmp_path / "figures"
    report = make_figures([fig1_runs], out)
    table = (out / "fig1_table_fashion_mnist.md").read_text()
    assert "95% Student t-interval" in table and "paired by seed" in table
    differences = read_csv(out / "fig1_table_fashion_mnist_differences.csv")
    assert [d["curve"] for d in differences] == ["no BN", "BN (custom, explicit)"]
    assert out / "fig1bc_activations_fashion_mnist.png" in report.written


def test_the_p50_spread_is_over_the_finished_seeds_with_probe_rows(fig1_runs):
    runs = [r for r in load_all([fig1_runs]) if r.norm_kind == "none"]
    steps, values = _p50_over_seeds(runs)
    assert values.shape == (len(SEEDS), len(FIG1_STEPS)) and list(steps) == list(FIG1_STEPS)
    # The fixture's no-BN unit drifts by -0.01 per evaluation in every seed.
    assert np.allclose(values, -0.01 * np.arange(len(FIG1_STEPS)))
    assert _p50_over_seeds(runs[:1]) is None
