"""The MNIST data set as tensors: load it (fetching it when absent) and verify its files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._io import read_limited
from .._types import StrPath
from ..constants import MNIST_TRAIN_SIZE
from ..errors import DataError
from ..rng import fold_in
from .fetch import fetch_mnist
from .idx import IDX_FILES, check_raw_dir, file_size, missing_files, raw_dir, read_idx, sha256


@dataclass(frozen=True)
class MNIST:
    """The MNIST data set as CPU tensors.

    Attributes:
        train_images: uint8 tensor of shape (60000, 28, 28).
        train_labels: int64 tensor of shape (60000,).
        test_images: uint8 tensor of shape (10000, 28, 28).
        test_labels: int64 tensor of shape (10000,).
        root: the folder that holds ``MNIST/raw/``.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    root: Path


def load_mnist(root: StrPath | None = None, *, download: bool = True) -> MNIST:
    """Load MNIST from ``root``, fetching and verifying it first if it is absent.

    Arguments:
        root: the data folder (default: :func:`~mnistfx.default_root`).
        download: fetch the files when absent; with ``False`` a missing file is an error.

    Returns:
        An :class:`MNIST` with uint8 images and int64 labels.

    Raises:
        DataError: the files are missing (and could not be fetched) or corrupt.
    """
    raw = raw_dir(root)
    check_raw_dir(raw)
    missing = missing_files(raw) if raw.is_dir() else list(IDX_FILES)
    if missing:
        if not download:
            raise DataError(f"MNIST is missing from {raw} ({missing[0]}): run `fetch_mnist()` to fetch it")
        fetch_mnist(root)
    arrays = {name: read_idx(raw / name) for name in IDX_FILES}
    return MNIST(
        train_images=torch.from_numpy(arrays["train-images-idx3-ubyte"]),
        train_labels=torch.from_numpy(arrays["train-labels-idx1-ubyte"].astype(np.int64)),
        test_images=torch.from_numpy(arrays["t10k-images-idx3-ubyte"]),
        test_labels=torch.from_numpy(arrays["t10k-labels-idx1-ubyte"].astype(np.int64)),
        root=raw.parent.parent,
    )


def verify_mnist(root: StrPath | None = None) -> dict[str, str]:
    """Check every IDX file's SHA-256 against the known sums.

    Returns:
        A dict from file name to its (matching) SHA-256.

    Raises:
        DataError: a file is missing or its hash differs.
    """
    raw = raw_dir(root)
    sums = {}
    for name, (expected, _, _) in IDX_FILES.items():
        path = raw / name
        if not path.is_file():
            raise DataError(f"MNIST file {path} is missing: run `fetch_mnist()` to fetch it")
        got = sha256(
            read_limited(
                path,
                file_size(name),
                what="MNIST file",
                error=DataError,
                fix="run `fetch_mnist(force=True)` to fetch it again",
            )
        )
        if got != expected:
            raise DataError(
                f"MNIST file {path} has sha256 {got[:12]}…, expected {expected[:12]}…: "
                "run `fetch_mnist(force=True)` to fetch it again"
            )
        sums[name] = got
    return sums


def train_val_split(seed: int, val_size: int, n: int = MNIST_TRAIN_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """The seed's fixed ``(train, validation)`` index split of the ``n`` training images."""
    g = torch.Generator().manual_seed(fold_in(seed, "split"))
    perm = torch.randperm(n, generator=g)
    return perm[val_size:], perm[:val_size]
