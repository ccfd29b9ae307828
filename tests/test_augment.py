import itertools

import pytest
import torch
import torch.nn.functional as F
from conftest import SMOKE, compose_config

from bn_repro.data.augment import RandomCropFlip
from bn_repro.records.run_files import read_csv
from bn_repro.train import train

PAD = 4


def _images(n=256, c=3, h=8, w=8, seed=0):
    # Nonzero random pixels: every crop of every image is distinguishable from the zero padding and
    # from the crops of the other images.
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (n, c, h, w), generator=generator, dtype=torch.uint8)


def _candidates(image: torch.Tensor, pad: int) -> dict[tuple[int, int, bool], torch.Tensor]:
    """Every crop (dy, dx) of the zero-padded image, mirrored or not."""
    _, h, w = image.shape
    padded = F.pad(image, (pad, pad, pad, pad))
    out = {}
    for dy, dx in itertools.product(range(2 * pad + 1), repeat=2):
        crop = padded[:, dy : dy + h, dx : dx + w]
        out[(dy, dx, False)] = crop
        out[(dy, dx, True)] = crop.flip(-1)
    return out


def _which(augmented: torch.Tensor, image: torch.Tensor, pad: int) -> list[tuple[int, int, bool]]:
    return [key for key, crop in _candidates(image, pad).items() if torch.equal(crop, augmented)]


def test_shape_dtype_and_device_are_kept():
    x = _images(n=5, c=1, h=28, w=28)
    out = RandomCropFlip(PAD, seed=0)(x)
    assert out.shape == x.shape and out.dtype == torch.uint8 and out.device == x.device


def test_each_image_becomes_a_crop_and_maybe_a_flip_of_itself():
    x = _images()
    out = RandomCropFlip(PAD, seed=0)(x)
    seen = []
    for i in range(len(x)):
        matches = _which(out[i], x[i], PAD)
        assert len(matches) == 1, f"image {i}: {matches}"  # exactly one crop/flip of image i itself
        seen.append(matches[0])
        # Image i stays at position i (so its label still applies): it is no crop of its neighbour.
        assert _which(out[i], x[(i + 1) % len(x)], PAD) == []
    offsets = {(dy, dx) for dy, dx, _ in seen}
    flips = [flipped for _, _, flipped in seen]
    assert len(offsets) > 40  # 256 draws of 81 equally likely offsets
    assert 0.3 < sum(flips) / len(flips) < 0.7
    assert any(key != (PAD, PAD, False) for key in seen)  # not the identity


def test_without_padding_only_flips():
    x = _images(n=64)
    out = RandomCropFlip(0, seed=0)(x)
    flipped = [torch.equal(out[i], x[i].flip(-1)) for i in range(len(x))]
    unchanged = [torch.equal(out[i], x[i]) for i in range(len(x))]
    assert all(f or u for f, u in zip(flipped, unchanged, strict=True))
    assert any(flipped) and any(unchanged)


def test_same_seed_same_draws_different_seed_different():
    x = _images(n=32)
    a, b, c = RandomCropFlip(PAD, seed=5), RandomCropFlip(PAD, seed=5), RandomCropFlip(PAD, seed=6)
    first_a, first_b = a(x), b(x)
    assert torch.equal(first_a, first_b)
    assert torch.equal(a(x), b(x))  # and the streams stay in step
    assert not torch.equal(first_a, c(x))
    assert not torch.equal(first_a, a(x))  # each call draws anew


def test_state_dict_replays_the_stream():
    x = _images(n=16)
    aug = RandomCropFlip(PAD, seed=3)
    aug(x)
    state = aug.state_dict()
    expected = aug(x)
    other = RandomCropFlip(PAD, seed=99)
    other.load_state_dict(state)
    assert torch.equal(other(x), expected)


@pytest.mark.parametrize(("bad", "message"), [(-1, "padding=-1"), (True, "padding=True")])
def test_bad_padding(bad, message):
    with pytest.raises(ValueError, match=message):
        RandomCropFlip(bad)


def test_rejects_non_batches():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        RandomCropFlip(PAD)(torch.zeros(3, 8, 8, dtype=torch.uint8))


def _augment_run(tmp_path, name, augment, seed=0):
    overrides = [*SMOKE, "data.synthetic.shape=cifar", f"data.augment={augment}", f"seed={seed}"]
    summary = train(compose_config(overrides), tmp_path / name)
    rows = read_csv(tmp_path / name / "metrics.csv")
    return summary, [(r["step"], r["train_loss"], r["test_acc"]) for r in rows]


def test_training_loop_augments_deterministically(tmp_path):
    summary, with_aug = _augment_run(tmp_path, "a", "true")
    _, again = _augment_run(tmp_path, "b", "true")
    _, without = _augment_run(tmp_path, "c", "false")
    assert summary["status"] == "finished" and summary["config"]["data"]["augment"] is True
    assert with_aug == again
    assert with_aug != without
