"""scripts/batch_effects.py on real (tiny) runs of the batch papers' presets."""

import pytest
from conftest import SMOKE, compose_config

from bn_repro.analysis.batch_effects import NoRunsError, draw_all
from bn_repro.train import train

SMALL = [o for o in SMOKE if not o.startswith(("trainer.max_steps", "trainer.eval_every"))]


def _run(root, name, preset, *overrides, steps=8):
    cfg = compose_config(
        [f"experiment={preset}", *SMALL, f"trainer.max_steps={steps}", "trainer.eval_every=4", *overrides]
    )
    train(cfg, root / name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    conv = ["model.width=0.0625", "measure.eval_stats.num_examples=[40,120]", "measure.eval_stats.every=8"]
    for norm in ("builtin", "layernorm"):
        for batch in (4, 8):
            for seed in (0, 1):
                _run(
                    root,
                    f"gn_{norm}_{batch}_{seed}",
                    "gn_batch_size",
                    f"norm={norm}",
                    f"data.batch_size={batch}",
                    f"seed={seed}",
                    *conv,
                )
    for seed in (0, 1):
        _run(
            root,
            f"pbn_{seed}",
            "precise_bn",
            f"seed={seed}",
            "measure.eval_stats.every=4",
            "measure.eval_stats.num_examples=[60,240]",
        )
        _run(
            root,
            f"ghost_{seed}",
            "ghost_large_batch",
            f"seed={seed}",
            "data.batch_size=64",
            "norm.virtual_batch_size=16",
        )
    return root


def test_every_experiment_gets_its_figures_and_tables(runs, tmp_path):
    written, combined = draw_all([runs], tmp_path)
    names = {p.name for p in written}
    assert {
        "gn_batch_size_error.png",
        "gn_batch_size_table.md",
        "gn_batch_size_precise_bn.png",
        "precise_bn_over_training.png",
        "precise_bn_vs_n.png",
        "ghost_large_batch_curves.png",
        "batch_tables.md",
    } <= names
    table = (tmp_path / "gn_batch_size_table.md").read_text().splitlines()
    header = next(line for line in table if line.startswith("| norm |"))
    assert header == "| norm | batch 4 | batch 8 |"
    rows = [line for line in table if line.startswith(("| BN", "| LayerNorm"))]
    # One row per norm, seeds merged: each cell says it averages 2 seeds.
    assert len([r for r in rows if r.startswith("| BN (builtin) |")]) == 1
    assert all(cell.strip().endswith("(2)") for cell in rows[0].split("|")[2:4])
    # PreciseBN's columns for BN; LayerNorm has no BN statistics, so no row there.
    assert "| setting | ema | PreciseBN N=40 | PreciseBN N=120 | batch |" in combined
    assert "LayerNorm, batch 4 |" not in combined
    assert "PreciseBN N=240" in (tmp_path / "precise_bn_table.md").read_text()
    assert "generalization gap" in (tmp_path / "ghost_large_batch_table.md").read_text()


def test_no_runs_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoRunsError, match="no runs of gn_batch_size"):
        draw_all([tmp_path / "empty"], tmp_path / "out")
