"""The claims ledger (bn_repro/analysis/claims.py) and the runs table under it (runs_table.py)."""

from __future__ import annotations

import json
import math

import pytest
from conftest import REPO
from test_figures import FIG1_STEPS, LAYERS, UNITS, accuracy_curve, write_run

from bn_repro.analysis import claims, runs_table
from bn_repro.analysis.claims import HOLDS, IN_KIND, NOT_REPRODUCED, OPPOSITE, Effect, verdict
from bn_repro.measures.activations import ACTIVATIONS_COLUMNS
from bn_repro.measures.train_eval import TrainEval
from bn_repro.records.run_files import METRICS_COLUMNS, CsvLog, measurement_file

RESULTS = REPO / "results"
COMMAND = "python scripts/claims.py --out results/CLAIMS.md"


def test_claims_md_regenerates_from_the_committed_runs():
    rows = claims.evaluate(RESULTS)
    assert claims.markdown(rows, COMMAND) == (RESULTS / "CLAIMS.md").read_text()


# ---------------------------------------------------------------------------------------------- the rule


def effect(values, paper=None, seeds=None, agree=None):
    return Effect(dict(enumerate(values)), len(values) if seeds is None else seeds, paper, agree)


def test_an_interval_above_zero_holds():
    assert verdict(effect([1.0, 1.2, 0.9, 1.1])) == HOLDS


def test_an_interval_above_zero_but_short_of_the_papers_size_holds_in_kind():
    assert verdict(effect([1.0, 1.2, 0.9, 1.1], paper=5.0)) == IN_KIND
    assert verdict(effect([1.0, 1.2, 0.9, 1.1], paper=1.1)) == HOLDS  # the interval reaches it


def test_an_interval_over_zero_with_most_seeds_positive_holds_in_kind():
    assert verdict(effect([2.0, 1.5, -1.0])) == IN_KIND


def test_an_interval_over_zero_without_a_majority_is_not_reproduced():
    assert verdict(effect([3.0, -1.0, -1.0])) == NOT_REPRODUCED  # mean positive, 1 of 3 seeds
    assert verdict(effect([0.0, 0.0, 0.0])) == NOT_REPRODUCED  # no effect at all
    assert verdict(effect([])) == NOT_REPRODUCED  # no seed has a value


def test_seeds_without_a_value_count_against_the_majority():
    # Two of four seeds have a value (e.g. reach a target); both positive, but not most of those run.
    assert verdict(effect([1.0, 5.0], seeds=4)) == NOT_REPRODUCED
    # A seed on the paper's side without a value (only the BN net reaches the target) counts for it.
    assert verdict(effect([1.0, 5.0], seeds=3, agree=3)) == IN_KIND


def test_one_seed_is_at_best_in_kind():
    assert verdict(effect([2.0])) == IN_KIND
    assert verdict(effect([-2.0])) == NOT_REPRODUCED


def test_an_interval_below_zero_is_opposite():
    assert verdict(effect([-1.0, -1.2, -0.9])) == OPPOSITE


# ---------------------------------------------------------------------------------------------- the table


def test_runs_table_is_tidy_with_the_config_flattened(tmp_path):
    curves = {("none", 0): 0.80, ("builtin", 0): 0.85, ("builtin", 1): 0.86}
    for (norm, seed), ceiling in curves.items():
        acc = accuracy_curve(FIG1_STEPS, ceiling, 300.0)
        write_run(tmp_path / f"{norm}_seed{seed}", "fig1", norm, seed, FIG1_STEPS, acc)
    table = runs_table.load_runs([tmp_path], files=runs_table.ALL_FILES)
    assert {"run", "file", "step", "metric", "value", "norm.kind", "seed", "optim.lr", "data.batch_size",
            "summary.final_test_acc", "layer", "unit"} <= set(table.columns)  # fmt: skip
    metrics = table[table["file"] == runs_table.METRICS]
    activations = table[table["file"] == "activations"]
    metric_values = len(METRICS_COLUMNS) - 1  # every column but step
    unit_values = len(ACTIVATIONS_COLUMNS) - 3  # every column but step, layer and unit (its index)
    assert len(metrics) == len(curves) * len(FIG1_STEPS) * metric_values
    assert len(activations) == len(curves) * len(FIG1_STEPS) * len(LAYERS) * len(UNITS) * unit_values
    assert set(activations["layer"]) == set(LAYERS)
    assert metrics["metric"].nunique() == metric_values and activations["metric"].nunique() == unit_values
    final = runs_table.last_values(table, "test_acc")
    for (norm, seed), ceiling in curves.items():
        row = runs_table.select(final, norm__kind=norm, seed=seed)
        expected = accuracy_curve(FIG1_STEPS, ceiling, 300.0)[-1]
        assert float(row["value"].iloc[0]) == pytest.approx(expected)
        assert float(row["summary.final_test_acc"].iloc[0]) == pytest.approx(expected)
    assert runs_table.per_seed(runs_table.select(final, norm__kind="builtin")) == {
        0: pytest.approx(accuracy_curve(FIG1_STEPS, 0.85, 300.0)[-1]),
        1: pytest.approx(accuracy_curve(FIG1_STEPS, 0.86, 300.0)[-1]),
    }
    with pytest.raises(FileNotFoundError):
        runs_table.load_runs([tmp_path / "absent"])


# ---------------------------------------------------------------------------------------------- dropout


DROPOUT = [c for c in claims.CLAIMS if c.dirs == (claims.D_DIR,)]


def test_dropout_claims_are_pending_until_their_runs_land(tmp_path):
    rows = claims.evaluate(tmp_path, DROPOUT)
    assert DROPOUT and all(row.verdict == "pending" for row in rows)
    assert f"results/{claims.D_DIR}" in claims.markdown(rows, COMMAND)


# Test accuracy per (norm, dropout): dropout helps the no-BN net, not the BN net; the no-BN net overfits
# more (its eval-mode train accuracy is further above its test accuracy).
D_TEST_ACC = {("none", 0.0): 0.80, ("none", 0.2): 0.82, ("none", 0.5): 0.83,
              ("builtin", 0.0): 0.86, ("builtin", 0.2): 0.86, ("builtin", 0.5): 0.855}  # fmt: skip
D_TRAIN_ACC = {"none": 0.95, "builtin": 0.90}


def _dropout_runs(root, seeds=(0, 1, 2)):
    """Runs of the dropout_fig1 sweep's layout, written by the real writers, under root/D_DIR."""
    for (norm, rate), acc in D_TEST_ACC.items():
        for seed in seeds:
            run_dir = root / claims.D_DIR / f"{norm}_dropout{rate}_seed{seed}"
            wobble = 0.001 * seed  # seeds differ a little, the same for every setting
            write_run(run_dir, "dropout_fig1", norm, seed, FIG1_STEPS, [acc + wobble] * len(FIG1_STEPS))
            summary = runs_table.read_summary(run_dir)
            summary["config"]["model"]["dropout"] = rate
            (run_dir / "summary.json").write_text(json.dumps(summary))
            log = CsvLog(run_dir / measurement_file("train_eval"), ("step", *TrainEval.columns))
            log.write(
                [{"step": s, "train_loss": 0.1, "train_acc": D_TRAIN_ACC[norm] + wobble} for s in FIG1_STEPS]
            )
            log.close()
    return seeds


def test_dropout_claims_read_their_runs_once_they_land(tmp_path):
    test_acc, train_acc = D_TEST_ACC, D_TRAIN_ACC
    seeds = _dropout_runs(tmp_path)
    rows = claims.evaluate(tmp_path, DROPOUT)
    by_effect = {row.claim.effect: row for row in rows}
    for rate in (0.2, 0.5):
        row = by_effect[f"dropout {rate}'s test acc gain, no BN - BN (points)"]
        gain = 100 * (
            (test_acc["none", rate] - test_acc["none", 0.0])
            - (test_acc["builtin", rate] - test_acc["builtin", 0.0])
        )
        assert row.effect.n == len(seeds)
        assert all(math.isclose(v, gain, abs_tol=1e-9) for v in row.effect.values.values())
        assert row.verdict == HOLDS  # every seed the same gain: an interval of width 0 above 0
    gap = by_effect["train (eval mode) - test acc gap, no BN - BN (points)"].effect
    expected = 100 * (
        (train_acc["none"] - test_acc["none", 0.0]) - (train_acc["builtin"] - test_acc["builtin", 0.0])
    )
    assert all(math.isclose(v, expected, abs_tol=1e-9) for v in gap.values.values())  # fmt: skip


def test_the_dropout_table_gives_each_settings_final_values_and_dropouts_paired_effect(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("dropout_table", REPO / "scripts" / "dropout_table.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    seeds = _dropout_runs(tmp_path)
    table = runs_table.load_runs([tmp_path / claims.D_DIR], files=(runs_table.METRICS, "train_eval"))
    rows = script.curves(table)
    text = script.final_table(rows)
    lines = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): line for line in text.splitlines()[2:]}
    wobble = 100 * 0.001 * sum(seeds) / len(seeds)  # the seeds' mean offset
    for (norm, rate), acc in D_TEST_ACC.items():
        cells = [c.strip() for c in lines[script.NORM_LABELS[norm], f"{rate:g}"].strip("|").split("|")]
        assert cells[2] == str(len(seeds))
        assert cells[3].startswith(f"{100 * acc + wobble:.2f} +- ")
        assert cells[6].startswith(f"{100 * (D_TRAIN_ACC[norm] - acc):.2f} +- ")
        effect = 100 * (acc - D_TEST_ACC[norm, 0.0])
        assert cells[7] == ("-" if rate == 0.0 else f"{effect:.2f} +- 0.00")
    script.figure(rows, tmp_path / "dropout.png")
    assert (tmp_path / "dropout.png").stat().st_size > 0
