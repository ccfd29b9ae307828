"""The figure script on small fixture runs in the train app's formats (bn_repro/records/run_files.py)."""

import csv
import importlib.util
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from bn_repro.analysis.figures import NoRunsError, load_all, make_figures, split_curves
from bn_repro.measures.activations import ACTIVATIONS_COLUMNS
from bn_repro.records.run_files import (
    METRICS_COLUMNS,
    METRICS_FILE,
    SUMMARY_FILE,
    CsvLog,
    measurement_file,
    read_csv,
    write_json_atomic,
)

FIG1_STEPS = tuple(range(0, 1001, 100))
FIG2_STEPS = tuple(range(0, 2001, 200))
LAYERS = ("hidden1", "hidden2", "hidden3")
UNITS = (0, 1)


def accuracy_curve(steps, ceiling: float, tau: float) -> list[float]:
    """A rising learning curve, distinct at every step (no ties with a target)."""
    return [0.1 + (ceiling - 0.1) * (1 - math.exp(-s / tau)) for s in steps]


def write_run(
    run_dir,
    experiment,
    norm,
    seed,
    steps,
    test_acc,
    dataset="fashion_mnist",
    status="finished",
    max_steps=None,
):
    """One run dir as bn_repro.train writes it (a diverged run stops early, its accuracy at chance)."""
    run_dir.mkdir(parents=True)
    metrics = CsvLog(run_dir / METRICS_FILE, METRICS_COLUMNS)
    activations = CsvLog(run_dir / measurement_file("activations"), ACTIVATIONS_COLUMNS)
    for i, (step, acc) in enumerate(zip(steps, test_acc, strict=True)):
        metrics.write({
            "step": step, "epoch": step // 1000, "train_loss": 2.3 - acc, "train_acc": acc,
            "test_loss": 2.3 - acc, "test_acc": acc, "lr": 0.01, "wall_time_s": step / 100,
            "steps_per_s": 100.0,
        })  # fmt: skip
        # Without BN the unit's input drifts; with BN it stays put (paper Fig. 1(b,c)).
        center = -0.01 * i if norm == "none" else 0.0
        activations.write([
            {"step": step, "layer": layer, "unit": unit, "p15": center - 1, "p50": center, "p85": center + 1,
             "mean": center, "std": 1.0, "layer_mean": center, "layer_std": 1.0}
            for layer in LAYERS for unit in UNITS
        ])  # fmt: skip
    metrics.close()
    activations.close()
    config = {
        "experiment_name": experiment,
        "seed": seed,
        "data": {"name": dataset, "batch_size": 60, "augment": False},
        "model": {"activation": "sigmoid"},
        "norm": {"kind": norm, **({"backward": "explicit"} if norm == "custom" else {})},
        "optim": {"lr": 0.01},
        "trainer": {"max_steps": max_steps or steps[-1]},
        "probe": {"units": list(UNITS), "num_examples": 1000, "mode": "eval"},
    }
    write_json_atomic(run_dir / SUMMARY_FILE, {
        "status": status, "experiment_name": experiment, "final_test_acc": test_acc[-1],
        "best_test_acc": max(test_acc), "steps": steps[-1], "wall_time_s": steps[-1] / 100,
        "steps_per_s": 100.0, "diverged": status == "diverged", "config": config,
    })  # fmt: skip


# The Fig. 2 fixture: (ceiling, tau) of each finished seed; a tau per seed keeps the seeds apart.
FIG2_FINISHED = {
    "fig2_inception": {0: (0.70, 600.0), 1: (0.71, 500.0)},
    "fig2_bn_baseline": {0: (0.74, 300.0), 1: (0.73, 350.0)},
    "fig2_bn_x5": {0: (0.78, 100.0)},  # its seed 1 diverged
    "fig2_sigmoid": {0: (0.30, 400.0), 1: (0.31, 450.0)},  # never reaches the baseline
}
DIVERGED = (("fig2_bn_x5", 1), ("fig2_bn_x30", 0), ("fig2_bn_x30", 1))  # bn_x30: every seed diverged


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    """Nested like multirun/<experiment>/<time>/<job>/: the script must search folders recursively."""
    root = tmp_path_factory.mktemp("runs")
    job = 0
    for norm in ("none", "builtin"):
        for seed in (0, 1):
            curve = accuracy_curve(FIG1_STEPS, 0.85 if norm == "none" else 0.88, 400.0 + 50 * seed)
            write_run(
                root / "multirun/fig1/t0" / str(job), "fig1_fashion_mnist", norm, seed, FIG1_STEPS, curve
            )
            job += 1
    for name, seeds in FIG2_FINISHED.items():
        for seed, (ceiling, tau) in seeds.items():
            curve = accuracy_curve(FIG2_STEPS, ceiling, tau)
            write_run(root / "multirun" / name / "t0" / str(seed), name, "builtin", seed, FIG2_STEPS, curve,
                      dataset="cifar10")  # fmt: skip
    for name, seed in DIVERGED:
        steps = FIG2_STEPS[:4]
        write_run(root / "multirun" / name / "t0" / str(seed), name, "builtin", seed, steps,
                  [*accuracy_curve(steps[:-1], 0.8, 100.0), 0.1], dataset="cifar10", status="diverged",
                  max_steps=FIG2_STEPS[-1])  # fmt: skip
    return root


@pytest.fixture(scope="module")
def made(runs_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("figures")
    return out, make_figures([runs_root], out)


def seed_mean(name: str) -> np.ndarray:
    """The expected curve of a variant: the mean of its finished seeds, from the fixture's parameters."""
    return np.mean([accuracy_curve(FIG2_STEPS, *p) for p in FIG2_FINISHED[name].values()], axis=0)


def first_step_at(curve: np.ndarray, target: float) -> int | None:
    reached = np.flatnonzero(curve >= target)
    return FIG2_STEPS[reached[0]] if len(reached) else None


def test_writes_every_figure_under_its_name(made):
    out, report = made
    names = {p.name for p in out.iterdir()}
    for stem in (
        "fig1a_test_accuracy_fashion_mnist",
        "fig1bc_activations_fashion_mnist",
        "fig2_speedup_cifar10",
    ):
        assert {f"{stem}.png", f"{stem}.pdf"} <= names
        assert (out / f"{stem}.png").read_bytes().startswith(b"\x89PNG")
    assert {"fig3_table_cifar10.md", "fig3_table_cifar10.csv", "summary.csv"} <= names
    assert {p.name for p in report.written} == names


def test_fig3_table_matches_the_fixture(made):
    out, _ = made
    rows = {r["variant"]: r for r in read_csv(out / "fig3_table_cifar10.csv")}
    baseline = seed_mean("fig2_inception")
    target = baseline.max()
    baseline_steps = first_step_at(baseline, target)
    for name in ("fig2_inception", "fig2_bn_baseline", "fig2_bn_x5"):
        row, curve = rows[name], seed_mean(name)
        steps = first_step_at(curve, target)
        assert row["status"] == "reached"
        assert float(row["target_acc"]) == pytest.approx(target)
        assert int(row["steps_to_target"]) == steps
        assert float(row["speedup"]) == pytest.approx(baseline_steps / steps)
        assert float(row["max_acc"]) == pytest.approx(curve.max())
        assert int(row["runs"]) == len(FIG2_FINISHED[name]) + sum(n == name for n, _ in DIVERGED)
    # The faster variants reach the target first (the fixture is built so).
    assert int(rows["fig2_bn_x5"]["steps_to_target"]) < int(rows["fig2_inception"]["steps_to_target"])
    assert rows["fig2_sigmoid"]["status"] == "not reached"
    assert rows["fig2_sigmoid"]["steps_to_target"] == "" and rows["fig2_sigmoid"]["speedup"] == ""
    assert float(rows["fig2_sigmoid"]["max_acc"]) == pytest.approx(seed_mean("fig2_sigmoid").max())


def test_diverged_runs_are_reported_and_kept_out_of_the_mean(made):
    out, report = made
    rows = {r["variant"]: r for r in read_csv(out / "fig3_table_cifar10.csv")}
    assert rows["fig2_bn_x30"]["status"] == "diverged"
    assert rows["fig2_bn_x30"]["diverged"] == "2" and rows["fig2_bn_x30"]["max_acc"] == ""
    # bn_x5's diverged seed is counted, and its max accuracy is that of the finished seed alone.
    assert rows["fig2_bn_x5"]["diverged"] == "1"
    markdown = (out / "fig3_table_cifar10.md").read_text()
    assert "CIFAR-10" in markdown and "| fig2_bn_x30 |" in markdown and "diverged" in markdown
    summary = read_csv(out / "summary.csv")
    diverged = {(r["experiment_name"], int(r["seed"])) for r in summary if r["diverged"] == "True"}
    assert diverged == set(DIVERGED)
    assert sum("diverged at step" in note for note in report.notes) == len(DIVERGED)


def test_missing_variant_is_absent(made):
    out, _ = made
    variants = [r["variant"] for r in read_csv(out / "fig3_table_cifar10.csv")]
    assert "fig2_bn_x5_sigmoid" not in variants
    assert "fig2_bn_x5_sigmoid" not in (out / "fig3_table_cifar10.md").read_text()
    assert variants[0] == "fig2_inception"


def test_summary_csv_has_one_row_per_run(made):
    out, _ = made
    rows = read_csv(out / "summary.csv")
    expected_runs = 4 + sum(len(s) for s in FIG2_FINISHED.values()) + len(DIVERGED)
    assert len(rows) == expected_runs
    fig1 = [r for r in rows if r["experiment_name"] == "fig1_fashion_mnist"]
    assert sorted((r["norm"], r["seed"]) for r in fig1) == [("builtin", "0"), ("builtin", "1"),
                                                             ("none", "0"), ("none", "1")]  # fmt: skip
    assert all(r["dataset"] == "fashion_mnist" and r["steps"] == str(FIG1_STEPS[-1]) for r in fig1)


def test_missing_baseline_gives_a_note_not_a_crash(tmp_path):
    for seed in (0, 1):
        write_run(tmp_path / "runs" / str(seed), "fig2_bn_x5", "builtin", seed, FIG2_STEPS,
                  accuracy_curve(FIG2_STEPS, 0.8, 100.0), dataset="cifar10")  # fmt: skip
    report = make_figures([tmp_path / "runs"], tmp_path / "out")
    assert (tmp_path / "out/fig2_speedup_cifar10.png").exists()
    assert not (tmp_path / "out/fig3_table_cifar10.csv").exists()
    note = (tmp_path / "out/fig3_table_cifar10.md").read_text()
    assert "fig2_inception" in note and "not computed" in note
    assert any("Fig. 1 skipped" in n for n in report.notes)
    assert any("fig2_inception" in n for n in report.notes)


def test_no_runs_is_an_error(tmp_path):
    with pytest.raises(NoRunsError, match="no run dirs"):
        make_figures([tmp_path], tmp_path / "out")
    with pytest.raises(NoRunsError, match="no such run dir"):
        make_figures([tmp_path / "absent"], tmp_path / "out")


@pytest.fixture
def script():
    """scripts/make_figures.py as a module, so that its main() runs in this process."""
    spec = importlib.util.spec_from_file_location("make_figures", REPO / "scripts/make_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli(runs_root, tmp_path):
    fig1_dir = runs_root / "multirun/fig1/t0"
    done = subprocess.run(
        [sys.executable, REPO / "scripts/make_figures.py", fig1_dir, "--out", tmp_path / "out"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "Fig. 2 and the Fig. 3 table skipped" in done.stdout
    assert (tmp_path / "out/fig1a_test_accuracy_fashion_mnist.png").exists()
    assert not list((tmp_path / "out").glob("fig2*"))


def test_cli_without_runs_exits_nonzero(script, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert script.main([str(empty)]) == 1
    assert "no run dirs" in capsys.readouterr().err


def test_cli_defaults_to_the_curated_result_sets(script, tmp_path, monkeypatch):
    """Without run dirs the script reads the result sets behind results/figures/ and writes there; a run
    elsewhere under results/ (another result set, drawn by its own command) is not mixed in."""
    results = tmp_path / "results"
    write_run(results / "fig1_set" / "fig1_none", "fig1_fashion_mnist", "none", 0, FIG1_STEPS,
              accuracy_curve(FIG1_STEPS, 0.8, 300.0))  # fmt: skip
    write_run(results / "other_set" / "run", "fig1_fashion_mnist", "builtin", 0, FIG1_STEPS,
              accuracy_curve(FIG1_STEPS, 0.9, 100.0))  # fmt: skip
    monkeypatch.setattr(script, "RESULTS", results)
    monkeypatch.setattr(script, "RESULT_SETS", (results / "fig1_set",))
    assert script.main([]) == 0
    with open(results / "figures/summary.csv", newline="") as f:
        assert [r["norm"] for r in csv.DictReader(f)] == ["none"]
    monkeypatch.setattr(script, "RESULT_SETS", (tmp_path / "no_results",))
    assert script.main([]) == 1


def test_runs_of_different_settings_are_separate_curves(tmp_path):
    """Seeds are averaged; a run with another learning rate is a curve of its own, its label says so."""
    for name, norm, seed, lr in (("a", "custom", 0, 0.01), ("b", "custom", 1, 0.01), ("c", "custom", 0, 0.1),
                                 ("d", "none", 0, 0.01)):  # fmt: skip
        write_run(
            tmp_path / name,
            "fig1_fashion_mnist",
            norm,
            seed,
            FIG1_STEPS,
            accuracy_curve(FIG1_STEPS, 0.8, 300),
        )
        summary_path = tmp_path / name / SUMMARY_FILE
        summary = json.loads(summary_path.read_text())
        summary["config"]["optim"]["lr"] = lr
        write_json_atomic(summary_path, summary)
    curves = split_curves(load_all([tmp_path]), lambda run: run.norm_label)
    assert {label: sorted(r.seed for r in runs) for label, runs in curves.items()} == {
        "BN (custom, explicit) [optim.lr=0.01]": [0, 1],
        "BN (custom, explicit) [optim.lr=0.1]": [0],
        "no BN [optim.lr=0.01]": [0],
    }


def test_fig1_table_matches_the_fixture(made):
    out, _ = made
    rows = {r["curve"]: r for r in read_csv(out / "fig1_table_fashion_mnist.csv")}
    assert set(rows) == {"no BN", "BN (builtin)"}
    curves = {
        norm: np.mean([accuracy_curve(FIG1_STEPS, ceiling, 400.0 + 50 * seed) for seed in (0, 1)], axis=0)
        for norm, ceiling in (("none", 0.85), ("builtin", 0.88))
    }
    target = curves["none"].max()
    assert float(rows["no BN"]["target_acc"]) == pytest.approx(target)
    reached = {n: FIG1_STEPS[np.flatnonzero(c >= target)[0]] for n, c in curves.items()}
    assert int(rows["no BN"]["steps_to_target"]) == reached["none"]
    assert int(rows["BN (builtin)"]["steps_to_target"]) == reached["builtin"]
    assert float(rows["BN (builtin)"]["speedup"]) == pytest.approx(reached["none"] / reached["builtin"])
    finals = [accuracy_curve(FIG1_STEPS, 0.88, 400.0 + 50 * seed)[-1] for seed in (0, 1)]
    assert float(rows["BN (builtin)"]["final_acc_mean"]) == pytest.approx(np.mean(finals))
    assert float(rows["BN (builtin)"]["final_acc_std"]) == pytest.approx(np.std(finals, ddof=1))
    assert "(no-BN best)" in (out / "fig1_table_fashion_mnist.md").read_text()


def test_the_no_bn_target_is_found_when_each_norm_has_its_own_setting(tmp_path):
    """Each norm at its own learning rate: the curves' labels carry the rate, the no-BN one is still the
    target of the Fig. 1 table."""
    for norm, lr, tau in (("none", 1.1, 400.0), ("builtin", 2.1, 100.0)):
        run_dir = tmp_path / norm
        write_run(run_dir, "fig1_fashion_mnist", norm, 0, FIG1_STEPS, accuracy_curve(FIG1_STEPS, 0.8, tau))
        summary = json.loads((run_dir / SUMMARY_FILE).read_text())
        summary["config"]["optim"]["lr"] = lr
        write_json_atomic(run_dir / SUMMARY_FILE, summary)
    from bn_repro.analysis.figures import fig1_rows

    rows = {r["curve"]: r for r in fig1_rows(load_all([tmp_path]))}
    assert set(rows) == {"no BN [optim.lr=1.1]", "BN (builtin) [optim.lr=2.1]"}
    assert rows["no BN [optim.lr=1.1]"]["target_acc"] is not None
    assert rows["BN (builtin) [optim.lr=2.1]"]["speedup"] > 1


def test_the_committed_tables_are_the_scripts_output_for_the_committed_runs(script, tmp_path, monkeypatch):
    """results/figures/'s tables, regenerated from the result sets the script reads by default: the same
    files, byte for byte (the figures themselves are not drawn here: matplotlib's output varies with its
    version). After a change of a table's format, regenerate them: python scripts/make_figures.py."""
    import bn_repro.analysis.figures as figures

    for name in ("plot_fig1a", "plot_fig2"):
        monkeypatch.setattr(figures, name, lambda *args, **kwargs: None)
    monkeypatch.setattr(figures, "plot_fig1bc", lambda *args, **kwargs: True)
    committed = REPO / "results/figures"
    out = tmp_path / "figures"
    assert script.main([*map(str, script.RESULT_SETS), "--out", str(out)]) == 0
    tables = sorted(p.name for p in committed.iterdir() if p.suffix in (".csv", ".md"))
    assert tables and set(tables) <= {p.name for p in out.iterdir()}
    for name in tables:
        if name == "summary.csv":  # run_dir is relative to the output folder: compare the dirs it names
            rows = {}
            for folder in (committed, out):
                with open(folder / name, newline="") as f:
                    rows[folder] = [
                        {**r, "run_dir": (folder / r["run_dir"]).resolve()} for r in csv.DictReader(f)
                    ]
            assert rows[out] == rows[committed]
        else:
            assert (out / name).read_text() == (committed / name).read_text(), name
