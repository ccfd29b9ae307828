"""bn_repro.data on small files written in the real formats; no test reaches the network."""

from __future__ import annotations

import copy
import gzip
import hashlib
import io
import pickle
import socket
import struct
import tarfile
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.datasets

from bn_repro.data import (
    CIFAR_BATCHES,
    CIFAR_DIR,
    CIFAR_TARBALL,
    DATASETS,
    IDX_FILES,
    DatasetFormatError,
    DatasetUnavailableError,
    EpochBatches,
    load_dataset,
)
from bn_repro.data import dataset as data

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
REAL_SYSTEM_DATA_DIRS = dict(data.SYSTEM_DATA_DIRS)
TORCHVISION_CLASSES = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10"}


@pytest.fixture(autouse=True)
def isolated(monkeypatch):
    """No sockets, and no system data folders unless a test puts them back."""

    def refuse(*args, **kwargs):
        raise OSError("tests must not use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(data, "SYSTEM_DATA_DIRS", {name: () for name in REAL_SYSTEM_DATA_DIRS})


# ---------------------------------------------------------------- writers of the real formats


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = struct.pack(">HBB", 0, type_code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_file(path: Path, content: bytes, gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        content = gzip.compress(content, mtime=0)
    path.write_bytes(content)
    return path


def write_idx_set(directory: Path, gz: bool = False, seed: int = 0, n_train: int = 20, n_test: int = 10):
    """The four MNIST-format files with random 28x28 images; returns the arrays and the paths in order."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    paths = [write_file(directory / IDX_FILES[key], idx_bytes(arrays[key]), gz) for key in IDX_FILES]
    return arrays, paths


def write_cifar_batches(batch_dir: Path, seed: int = 0, per_batch: int = 4, n_test: int = 6):
    """The six pickled batches (bytes keys, uint8 (N, 3072) data, list labels); returns them in order."""
    rng = np.random.default_rng(seed)
    batch_dir.mkdir(parents=True, exist_ok=True)
    batches = []
    for name in CIFAR_BATCHES:
        n = n_test if name == "test_batch" else per_batch
        batch = {
            b"batch_label": name.encode(),
            b"labels": rng.integers(0, 10, n).tolist(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"{name}_{i}.png".encode() for i in range(n)],
        }
        (batch_dir / name).write_bytes(pickle.dumps(batch, protocol=2))
        batches.append(batch)
    return batches


def sha256_of(paths) -> str:
    hasher = hashlib.sha256()
    for path in paths:
        hasher.update(Path(path).read_bytes())
    return hasher.hexdigest()


def assert_matches_idx(dataset, arrays):
    assert dataset.train_x.dtype == torch.uint8 and dataset.train_y.dtype == torch.int64
    assert dataset.train_x.shape == (len(arrays["train_labels"]), 1, 28, 28)
    assert dataset.test_x.shape == (len(arrays["test_labels"]), 1, 28, 28)
    assert np.array_equal(dataset.train_x[:, 0].numpy(), arrays["train_images"])
    assert np.array_equal(dataset.train_y.numpy(), arrays["train_labels"])
    assert np.array_equal(dataset.test_x[:, 0].numpy(), arrays["test_images"])
    assert np.array_equal(dataset.test_y.numpy(), arrays["test_labels"])
    assert dataset.input_shape == (1, 28, 28) and dataset.num_classes == 10


# ---------------------------------------------------------------- MNIST / Fashion-MNIST


def test_unknown_name_names_the_choices(tmp_path):
    with pytest.raises(ValueError, match="'imagenet'.*mnist, fashion_mnist, cifar10, synthetic"):
        load_dataset("imagenet", tmp_path)
    assert DATASETS == ("mnist", "fashion_mnist", "cifar10", "synthetic")


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("layout", ["torchvision", "root"])
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_files_load_exactly(tmp_path, name, layout, gz):
    folder = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}[name]
    directory = tmp_path / folder / "raw" if layout == "torchvision" else tmp_path
    arrays, paths = write_idx_set(directory, gz=gz)
    dataset = load_dataset(name, tmp_path, download=False)
    assert_matches_idx(dataset, arrays)
    assert dataset.name == name and dataset.source == str(directory)
    assert dataset.checksum == sha256_of(paths)
    pixels = arrays["train_images"].astype(np.float64) / 255
    assert dataset.mean.dtype == torch.float32 and dataset.mean.shape == (1,)
    assert dataset.mean.item() == pytest.approx(pixels.mean(), rel=1e-6)
    assert dataset.std.item() == pytest.approx(pixels.std(), rel=1e-6)


def test_checksum_is_stable_and_follows_the_files(tmp_path):
    arrays, paths = write_idx_set(tmp_path, gz=True)
    first = load_dataset("mnist", tmp_path, download=False).checksum
    assert load_dataset("mnist", tmp_path, download=False).checksum == first
    labels = arrays["test_labels"].copy()
    labels[0] = (labels[0] + 1) % 10
    write_file(tmp_path / IDX_FILES["test_labels"], idx_bytes(labels), gz=True)
    assert load_dataset("mnist", tmp_path, download=False).checksum != first


def test_search_order(tmp_path):
    """torchvision's folder before root, a folder only when it has all four files, raw before .gz."""
    preferred, _ = write_idx_set(tmp_path / "MNIST" / "raw", seed=1)
    write_idx_set(tmp_path, seed=2)
    assert_matches_idx(load_dataset("mnist", tmp_path, download=False), preferred)

    (tmp_path / "MNIST" / "raw" / IDX_FILES["test_labels"]).unlink()
    in_root, _ = write_idx_set(tmp_path, seed=3)
    write_idx_set(tmp_path, seed=4, gz=True)
    dataset = load_dataset("mnist", tmp_path, download=False)
    assert_matches_idx(dataset, in_root)
    assert dataset.source == str(tmp_path)


def test_fashion_mnist_falls_back_to_the_system_folder(tmp_path, monkeypatch):
    system = tmp_path / "usr-share-datasets"
    arrays, _ = write_idx_set(system, gz=True)
    monkeypatch.setattr(data, "SYSTEM_DATA_DIRS", {"fashion_mnist": (system,), "mnist": ()})
    dataset = load_dataset("fashion_mnist", tmp_path / "empty-root", download=False, search_system_dirs=True)
    assert_matches_idx(dataset, arrays)
    assert dataset.source == str(system)
    with pytest.raises(DatasetUnavailableError):
        load_dataset("mnist", tmp_path / "empty-root", download=False, search_system_dirs=True)


@pytest.mark.parametrize(
    ("key", "content", "message"),
    [
        ("train_images", b"\x12\x34\x08\x03" + bytes(12), "bad IDX magic number 0x12340803"),
        ("train_images", idx_bytes(np.zeros((20, 28, 28)), type_code=0x0D), "element type 0x0d"),
        ("train_labels", idx_bytes(np.zeros((20, 1, 1))), "3 dimensions, expected 1"),
        ("train_images", idx_bytes(np.zeros((20, 28, 28)))[:-5], "payload is 15675 bytes"),
        ("test_labels", b"\x00\x00", "too short"),
        ("test_images", b"\x1f\x8b" + b"not really gzip", "not a readable gzip file"),
        ("test_labels", idx_bytes(np.zeros(9)), "10 images but 9 labels"),
        ("train_labels", idx_bytes(np.full(20, 10)), r"train labels span \[10, 10\], outside \[0, 9\]"),
    ],
    ids=["magic", "type", "ndim", "truncated", "short", "gzip", "count", "label-range"],
)
def test_corrupt_idx_raises_a_clear_error(tmp_path, key, content, message):
    write_idx_set(tmp_path)
    path = write_file(tmp_path / IDX_FILES[key], content)
    with pytest.raises(DatasetFormatError, match=message) as info:
        load_dataset("mnist", tmp_path, download=False)
    assert str(path.parent) in str(info.value)


# ---------------------------------------------------------------- downloads (faked)


def fake_torchvision(monkeypatch, name, on_call):
    """Replace the torchvision dataset class `name` uses; `on_call(root)` plays the download."""
    calls = []

    class Fake:
        def __init__(self, root, train=True, download=False):
            calls.append({"root": root, "download": download, "timeout": socket.getdefaulttimeout()})
            on_call(Path(root))

    monkeypatch.setattr(torchvision.datasets, TORCHVISION_CLASSES[name], Fake)
    return calls


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_offline_download_fails_fast_with_a_helpful_message(tmp_path, monkeypatch, name):
    def offline(root):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    calls = fake_torchvision(monkeypatch, name, offline)
    before = socket.getdefaulttimeout()
    with pytest.raises(DatasetUnavailableError) as info:
        load_dataset(name, tmp_path, download=True, download_timeout_s=3.5)
    assert calls == [{"root": str(tmp_path), "download": True, "timeout": 3.5}]
    assert socket.getdefaulttimeout() == before
    message = str(info.value)
    assert isinstance(info.value, RuntimeError)
    expected = ["URLError", "Temporary failure in name resolution", str(tmp_path),
                "apt-get install dataset-fashion-mnist", "data=fashion_mnist", "data=synthetic"]  # fmt: skip
    if name == "cifar10":
        expected += [CIFAR_TARBALL, str(tmp_path / CIFAR_DIR), "data_batch_1"]
    else:
        expected += [*IDX_FILES.values(), str(tmp_path / TORCHVISION_CLASSES[name] / "raw")]
    for part in expected:
        assert part in message, part


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_download_false_with_missing_files_does_not_download(tmp_path, monkeypatch, name):
    calls = fake_torchvision(monkeypatch, name, lambda root: None)
    with pytest.raises(DatasetUnavailableError, match="downloading is off"):
        load_dataset(name, tmp_path, download=False)
    assert calls == []


def test_files_the_download_wrote_are_read(tmp_path, monkeypatch):
    written = {}

    def download(root):
        written["arrays"], _ = write_idx_set(root / "MNIST" / "raw", gz=True)

    calls = fake_torchvision(monkeypatch, "mnist", download)
    dataset = load_dataset("mnist", tmp_path)
    assert len(calls) == 1
    assert_matches_idx(dataset, written["arrays"])
    load_dataset("mnist", tmp_path)
    assert len(calls) == 1


# ---------------------------------------------------------------- CIFAR-10


def assert_matches_cifar(dataset, batches):
    train_data = np.concatenate([b[b"data"] for b in batches[:5]]).reshape(-1, 3, 32, 32)
    train_labels = np.concatenate([b[b"labels"] for b in batches[:5]])
    assert dataset.train_x.dtype == torch.uint8 and dataset.train_y.dtype == torch.int64
    assert np.array_equal(dataset.train_x.numpy(), train_data)
    assert np.array_equal(dataset.train_y.numpy(), train_labels)
    assert np.array_equal(dataset.test_x.numpy(), batches[5][b"data"].reshape(-1, 3, 32, 32))
    assert np.array_equal(dataset.test_y.numpy(), batches[5][b"labels"])
    assert dataset.input_shape == (3, 32, 32) and dataset.num_classes == 10
    pixels = train_data.astype(np.float64) / 255
    assert np.allclose(dataset.mean.numpy(), pixels.mean(axis=(0, 2, 3)), rtol=1e-6)
    assert np.allclose(dataset.std.numpy(), pixels.std(axis=(0, 2, 3)), rtol=1e-6)


def test_cifar_batches_load_exactly(tmp_path):
    batch_dir = tmp_path / CIFAR_DIR
    batches = write_cifar_batches(batch_dir)
    dataset = load_dataset("cifar10", tmp_path, download=False)
    assert_matches_cifar(dataset, batches)
    assert dataset.train_x.shape == (20, 3, 32, 32) and dataset.test_x.shape == (6, 3, 32, 32)
    assert dataset.source == str(batch_dir)
    assert dataset.checksum == sha256_of(batch_dir / name for name in CIFAR_BATCHES)


def test_cifar_tarball_is_extracted_without_network(tmp_path, monkeypatch):
    calls = fake_torchvision(monkeypatch, "cifar10", lambda root: None)
    staging = tmp_path / "staging"
    batches = write_cifar_batches(staging / CIFAR_DIR)
    with tarfile.open(tmp_path / CIFAR_TARBALL, "w:gz") as archive:
        archive.add(staging / CIFAR_DIR, arcname=CIFAR_DIR)
        escape = tarfile.TarInfo("cifar-10-batches-py/../../escaped")
        escape.size = 4
        archive.addfile(escape, io.BytesIO(b"evil"))
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / CIFAR_TARBALL).rename(root / CIFAR_TARBALL)
    dataset = load_dataset("cifar10", root, download=True)
    assert calls == []
    assert_matches_cifar(dataset, batches)
    assert all((root / CIFAR_DIR / name).is_file() for name in CIFAR_BATCHES)
    assert not (tmp_path / "escaped").exists() and not (root / "escaped").exists()


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ({b"data": np.zeros((4, 3000), np.uint8), b"labels": [0] * 4}, r"b'data' is uint8 \(4, 3000\)"),
        ({b"data": np.zeros((4, 3072), np.float32), b"labels": [0] * 4}, "b'data' is float32"),
        ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0] * 3}, "4 images but b'labels'"),
        ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 10]}, r"labels span \[0, 10\]"),
        ({b"labels": [0] * 4}, "expected a dict with b'data' and b'labels'"),
        (None, "not a readable CIFAR-10 pickle batch"),
    ],
    ids=["width", "dtype", "label-count", "label-range", "keys", "not-pickle"],
)
def test_bad_cifar_batch_raises_a_clear_error(tmp_path, batch, message):
    write_cifar_batches(tmp_path / CIFAR_DIR)
    path = tmp_path / CIFAR_DIR / "data_batch_3"
    path.write_bytes(b"\x80\x02garbage" if batch is None else pickle.dumps(batch, protocol=2))
    with pytest.raises(DatasetFormatError, match=message) as info:
        load_dataset("cifar10", tmp_path, download=False)
    assert str(path) in str(info.value)


def test_corrupt_cifar_tarball_raises_a_clear_error(tmp_path):
    (tmp_path / CIFAR_TARBALL).write_bytes(b"\x1f\x8b\x08\x00 truncated")
    with pytest.raises(DatasetFormatError, match="cannot extract the CIFAR-10 batches") as info:
        load_dataset("cifar10", tmp_path, download=False)
    assert CIFAR_TARBALL in str(info.value)


# ---------------------------------------------------------------- synthetic and normalize


@pytest.mark.parametrize(("shape", "expected"), [("mnist", (1, 28, 28)), ("cifar", (3, 32, 32))])
def test_synthetic_has_the_requested_shapes(tmp_path, shape, expected):
    options = {"shape": shape, "num_train": 30, "num_test": 12, "num_classes": 4, "seed": 5}
    dataset = load_dataset("synthetic", tmp_path, synthetic=options)
    assert dataset.train_x.shape == (30, *expected) and dataset.test_x.shape == (12, *expected)
    assert dataset.train_x.dtype == torch.uint8 and dataset.train_y.dtype == torch.int64
    assert dataset.input_shape == expected and dataset.num_classes == 4
    assert 0 <= int(dataset.train_y.min()) and int(dataset.train_y.max()) < 4
    assert dataset.source == "generated" and len(dataset.checksum) == 64
    assert dataset.mean.shape == dataset.std.shape == (expected[0],)


def test_synthetic_is_deterministic(tmp_path):
    small = {"num_train": 50, "num_test": 20}
    first = load_dataset("synthetic", tmp_path, synthetic={**small, "seed": 3})
    again = load_dataset("synthetic", tmp_path / "elsewhere", synthetic={**small, "seed": 3})
    other = load_dataset("synthetic", tmp_path, synthetic={**small, "seed": 4})
    for split in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(first, split), getattr(again, split))
    assert first.checksum == again.checksum != other.checksum
    torch.manual_seed(123)  # the global generator plays no part
    assert load_dataset("synthetic", tmp_path, synthetic={"seed": 0}).checksum == (
        load_dataset("synthetic", tmp_path).checksum
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"shape": "imagenet"}, "'imagenet'; valid choices: mnist, cifar"),
        ({"num_trian": 5}, "num_trian"),
        ({"num_test": 0}, "num_test=0"),
    ],
)
def test_synthetic_rejects_bad_options(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        load_dataset("synthetic", tmp_path, synthetic=options)


def test_synthetic_is_learnable(tmp_path):
    dataset = load_dataset("synthetic", tmp_path)
    torch.manual_seed(0)
    model = torch.nn.Linear(28 * 28, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    batches = EpochBatches(len(dataset.train_y), 60, torch.Generator().manual_seed(0), "cpu")
    for _ in range(200):
        idx = next(batches)
        logits = model(dataset.normalize(dataset.train_x[idx]).flatten(1))
        loss = F.cross_entropy(logits, dataset.train_y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predictions = model(dataset.normalize(dataset.test_x).flatten(1)).argmax(1)
    assert (predictions == dataset.test_y).float().mean().item() > 0.5  # chance is 0.1


def test_normalize_standardizes_the_train_set(tmp_path):
    dataset = load_dataset("synthetic", tmp_path, synthetic={"shape": "cifar", "num_train": 300})
    x = dataset.normalize(dataset.train_x)
    assert x.dtype == torch.float32 and x.shape == dataset.train_x.shape
    assert x.device == dataset.train_x.device
    assert torch.allclose(x.double().mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(x.double().std(dim=(0, 2, 3), unbiased=False), torch.ones(3, dtype=torch.float64))
    formula = (dataset.train_x.float() / 255 - dataset.mean.view(-1, 1, 1)) / dataset.std.view(-1, 1, 1)
    assert torch.allclose(x, formula, atol=1e-5)
    assert dataset.normalize(dataset.train_x[0]).shape == (3, 32, 32)
    with pytest.raises(TypeError, match="uint8"):
        dataset.normalize(x)


# ---------------------------------------------------------------- EpochBatches


def take(batches, n):
    return [next(batches).tolist() for _ in range(n)]


def test_each_epoch_is_a_permutation_without_the_ragged_tail():
    batches = EpochBatches(10, 3, torch.Generator().manual_seed(0), "cpu")
    epochs = []
    for epoch in range(4):
        drawn = take(batches, 3)
        assert batches.epoch == epoch and batches.position == 3
        flat = [i for batch in drawn for i in batch]
        assert all(len(batch) == 3 for batch in drawn)
        assert len(set(flat)) == 9 and set(flat) <= set(range(10))
        epochs.append(flat)
    assert len({tuple(e) for e in epochs}) == 4
    idx = next(batches)
    assert batches.epoch == 4 and idx.dtype == torch.int64 and idx.device.type == "cpu"


def test_batches_are_deterministic_for_a_seed():
    def run(seed):
        return take(EpochBatches(50, 7, torch.Generator().manual_seed(seed), "cpu"), 20)

    assert run(0) == run(0)
    assert run(0) != run(1)


@pytest.mark.parametrize("stop", [0, 2, 3, 5, 9])
def test_state_dict_round_trip_continues_identically(stop):
    batches = EpochBatches(10, 3, torch.Generator().manual_seed(0), "cpu")
    take(batches, stop)
    saved_at = (batches.epoch, batches.position)
    buffer = io.BytesIO()
    torch.save(batches.state_dict(), buffer)
    expected = take(batches, 10)

    resumed = EpochBatches(10, 3, torch.Generator().manual_seed(99), "cpu")
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer))
    assert (resumed.epoch, resumed.position) == saved_at
    assert take(resumed, 10) == expected
    assert resumed.epoch == batches.epoch


def test_load_state_dict_rejects_another_batch_size():
    state = EpochBatches(10, 3, torch.Generator().manual_seed(0), "cpu").state_dict()
    with pytest.raises(ValueError, match="batch_size=3"):
        EpochBatches(10, 2, torch.Generator(), "cpu").load_state_dict(state)


def test_deepcopy_leaves_the_training_order_alone():
    batches = EpochBatches(10, 3, torch.Generator().manual_seed(0), "cpu")
    reference = EpochBatches(10, 3, torch.Generator().manual_seed(0), "cpu")
    take(batches, 2)
    take(reference, 2)
    take(copy.deepcopy(batches), 7)
    assert take(batches, 6) == take(reference, 6)


@pytest.mark.parametrize("batch_size", [0, -1, 11])
def test_bad_batch_size(batch_size):
    with pytest.raises(ValueError, match=f"batch_size={batch_size}"):
        EpochBatches(10, batch_size, torch.Generator(), "cpu")


# ---------------------------------------------------------------- the real files, where installed


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist not installed")
def test_debian_fashion_mnist(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "SYSTEM_DATA_DIRS", REAL_SYSTEM_DATA_DIRS)
    dataset = load_dataset("fashion_mnist", tmp_path, download=False, search_system_dirs=True)
    assert dataset.source == str(DEBIAN_FASHION_MNIST)
    assert dataset.train_x.shape == (60000, 1, 28, 28) and dataset.test_x.shape == (10000, 1, 28, 28)
    assert dataset.num_classes == 10
    assert torch.equal(dataset.train_y.bincount(), torch.full((10,), 6000))
    assert torch.equal(dataset.test_y.bincount(), torch.full((10,), 1000))
    # The widely quoted Fashion-MNIST statistics.
    assert dataset.mean.item() == pytest.approx(0.2860, abs=1e-4)
    assert dataset.std.item() == pytest.approx(0.3530, abs=1e-4)
