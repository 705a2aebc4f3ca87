"""The published MNIST-C files (Mu & Gilmer 2019), read from a folder a user downloaded.

MNIST-C is a download (zenodo.org/record/3239543, ``mnist_c.zip``) that mnistfx does not fetch: unpacked,
it holds one folder per corruption, each with ``test_images.npy`` (uint8, 10,000 x 28 x 28 x 1) and
``test_labels.npy`` (the digits). :func:`load_mnist_c` reads the test sets of the 15 corruptions from
there, checking each file's kind, size and header before any data is read; NumPy's loader runs with
``allow_pickle=False``, so a file cannot run code.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from numpy.lib import format as npy_format

from .._io import open_checked
from .._types import StrPath
from ..constants import CORRUPTIONS
from ..errors import DataError

_MAX_IMAGES = 70_000
_FIX = "pass the folder MNIST-C's mnist_c.zip unpacks to (one folder per corruption, holding test_images.npy)"


def load_mnist_c(folder: StrPath, names: tuple[str, ...] = CORRUPTIONS) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The test images and labels of MNIST-C's corruptions, read from the unpacked download.

    Arguments:
        folder: the folder that holds one folder per corruption (``shot_noise/``, ``fog/``, ...).
        names: the corruptions to read (default: all 15, :data:`~mnistfx.CORRUPTIONS`).

    Returns:
        ``{name: (images, labels)}``: uint8 images (N, 28, 28) and int64 labels (N,).

    Raises:
        DataError: a folder or file is missing, is not a regular file, is too large, is not a NumPy
            ``.npy`` file of uint8 images (N, 28, 28) or (N, 28, 28, 1) and N digits, or the images and
            labels differ in number.
    """
    if not isinstance(folder, (str, os.PathLike)):
        raise TypeError(f"folder must be a folder's path (str or os.PathLike), not {type(folder).__name__}")
    names = (names,) if isinstance(names, str) else tuple(names)
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown or not names:
        raise DataError(f"unknown corruptions {unknown!r}: choose from {', '.join(CORRUPTIONS)}")
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"MNIST-C folder {root} is not a folder: {_FIX}")
    missing = [n for n in names if not (root / n).is_dir()]
    if missing:
        raise DataError(f"MNIST-C folder {root} has no {', '.join(missing)}: {_FIX}")
    out = {}
    for name in names:
        images = _read_npy(root / name / "test_images.npy", image=True)
        labels = _read_npy(root / name / "test_labels.npy", image=False)
        if len(images) != len(labels):
            raise DataError(f"{root / name} holds {len(images):,} images but {len(labels):,} labels: {_FIX}")
        out[name] = (torch.from_numpy(images.reshape(-1, 28, 28)), torch.from_numpy(labels.astype(np.int64)))
    return out


def _read_npy(path: Path, *, image: bool) -> np.ndarray:
    """One checked ``.npy`` array: its header first (dtype, shape), then exactly the bytes it says."""
    limit = 128 + _MAX_IMAGES * (784 if image else 8)
    what = "MNIST-C file"
    with open_checked(path, limit, what=what, fix=_FIX, error=DataError) as (f, _):
        try:
            version = npy_format.read_magic(f)
            read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
            shape, fortran, dtype = read_header(f, max_header_size=1024)
        except (ValueError, OSError, SyntaxError) as e:
            raise DataError(f"{path} is not a NumPy .npy file ({str(e)[:80]}): {_FIX}") from None
        ok_dtype = dtype == np.uint8 if image else dtype.kind in "iu" and dtype.itemsize <= 8
        ok_shape = len(shape) in (3, 4) and tuple(shape[1:]) in ((28, 28), (28, 28, 1)) if image else len(shape) == 1
        if not (ok_dtype and ok_shape and not fortran and 0 < shape[0] <= _MAX_IMAGES):
            want = "uint8 images (N, 28, 28, 1)" if image else "N integer labels"
            raise DataError(f"{path} holds {dtype} {tuple(shape)}, not {want}: {_FIX}")
        count = int(np.prod(shape))
        data = np.fromfile(f, dtype=dtype, count=count)
        if data.size != count or f.read(1):
            raise DataError(f"{path} is cut short or has bytes after its array: {_FIX}")
    array = data.reshape(shape)
    if not image and not bool(((array >= 0) & (array <= 9)).all()):
        raise DataError(f"{path} holds labels outside 0-9: {_FIX}")
    return array
