"""scripts/wandb_dashboard.py: the workspace and report specification of a real offline sweep."""

from __future__ import annotations

import importlib.util
import json

import pytest
from conftest import REPO, SMOKE, compose_config
from wandb_offline import isolated_wandb  # noqa: F401 - fixture wandb_env

from bn_repro.train import train

pytest.importorskip("wandb_workspaces")


def _script():
    spec = importlib.util.spec_from_file_location("wandb_dashboard", REPO / "scripts" / "wandb_dashboard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def sweep(tmp_path, wandb_env):
    """A small offline sweep of one group: two norms, two seeds, eval_stats on."""
    for i, (norm, seed) in enumerate((("none", 0), ("none", 1), ("builtin", 0), ("builtin", 1))):
        overrides = [*SMOKE, "logger=wandb", f"norm={norm}", f"seed={seed}", "experiment_name=dash",
                     "measure.eval_stats.every=5", "measure.eval_stats.num_examples=[60]"]  # fmt: skip
        train(compose_config(overrides), tmp_path / "sweep" / str(i))
    train(compose_config([*SMOKE, "experiment_name=other"]), tmp_path / "sweep" / "other")
    return tmp_path / "sweep"


def test_the_specification_of_an_offline_sweep(sweep, capsys):
    assert _script().main(["--entity", "team", "--group", "dash", "--runs", str(sweep)]) == 0
    assert "4 runs of dash" in capsys.readouterr().out
    workspace = json.loads((sweep / "workspace.json").read_text())
    report = json.loads((sweep / "report.json").read_text())
    assert workspace["runset_settings"]["filters"] == "Group == 'dash'"
    sections = {s["name"]: s for s in workspace["sections"]}
    assert list(sections) == ["Fig. 1(a)", "Fig. 1(b,c)", "measure: eval_stats"]
    (fig1a,) = sections["Fig. 1(a)"]["panels"]
    assert fig1a["y"] == ["test/acc"] and fig1a["x"] == "step"
    assert "norm.kind" in json.dumps(fig1a["groupby"])
    assert fig1a["groupby_aggfunc"] == "mean" and fig1a["groupby_rangefunc"] == "minmax"
    probes = sections["Fig. 1(b,c)"]["panels"]
    assert sorted(p["title"] for p in probes) == ["Fig. 1(b,c): BN (builtin), hidden3 unit 0",
                                                   "Fig. 1(b,c): no BN, hidden3 unit 0"]  # fmt: skip
    assert probes[0]["y"] == [f"act/hidden3/0/{p}" for p in ("p15", "p50", "p85")]
    measured = {p["title"] for p in sections["measure: eval_stats"]["panels"]}
    assert measured == {"eval_stats: test_loss", "eval_stats: test_acc"}
    # In the report each norm's probe panel shows that norm's runs only.
    filters = [rs["filters"] for block in report["blocks"] for rs in block.get("runsets", [])]
    assert "Group == 'dash' and Config('norm.kind') == 'none'" in filters
    assert "Group == 'dash' and Config('norm.kind') == 'builtin'" in filters


def test_no_runs_of_the_group_is_one_line(tmp_path, capsys):
    assert _script().main(["--entity", "team", "--group", "nothing", "--runs", str(tmp_path)]) == 1
    assert "no runs of group 'nothing'" in capsys.readouterr().err
