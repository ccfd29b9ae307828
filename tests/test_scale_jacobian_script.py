"""scripts/scale_jacobian.py on fake run dirs: the table's means and intervals, no BN beside BN."""

import importlib.util

import pytest
from conftest import REPO
from test_lr_init_grid import write_run

from bn_repro.analysis.stats import t_interval
from bn_repro.records.run_files import CsvLog

spec = importlib.util.spec_from_file_location("scale_jacobian", REPO / "scripts" / "scale_jacobian.py")
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)


def _measured(run_dir, name, columns, value):
    log = CsvLog(run_dir / f"{name}.csv", ("step", "layer", *columns))
    for step in (500, 2000):
        for layer in ("hidden1", "hidden2"):
            log.write({"step": step, "layer": layer, **{c: value(step, layer) for c in columns}})
    log.close()


def test_the_table_holds_each_layers_mean_over_seeds_no_bn_beside_bn(tmp_path):
    for norm in ("none", "builtin"):
        for seed in (0, 1, 2):
            run_dir = tmp_path / "runs" / f"{norm}{seed}"
            write_run(run_dir, norm=norm, momentum=0.9, init_std=0.01, lr=0.01, seed=seed, accs=[0.1] * 5)
            scale = 1.0 if norm == "none" else 10.0
            _measured(run_dir, "scale", script.SCALE, lambda step, layer, s=seed, k=scale: k * (s + 1) * step)
            _measured(run_dir, "jacobian", script.JACOBIAN, lambda step, layer, s=seed: 0.5 + s)
    assert script.main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "scale_jacobian.md").read_text()
    mean, half = t_interval([1 * 2000, 2 * 2000, 3 * 2000])
    assert f"| no BN | hidden1 | 2,000 | {mean:.4g} +- {half:.2g} (3) |" in text
    mean, half = t_interval([10 * 500, 20 * 500, 30 * 500])
    assert f"| BN (builtin) | hidden2 | 500 | {mean:.4g} +- {half:.2g} (3) |" in text
    jac_mean, jac_half = t_interval([0.5, 1.5, 2.5])
    assert f"| no BN | hidden1 | 500 | {jac_mean:.4g} +- {jac_half:.2g} (3) |" in text
    assert (tmp_path / "out" / "scale_jacobian.png").exists()


@pytest.mark.parametrize("status", ["running", "failed"])
def test_runs_that_did_not_finish_are_left_out(tmp_path, status):
    for seed, state in ((0, "finished"), (1, status)):
        run_dir = tmp_path / "runs" / f"r{seed}"
        write_run(run_dir, norm="none", momentum=0.9, init_std=0.01, lr=0.01, seed=seed, accs=[0.1] * 5,
                  status=state)  # fmt: skip
        _measured(run_dir, "scale", script.SCALE, lambda step, layer, s=seed: float(s + 1))
        _measured(run_dir, "jacobian", script.JACOBIAN, lambda step, layer: 1.0)
    script.main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    text = (tmp_path / "out" / "scale_jacobian.md").read_text()
    assert "| no BN | hidden1 | 500 | 1 (1) | 1 (1) | 1 (1) | 1 (1) |" in text  # the finished seed alone


def test_the_jacobians_map_is_named_from_the_runs_config(tmp_path):
    import json

    for seed in (0, 1):
        run_dir = tmp_path / "runs" / f"r{seed}"
        write_run(run_dir, norm="builtin", momentum=0.9, init_std=0.01, lr=0.01, seed=seed, accs=[0.1] * 5)
        summary = json.loads((run_dir / "summary.json").read_text())
        summary["config"]["measure"] = {"jacobian": {"output": "pre_activation"}}
        (run_dir / "summary.json").write_text(json.dumps(summary))
        _measured(run_dir, "scale", script.SCALE, lambda step, layer: 1.0)
        _measured(run_dir, "jacobian", script.JACOBIAN, lambda step, layer: 1.0)
    script.main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    text = (tmp_path / "out" / "scale_jacobian.md").read_text()
    assert "singular values of each example's dBN(Wu)/du" in text and "dz/du" not in text
