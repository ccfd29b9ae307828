"""scripts/santurkar_figures.py (bn_repro/analysis/santurkar.py) on small real runs of the train app:
synthetic data, a dozen steps, every Santurkar measurement on."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import shutil

import numpy as np
import pytest
from conftest import REPO, SMOKE, compose_config

from bn_repro.analysis.figures import load_all
from bn_repro.analysis.santurkar import (
    LAYER_COLUMNS,
    TABLE_COLUMNS,
    MissingMeasurementError,
    NoRunsError,
    collect_runs,
    make_santurkar_figures,
    table_rows,
    variants_of,
)
from bn_repro.records.run_files import read_csv, read_measurement
from bn_repro.train import train

MEASURED = [
    "measure.ics_gradient.every=3",
    "measure.landscape.every=3",
    "measure.ics_distribution.every=3",
    "measure.ics_distribution.num_examples=50",
]
NORMS = ("none", "builtin", "noisy_bn")
FIGURES = ("curves", "activations", "ics_gradient", "landscape", "ics_distribution")
EXP, EXP_LR = "santurkar_smoke", "santurkar_smoke_lr"


def _script():
    spec = importlib.util.spec_from_file_location(
        "santurkar_figures", REPO / "scripts" / "santurkar_figures.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _train(run_dir, *overrides):
    train(compose_config([*SMOKE, *MEASURED, *overrides]), run_dir)
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """EXP: three norms x seeds 0, 1 (a sweep's numbered job dirs); EXP_LR: BN at two lrs."""
    root = tmp_path_factory.mktemp("runs")
    job = 0
    for norm in NORMS:
        for seed in (0, 1):
            _train(root / EXP / str(job), f"experiment_name={EXP}", f"norm={norm}", f"seed={seed}")
            job += 1
    for lr, seed in (("0.01", 0), ("0.05", 0), ("0.05", 1)):
        _train(root / EXP_LR / f"{lr}_{seed}", f"experiment_name={EXP_LR}", "norm=builtin",
               f"optim.lr={lr}", f"seed={seed}")  # fmt: skip
    return root


@pytest.fixture(scope="module")
def drawn(runs, tmp_path_factory):
    """The script run once over both experiments: (its exit status, its output folder)."""
    out = tmp_path_factory.mktemp("figures")
    return _script().main([str(runs), "--out", str(out)]), out


def _table(out, exp):
    with open(out / f"{exp}_table.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_the_script_writes_every_figure_and_table_per_experiment(drawn):
    status, out = drawn
    assert status == 0
    for exp in (EXP, EXP_LR):
        for name in FIGURES:
            png = out / f"{exp}_{name}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        assert (out / f"{exp}_table.md").exists()
        with open(out / f"{exp}_layers.csv", newline="") as f:
            assert tuple(csv.DictReader(f).fieldnames) == LAYER_COLUMNS


def test_table_merges_seeds_and_keeps_variants_apart(drawn, runs):
    _, out = drawn
    rows = _table(out, EXP)
    assert list(rows[0]) == list(TABLE_COLUMNS)
    assert [r["variant"] for r in rows] == ["no BN", "BN (builtin)", "noisy BN"]
    assert [r["norm"] for r in rows] == list(NORMS)
    assert all(r["seeds"] == "0 1" and r["runs"] == "2" and r["finished"] == "2" for r in rows)
    # The accuracy columns are the mean and sample std over the two seeds' summaries.
    for i, row in enumerate(rows):
        final = [json.loads((runs / EXP / str(2 * i + s) / "summary.json").read_text())["final_test_acc"]
                 for s in (0, 1)]  # fmt: skip
        assert float(row["final_acc_mean"]) == pytest.approx(np.mean(final))
        assert float(row["final_acc_std"]) == pytest.approx(np.std(final, ddof=1))
        for column in ("ics_l2_last_mean", "ics_cos_late_mean", "dist_wasserstein_mean", "loss_band_mean",
                       "beta_mean", "ics_gradient_ms_per_call_mean", "measure_share_mean"):  # fmt: skip
            assert math.isfinite(float(row[column])), column
    lr_rows = _table(out, EXP_LR)
    assert [(r["variant"], r["seeds"]) for r in lr_rows] == [
        ("BN (builtin), lr 0.01", "0"),
        ("BN (builtin), lr 0.05", "0 1"),
    ]
    assert lr_rows[0]["final_acc_std"] == ""  # one seed: no std


def test_markdown_table_has_a_row_per_variant_and_the_per_layer_table(drawn):
    _, out = drawn
    text = (out / f"{EXP}_table.md").read_text()
    for header in ("| variant | seeds | finished | final test acc | best test acc | final train acc |",
                   "| variant | l2 (last) | cosine (last) |",
                   "| variant | loss band (all) | loss band (2nd half) |",
                   "| variant | activations ms/call | ics_gradient ms/call |",
                   "| layer | no BN: l2 | no BN: cosine | BN (builtin): l2 |"):  # fmt: skip
        assert header in text, header
    for label in ("no BN", "BN (builtin)", "noisy BN"):
        assert sum(line.startswith(f"| {label} |") for line in text.splitlines()) == 4, label
    # Layer 1 has no earlier layer: its G' is G, l2 0 and cosine 1 exactly.
    assert "| 1: " in text and "| 0 +- 0 | 1.0000 +- 0.0000 |" in text


def test_table_numbers_are_the_measurements_averaged_as_documented(runs):
    variants = variants_of(load_all([runs / EXP]))
    row = table_rows(EXP, variants)[1]  # BN
    expected_l2, expected_band, expected_shift, expected_late = [], [], [], []
    for job in (2, 3):
        ics = read_measurement(runs / EXP / str(job), "ics_gradient")
        layers = list(dict.fromkeys(r["layer"] for r in ics))
        last = max(r["step"] for r in ics)
        expected_l2.append(
            np.mean([r["l2_diff"] for r in ics if r["step"] == last and r["layer"] != layers[0]])
        )
        land = read_measurement(runs / EXP / str(job), "landscape")
        expected_band.append(np.mean([r["loss_max"] - r["loss_min"] for r in land]))
        expected_late.append(np.mean([r["beta_smoothness"] for r in land if r["step"] > 12 / 2]))
        dist = read_measurement(runs / EXP / str(job), "ics_distribution")
        # per step: the mean over units and layers; then the mean over steps (equal rows per step)
        expected_shift.append(np.mean([abs(r["mean_shift"]) for r in dist]))
    assert row["ics_l2_last_mean"] == pytest.approx(np.mean(expected_l2))
    assert row["ics_l2_last_std"] == pytest.approx(np.std(expected_l2, ddof=1))
    assert row["loss_band_mean"] == pytest.approx(np.mean(expected_band))
    assert row["beta_late_mean"] == pytest.approx(np.mean(expected_late))  # steps 9 and 12 of 12
    assert row["dist_mean_shift_mean"] == pytest.approx(np.mean(expected_shift))


def test_an_unfinished_run_is_left_out_of_its_variant_and_named(runs, tmp_path):
    shutil.copytree(runs / EXP, tmp_path / EXP)
    stale = tmp_path / EXP / "stale"
    shutil.copytree(runs / EXP / "0", stale)
    summary = json.loads((stale / "summary.json").read_text())
    summary.update(status="running", final_test_acc=0.0)
    summary["config"]["seed"] = 7
    (stale / "summary.json").write_text(json.dumps(summary))
    variants = variants_of(load_all([tmp_path / EXP]))
    assert [r.run.run_dir for r in variants[0].left_out] == [stale]
    row, reference = table_rows(EXP, variants)[0], table_rows(EXP, variants_of(load_all([runs / EXP])))[0]
    assert (row["runs"], row["finished"], row["seeds"]) == (3, 2, "0 1")
    assert row["final_acc_mean"] == reference["final_acc_mean"]


@pytest.mark.parametrize("problem", ["absent", "empty"])
def test_a_run_lacking_a_measurement_is_a_clear_error(runs, tmp_path, capsys, problem):
    shutil.copytree(runs / EXP_LR, tmp_path / EXP_LR)
    path = tmp_path / EXP_LR / "0.05_1" / "landscape.csv"
    if problem == "absent":
        path.unlink()
        message = r"has no landscape\.csv.*measure\.landscape\.every=N"
    else:
        path.write_text(path.read_text().splitlines()[0] + "\n")  # the header only
        message = r"landscape\.csv has no rows \(measure\.landscape\.every=3"
    with pytest.raises(MissingMeasurementError, match=message):
        make_santurkar_figures([tmp_path], tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing drawn
    assert _script().main([str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    assert "landscape.csv" in capsys.readouterr().err


def test_no_runs_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert _script().main([str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 1
    assert "no run dirs (folders holding summary.json)" in capsys.readouterr().err
    with pytest.raises(NoRunsError, match="no such run dir or folder"):
        make_santurkar_figures([tmp_path / "nowhere"], tmp_path / "out")


def test_unknown_experiment_or_layer_is_an_error(runs, tmp_path, capsys):
    with pytest.raises(NoRunsError, match=f"no runs of experiment nope found; found: {EXP}, {EXP_LR}"):
        make_santurkar_figures([runs], tmp_path / "out", experiments=["nope"])
    assert _script().main([str(runs / EXP_LR), "--out", str(tmp_path / "o"), "--layer", "conv9"]) == 1
    assert "layer 'conv9' is not probed" in capsys.readouterr().err
    assert not list((tmp_path / "o").glob("*.png"))


def test_collect_runs_names_the_copies_and_copies_only_run_files(runs, tmp_path):
    copied, notes = collect_runs([runs], tmp_path / "results")
    names = sorted(str(p.relative_to(tmp_path / "results")) for p in copied)
    assert names == sorted(
        [f"{EXP}/{norm}_seed{seed}" for norm in NORMS for seed in (0, 1)]
        + [
            f"{EXP_LR}/builtin_lr0.01_seed0",
            f"{EXP_LR}/builtin_lr0.05_seed0",
            f"{EXP_LR}/builtin_lr0.05_seed1",
        ]
    )
    assert notes == []
    files = sorted(p.name for p in (tmp_path / "results" / EXP / "noisy_bn_seed1").iterdir())
    assert files == sorted(["summary.json", "metrics.csv", "activations.csv", "ics_gradient.csv",
                            "ics_distribution.csv", "landscape.csv"])  # fmt: skip
    assert read_csv(tmp_path / "results" / EXP / "none_seed0" / "metrics.csv") == read_csv(
        runs / EXP / "0" / "metrics.csv"
    )
    # A running (or failed) run is not copied, and named; a diverged one is a result and is.
    for status, seed in (("running", 8), ("diverged", 9)):
        shutil.copytree(runs / EXP / "0", tmp_path / "more" / status)
        summary = json.loads((tmp_path / "more" / status / "summary.json").read_text())
        summary["status"], summary["config"]["seed"] = status, seed
        (tmp_path / "more" / status / "summary.json").write_text(json.dumps(summary))
    copied, notes = collect_runs([tmp_path / "more"], tmp_path / "more_results")
    assert [p.name for p in copied] == ["none_seed9"]
    assert len(notes) == 1 and "running at step 12, not copied" in notes[0]
    # Two runs that would take one name: an error, nothing guessed.
    shutil.copytree(runs / EXP / "0", tmp_path / "twin" / "a")
    shutil.copytree(runs / EXP / "0", tmp_path / "twin" / "b")
    with pytest.raises(ValueError, match="would both be copied to"):
        collect_runs([tmp_path / "twin"], tmp_path / "again")


@pytest.mark.slow
def test_allow_missing_skips_the_figure_and_draws_the_rest(runs, tmp_path, capsys):
    shutil.copytree(runs / EXP_LR, tmp_path / EXP_LR)
    (tmp_path / EXP_LR / "0.01_0" / "ics_gradient.csv").unlink()
    out = tmp_path / "out"
    assert _script().main([str(tmp_path), "--out", str(out), "--allow-missing"]) == 0
    assert "ics_gradient.png skipped" in capsys.readouterr().out
    assert not (out / f"{EXP_LR}_ics_gradient.png").exists()
    for name in ("curves", "activations", "landscape", "ics_distribution"):
        assert (out / f"{EXP_LR}_{name}.png").exists(), name
