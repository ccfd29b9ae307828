"""A data set that cannot be loaded is one line (a DataError, exit code 2) that names the data set, the
dirs looked in, why, and the fix: data.root a file or a dir without the files, a failed download,
damaged files. Small files in the real IDX/.gz and CIFAR formats (tests/test_data.py's writers)."""

from __future__ import annotations

import gzip
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torchvision.datasets
from conftest import REPO
from test_data import idx_bytes, write_cifar_batches, write_file, write_idx_set

from bn_repro.data import (
    CIFAR_DIR,
    CIFAR_TARBALL,
    IDX_FILES,
    DataError,
    DatasetFormatError,
    DatasetUnavailableError,
    load_dataset,
)
from bn_repro.data import dataset as data
from bn_repro.data.errors import SOURCES, brief_reason
from bn_repro.errors import UserError

TORCHVISION_CLASSES = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10"}
FILES = list(IDX_FILES.values())
# What torchvision raises offline (its mirrors, one <urlopen error> each), as of torchvision 0.2x.
TORCHVISION_OFFLINE = RuntimeError(
    "Error downloading train-images-idx3-ubyte.gz:\n"
    "Tried https://ossci-datasets.s3.amazonaws.com/mnist/, got:\n"
    "<urlopen error [Errno -2] Name or service not known>\n"
    "Tried http://yann.lecun.com/exdb/mnist/, got:\n"
    "<urlopen error [Errno -2] Name or service not known>\n"
)


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No network, no BN_REPRO_DATA, and a fake system folder (Debian's) per test, empty by default."""

    def refuse(*args, **kwargs):
        raise OSError("tests must not use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.delenv("BN_REPRO_DATA", raising=False)
    system = tmp_path / "usr-share-datasets-fashion-mnist"
    monkeypatch.setattr(data, "SYSTEM_DATA_DIRS", {"mnist": (), "fashion_mnist": (system,)})
    return system


@pytest.fixture
def system(isolated):
    return isolated


def fake_download(monkeypatch, name, error=None):
    """Replace torchvision's class for `name`: it raises `error` (None: downloads nothing)."""
    calls = []

    class Fake:
        def __init__(self, root, train=True, download=False):
            calls.append(root)
            if error is not None:
                raise error

    monkeypatch.setattr(torchvision.datasets, TORCHVISION_CLASSES[name], Fake)
    return calls


def raised(error_type, *args, **kwargs) -> str:
    """load_dataset's error message, checked to be a one-line UserError (exit code 2)."""
    with pytest.raises(error_type) as info:
        load_dataset(*args, **kwargs)
    assert isinstance(info.value, DataError) and isinstance(info.value, UserError)
    assert info.value.exit_code == 2
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- data.root named by the user


def test_a_named_root_without_the_files_is_reported_not_replaced_by_debians_copy(tmp_path, system):
    write_idx_set(system, gz=True)  # Debian's copy is installed ...
    mine = tmp_path / "mine"
    mine.mkdir()
    message = raised(DatasetUnavailableError, "fashion_mnist", mine, download=False)  # ... but not read
    assert message.startswith(
        f"Fashion-MNIST not found in {mine}/FashionMNIST/raw or {mine} (data.root={mine})"
    )
    assert "downloading is off (data.download=false)" in message
    for part in [*FILES, "raw or .gz", SOURCES["fashion_mnist"], "point data.root at the directory",
                 f"leave data.root unset: it then reads Debian's copy in {system}"]:  # fmt: skip
        assert part in message, part


def test_a_named_root_is_read_alone_and_may_be_debians_folder(tmp_path, system):
    write_idx_set(system, gz=True, seed=1)
    dataset = load_dataset("fashion_mnist", system, download=False)
    assert dataset.source == str(system)
    write_idx_set(tmp_path / "mine", seed=2)
    assert load_dataset("fashion_mnist", tmp_path / "mine", download=False).source == str(tmp_path / "mine")


def test_bn_repro_data_names_a_root_too(tmp_path, system, monkeypatch):
    write_idx_set(system, gz=True)
    monkeypatch.setenv("BN_REPRO_DATA", str(tmp_path / "env-root"))
    assert not data.is_default_root(tmp_path / "env-root") and not data.is_default_root("data")
    message = raised(DatasetUnavailableError, "fashion_mnist", tmp_path / "env-root", download=False)
    assert f"(data.root={tmp_path / 'env-root'})" in message


def test_the_default_root_falls_back_on_debians_copy(tmp_path, system, monkeypatch):
    """configs/data/*.yaml: root: ${oc.env:BN_REPRO_DATA,data}; `data` (relative to the launch dir) first."""
    monkeypatch.chdir(tmp_path)
    assert data.is_default_root("data") and data.is_default_root(Path("./data"))
    assert not data.is_default_root(tmp_path / "data")
    write_idx_set(system, gz=True, seed=1)
    assert load_dataset("fashion_mnist", "data", download=False).source == str(system)
    write_idx_set(tmp_path / "data" / "FashionMNIST" / "raw", seed=2)  # the default root's own files win
    assert load_dataset("fashion_mnist", "data", download=False).source == "data/FashionMNIST/raw"
    # search_system_dirs overrides the rule either way.
    assert load_dataset(
        "fashion_mnist", tmp_path / "x", download=False, search_system_dirs=True
    ).source == str(system)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # a default root without files of its own
    assert load_dataset("fashion_mnist", "data", download=False).source == str(system)
    raised(DatasetUnavailableError, "fashion_mnist", "data", download=False, search_system_dirs=False)


def test_the_default_root_without_any_copy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = raised(DatasetUnavailableError, "fashion_mnist", "data", download=False)
    assert message.startswith("Fashion-MNIST not found in data/FashionMNIST/raw, data or ")
    assert "(the default data.root)" in message and "apt-get install dataset-fashion-mnist" in message


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_a_root_that_is_a_file(tmp_path, monkeypatch, name):
    calls = fake_download(monkeypatch, name)
    root = tmp_path / "not-a-dir"
    root.write_text("x")
    message = raised(DataError, name, root, download=True)
    assert message.startswith(f"data.root={root} is a file, not a directory: point data.root")
    assert calls == []


def test_a_folder_with_some_of_the_files_says_which_are_missing(tmp_path):
    _, paths = write_idx_set(tmp_path / "MNIST" / "raw", gz=True)
    paths[3].unlink()
    message = raised(DatasetUnavailableError, "mnist", tmp_path, download=False)
    assert f"({tmp_path}/MNIST/raw lacks t10k-labels-idx1-ubyte)" in message


# ---------------------------------------------------------------- `python -m bn_repro.train` offline


@pytest.mark.parametrize("installed", [True, False], ids=["debian-fashion-mnist", "nothing-installed"])
def test_no_arguments_offline_is_one_line_with_the_fix(tmp_path, monkeypatch, system, installed):
    """The app's defaults (data=mnist, root `data`) on a machine without network: MNIST's download fails."""
    if installed:
        write_idx_set(system, gz=True)
    monkeypatch.chdir(tmp_path)
    calls = fake_download(monkeypatch, "mnist", TORCHVISION_OFFLINE)
    message = raised(DatasetUnavailableError, "mnist", "data", download=True, download_timeout_s=1)
    assert calls == ["data"]
    assert message.startswith(
        "MNIST not found in data/MNIST/raw or data (the default data.root); the download failed "
        "(URLError: [Errno -2] Name or service not known). Fix: put train-images-idx3-ubyte"
    )
    assert "Tried" not in message and SOURCES["mnist"] in message
    assert (
        "offline, data=fashion_mnist (e.g. experiment=fig1_fashion_mnist) with the default data.root"
        in message
    )
    assert "data=synthetic needs no files" in message
    if installed:
        assert f"reads Debian's copy in {system}" in message
    else:
        assert "once apt-get install dataset-fashion-mnist has put it in place" in message


def test_brief_reason():
    assert brief_reason(TORCHVISION_OFFLINE) == "URLError: [Errno -2] Name or service not known"
    assert brief_reason(TimeoutError("timed out")) == "TimeoutError: timed out"
    assert (
        brief_reason(PermissionError(13, "Permission denied"))
        == "PermissionError: [Errno 13] Permission denied"
    )
    assert brief_reason(OSError()) == "OSError"
    long = brief_reason(ValueError("x" * 500))
    assert len(long) == 160 and long.endswith("...")


# ---------------------------------------------------------------- damaged files


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda b: gzip.compress(b, mtime=0)[:-40], "not a readable gzip file"),
        (lambda b: b[:-100], "IDX payload is"),
        (lambda b: b"<html>404 Not Found</html>", "bad IDX magic number"),
    ],
    ids=["truncated-gz", "truncated-raw", "an-html-page"],
)
def test_a_damaged_file_is_named_with_the_fix(tmp_path, make, expected):
    _, paths = write_idx_set(tmp_path / "MNIST" / "raw")
    damaged = paths[0]
    damaged.write_bytes(make(damaged.read_bytes()))
    message = raised(DatasetFormatError, "mnist", tmp_path, download=False)
    assert message.startswith(f"{damaged}: ") and expected in message
    assert f"replace it with a good copy (from {SOURCES['mnist']})" in message
    assert f"or delete it and run again, which downloads MNIST into {tmp_path}" in message


def test_a_damaged_debian_copy_says_to_reinstall_the_package(tmp_path, monkeypatch, system):
    _, paths = write_idx_set(system, gz=True)
    paths[2].write_bytes(paths[2].read_bytes()[:-30])
    monkeypatch.chdir(tmp_path)
    message = raised(DatasetFormatError, "fashion_mnist", "data", download=False)
    assert message.startswith(f"{paths[2]}: not a readable gzip file")
    assert message.endswith("Debian's copy is damaged: apt-get install --reinstall dataset-fashion-mnist")


def test_files_of_two_sets_are_reported(tmp_path):
    write_idx_set(tmp_path, n_train=20)
    write_file(tmp_path / IDX_FILES["train_labels"], idx_bytes(np.zeros(19)))
    message = raised(DatasetFormatError, "mnist", tmp_path, download=False)
    assert "train has 20 images but 19 labels; the files are not one set" in message


def test_a_file_that_cannot_be_read(tmp_path, monkeypatch):
    _, paths = write_idx_set(tmp_path)
    real = Path.read_bytes

    def read_bytes(self):
        if self == paths[1]:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    assert (
        raised(DataError, "mnist", tmp_path, download=False) == f"cannot read {paths[1]}: Permission denied"
    )


def test_cifar10_missing_damaged_batch_and_damaged_archive(tmp_path, monkeypatch):
    fake_download(monkeypatch, "cifar10", TORCHVISION_OFFLINE)
    message = raised(DatasetUnavailableError, "cifar10", tmp_path, download=True)
    assert message.startswith(f"CIFAR-10 not found in data.root={tmp_path}: no {CIFAR_TARBALL} there, and ")
    assert "the download failed (URLError: [Errno -2] Name or service not known)" in message
    assert f"Fix: put {CIFAR_TARBALL} (from {SOURCES['cifar10']}) in {tmp_path}" in message

    write_cifar_batches(tmp_path / CIFAR_DIR)
    (tmp_path / CIFAR_DIR / "data_batch_2").write_bytes(b"\x80\x02trunc")
    message = raised(DatasetFormatError, "cifar10", tmp_path, download=False)
    assert message.startswith(
        f"{tmp_path / CIFAR_DIR / 'data_batch_2'}: not a readable CIFAR-10 pickle batch"
    )
    assert f"the batch is damaged: delete {tmp_path / CIFAR_DIR} and put a good {CIFAR_TARBALL}" in message

    other = tmp_path / "other"
    other.mkdir()
    (other / CIFAR_TARBALL).write_bytes(b"\x1f\x8b\x08\x00 truncated")
    message = raised(DatasetFormatError, "cifar10", other, download=False)
    assert "cannot extract the CIFAR-10 batches" in message and "delete it and download it again" in message


# ---------------------------------------------------------------- the app


def test_the_app_prints_one_line_and_exits_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bn_repro.train", "data=fashion_mnist", f"data.root={tmp_path / 'nothing'}",
         "data.download=false", "trainer.device=cpu", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith(f"error: Fashion-MNIST not found in {tmp_path / 'nothing'}/FashionMNIST/raw")
