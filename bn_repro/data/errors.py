"""Data sets the run cannot read, reported in one line (`error: <message>`, exit code 2) that names the
data set, where it was looked for, why it is not there, and what to do. Torch-free.

    raise DatasetUnavailableError("MNIST not found in data/MNIST/raw or data ...; the download failed ...")
"""

from __future__ import annotations

import re

from bn_repro.errors import UserError

__all__ = ["DataError", "DatasetFormatError", "DatasetUnavailableError", "brief_reason"]

TITLES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}
# Where each data set's files can be had (torchvision's own mirror for MNIST).
SOURCES = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion_mnist": "https://github.com/zalandoresearch/fashion-mnist",
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar.html",
}


class DataError(UserError):
    """A data set the run cannot use: a wrong data.root, missing files, a failed download, a damaged file."""


class DatasetUnavailableError(DataError, RuntimeError):
    """The dataset's files are not on this machine and could not be downloaded."""


class DatasetFormatError(DataError, ValueError):
    """A dataset file is there but does not hold what its format promises."""


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def brief_reason(error: BaseException, limit: int = 160) -> str:
    """`Type: detail` of a failed download on one line. torchvision's error lists every mirror it tried;
    the last `<urlopen error ...>` in it is the cause (e.g. `URLError: [Errno -2] Name or service not
    known` offline)."""
    text = str(error)
    causes = re.findall(r"<urlopen error (.*?)>", text, flags=re.DOTALL)
    if causes:
        reason = f"URLError: {one_line(causes[-1])}"
    else:
        first = next((line for line in text.splitlines() if line.strip()), "")
        reason = f"{type(error).__name__}: {one_line(first)}" if first else type(error).__name__
    return reason if len(reason) <= limit else reason[: limit - 3] + "..."
