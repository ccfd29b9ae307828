"""The batch papers' experiments (issue "The batch in BatchNorm"): the non-i.i.d. sampler, the presets'
derived values (steps from a number of examples, lr scaled with the batch), resume with the new norms
and the new sampler, and each preset's smoke run."""

import json

import pytest
import torch
from conftest import SMOKE, compose_config, interrupted_at_evaluation

from bn_repro.config import ConfigError, check_values, resolve_config
from bn_repro.data import EpochBatches, FewClassBatches, make_batches
from bn_repro.records.run_files import read_csv
from bn_repro.train import train

LABELS = torch.arange(10).repeat_interleave(30)  # 10 classes x 30 examples


def _sampler(seed=0, batch_size=12, k=3, labels=LABELS):
    return FewClassBatches(labels, batch_size, k, torch.Generator().manual_seed(seed), "cpu")


def test_few_class_batches_hold_k_classes_in_equal_numbers():
    batches = _sampler()
    for _ in range(50):
        idx = next(batches)
        counts = torch.bincount(LABELS[idx], minlength=10)
        assert len(idx) == 12 and sorted(counts[counts > 0].tolist()) == [4, 4, 4]
        assert len(set(idx.tolist())) == 12  # no example twice in a batch


def test_few_class_batches_use_every_example_about_equally():
    batches = _sampler(batch_size=10, k=2)
    seen = torch.zeros(len(LABELS), dtype=torch.long)
    for _ in range(600):  # 20 passes over the 300 examples
        seen[next(batches)] += 1
    # Each class stream goes through a permutation before reshuffling: no example is starved.
    assert seen.min() >= 10 and seen.max() <= 32
    assert batches.batches_per_epoch == 30 and batches.epoch == 19


def test_few_class_batches_resume_exactly():
    whole = _sampler(seed=3)
    first = [next(whole) for _ in range(17)]
    rest = [next(whole) for _ in range(40)]
    part = _sampler(seed=3)
    assert all(torch.equal(a, next(part)) for a in first)
    state = part.state_dict()
    resumed = _sampler(seed=99)  # another seed: the state_dict alone decides what follows
    resumed.load_state_dict(state)
    assert all(torch.equal(a, next(resumed)) for a in rest)


def test_few_class_batches_refuse_bad_options():
    with pytest.raises(ValueError, match="batch_size=10 is not a multiple of data.classes_per_batch=3"):
        _sampler(batch_size=10, k=3)
    with pytest.raises(ValueError, match=r"classes_per_batch=11.*\[1, 10\]"):
        _sampler(batch_size=11, k=11)
    with pytest.raises(ValueError, match="fewer than"):
        _sampler(batch_size=80, k=2)  # 40 per class, 30 in each
    with pytest.raises(ValueError, match="classes_per_batch=2"):
        _sampler(batch_size=12, k=3).load_state_dict(_sampler(batch_size=12, k=2).state_dict())


def test_make_batches_follows_data_sampler():
    iid = make_batches({"batch_size": 12}, LABELS, 0, "cpu")  # a config without the key: i.i.d.
    assert isinstance(iid, EpochBatches)
    few = make_batches({"batch_size": 12, "sampler": "few_classes", "classes_per_batch": 3}, LABELS, 0, "cpu")
    assert isinstance(few, FewClassBatches)
    with pytest.raises(ValueError, match="data.sampler='other'.*iid, few_classes"):
        make_batches({"batch_size": 12, "sampler": "other"}, LABELS, 0, "cpu")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.sampler=sorted"], "data.sampler='sorted': valid choices: iid, few_classes"),
        (["data.sampler=few_classes", "data.classes_per_batch=11"], "more than the 10 classes"),
        (["data.sampler=few_classes", "data.classes_per_batch=7"], "data.batch_size=60: not a multiple of"),
        (["data.sampler=few_classes", "data.classes_per_batch=0"], "classes_per_batch=0: expected an"),
    ],
)
def test_sampler_config_errors_come_before_torch(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_values(resolve_config(compose_config(["data=synthetic", *overrides])))


def test_non_iid_runs_resume_exactly(tmp_path, monkeypatch):
    overrides = [*SMOKE, "data.sampler=few_classes", "data.classes_per_batch=2", "data.batch_size=20",
                 "norm=batch_renorm",
                 "norm.start_steps=3", "norm.r_max_at=20", "norm.d_max_at=10", "trainer.max_steps=30",
                 "trainer.checkpoint_every=7"]  # fmt: skip
    train(compose_config(overrides), tmp_path / "whole")
    interrupted_at_evaluation(monkeypatch, compose_config(overrides), tmp_path / "parts", evaluation=4)
    resumed = train(compose_config(overrides), tmp_path / "parts")
    assert resumed["resumed_from_step"] == 14

    def rows(d):
        return [{k: v for k, v in r.items() if k not in ("wall_time_s", "steps_per_s")}
                for r in read_csv(d / "metrics.csv")]  # fmt: skip

    assert rows(tmp_path / "whole") == rows(tmp_path / "parts")


@pytest.mark.parametrize("batch, lr, steps", [(2, 0.003125, 15000), (64, 0.1, 468)])
def test_gn_batch_size_scales_lr_and_steps_with_the_batch(batch, lr, steps):
    cfg = resolve_config(compose_config(["experiment=gn_batch_size", f"data.batch_size={batch}"]))
    assert cfg["optim"]["lr"] == pytest.approx(lr)
    assert cfg["trainer"]["max_steps"] == steps == cfg["trainer"]["eval_every"]
    assert cfg["measure"]["eval_stats"]["every"] == steps


def test_ghost_large_batch_epochs_set_the_steps():
    cfg = resolve_config(compose_config(["experiment=ghost_large_batch", "epochs=80"]))
    assert cfg["trainer"]["max_steps"] == 80 * 60000 // 1024
    assert cfg["norm"] == {**cfg["norm"], "kind": "ghost_bn", "virtual_batch_size": 128}


@pytest.mark.parametrize(
    "preset, extra",
    [
        ("gn_batch_size", ["norm=groupnorm", "norm.groups=4", "data.batch_size=8"]),
        ("gn_batch_size", ["norm=ghost_bn", "norm.virtual_batch_size=4", "data.batch_size=8"]),
        ("brn_small_batch", ["norm=batch_renorm"]),
        ("brn_non_iid", ["norm=batch_renorm"]),
        ("ghost_large_batch", ["data.batch_size=64", "norm.virtual_batch_size=16"]),
        ("precise_bn", []),
    ],
)
def test_presets_smoke_run(preset, extra, tmp_path):
    # The presets' steps follow from their examples; the smoke data caps them here.
    smoke = [o for o in SMOKE if not o.startswith("trainer.max_steps")]
    overrides = [f"experiment={preset}", *smoke, *extra, "trainer.max_steps=8", "trainer.eval_every=4"]
    if preset != "precise_bn" and preset != "ghost_large_batch":
        overrides.append("model.width=0.0625")  # the convnet at a sixteenth of VGG-11's widths
    cfg = compose_config(overrides)
    summary = train(cfg, tmp_path)
    assert summary["status"] == "finished" and summary["steps"] == 8
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["config"]["experiment_name"] == preset
