import numpy as np
import pytest
import torch
from torch import nn

from bn_repro.measures.activations import ActivationProbe


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Identity()
        self.b = nn.Identity()

    def forward(self, x):
        return self.b(self.a(x) * 2 + 1)


def test_percentiles_match_numpy():
    torch.manual_seed(0)
    model = TwoLayer()
    x = torch.randn(1000, 6, dtype=torch.float64)
    probe = ActivationProbe({"l1": model.a, "l2": model.b}, units=[0, 3, 5])
    result = probe.measure(lambda: model(x))
    by_key = {(r["layer"], r["unit"]): r for r in result.rows}
    assert set(by_key) == {(layer, u) for layer in ("l1", "l2") for u in (0, 3, 5)}
    for (layer, unit), row in by_key.items():
        values = (x[:, unit] if layer == "l1" else x[:, unit] * 2 + 1).numpy()
        for p in (15, 50, 85):
            assert row[f"p{p}"] == pytest.approx(np.percentile(values, p))
        assert row["mean"] == pytest.approx(values.mean())
        assert row["std"] == pytest.approx(values.std(ddof=1))
    all_l2 = (x * 2 + 1).numpy()
    assert by_key[("l2", 0)]["layer_mean"] == pytest.approx(all_l2.mean())
    assert by_key[("l2", 0)]["layer_std"] == pytest.approx(all_l2.std(ddof=1))
    assert result.layer_values["l1"].numel() == x.numel()


def test_conv_units_are_channels():
    layer = nn.Identity()
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 2, 2)
    result = ActivationProbe({"conv": layer}, units=[1]).measure(lambda: layer(x))
    (row,) = result.rows
    channel = x[:, 1].flatten().numpy()
    assert row["p50"] == pytest.approx(np.percentile(channel, 50))


def test_hooks_are_removed_and_units_out_of_range_fail():
    layer = nn.Identity()
    probe = ActivationProbe({"l": layer}, units=[7])
    with pytest.raises(ValueError, match="out of range"):
        probe.measure(lambda: layer(torch.zeros(4, 3)))
    assert not layer._forward_pre_hooks
