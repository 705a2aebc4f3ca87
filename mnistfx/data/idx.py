"""MNIST's four files: where they live, their known SHA-256 sums, and the IDX format they use.

The layout is torchvision's, ``ROOT/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``, so
``torchvision.datasets.MNIST(ROOT)`` reads the same files. An IDX file is a big-endian header
(magic 2051 with N, 28, 28 for images; 2049 with N for labels) followed by the uint8 bytes.

Internal to :mod:`mnistfx.data.mnist` and :mod:`mnistfx.data.fetch`, except :func:`default_root`.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import numpy as np

from .._io import user_cache_dir
from ..errors import DataError

# name -> (sha256 of the uncompressed IDX file, IDX magic, number of items)
IDX_FILES = {
    "train-images-idx3-ubyte": ("ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db", 2051, 60000),
    "train-labels-idx1-ubyte": ("65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5", 2049, 60000),
    "t10k-images-idx3-ubyte": ("0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7", 2051, 10000),
    "t10k-labels-idx1-ubyte": ("ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2", 2049, 10000),
}


def default_root() -> Path:
    """The data folder: ``$MNISTFX_DATA`` if set, else ``mnistfx`` in the user cache folder
    (``$XDG_CACHE_HOME/mnistfx``, ``~/.cache/mnistfx``)."""
    env = os.environ.get("MNISTFX_DATA")
    if env:
        return Path(env).expanduser()
    cache = user_cache_dir()
    if cache is None:
        raise DataError("there is no home folder for the data: set MNISTFX_DATA or pass a data root")
    return cache / "mnistfx"


def raw_dir(root=None) -> Path:
    """``ROOT/MNIST/raw``, the folder torchvision's ``datasets.MNIST`` reads."""
    return Path(root if root is not None else default_root()).expanduser() / "MNIST" / "raw"


def check_raw_dir(raw: Path) -> None:
    """Raise :class:`DataError` if the raw folder's path is taken by a file."""
    if raw.exists() and not raw.is_dir():
        raise DataError(f"data folder {raw} is a file, not a folder: remove it or pass another data root")


def missing_files(raw: Path) -> list[str]:
    """The IDX files absent from ``raw``; a name taken by something else (a folder, FIFO, device or
    dangling link) is a :class:`DataError`, never "absent", so that a fetch does not replace it."""
    missing = []
    for name in IDX_FILES:
        path = raw / name
        if not os.path.lexists(path):
            missing.append(name)
        elif not path.is_file():
            raise DataError(
                f"MNIST file {path} is not a regular file: remove it and run `fetch_mnist()` to fetch "
                "MNIST, or pass another data root"
            )
    return missing


def sha256(data: bytes) -> str:
    """The SHA-256 of ``data`` as hex."""
    return hashlib.sha256(data).hexdigest()


def read_idx(path: Path) -> np.ndarray:
    """Read one of the four IDX files, checking its kind, magic, shape and size before reading it
    whole, and that labels are digits."""
    _, magic, count = IDX_FILES[path.name]
    shape = (count, 28, 28) if magic == 2051 else (count,)
    header = 4 * (1 + len(shape))
    size = header + int(np.prod(shape))
    fix = "delete it and run `fetch_mnist()` to fetch it again"
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise DataError(f"MNIST file {path} is not a regular file: {fix}")
        with open(path, "rb") as f:
            head = f.read(header)
            if len(head) < header:
                raise DataError(f"MNIST file {path} is truncated ({len(head)} bytes): {fix}")
            got_magic, *dims = np.frombuffer(head, dtype=">u4").tolist()
            if got_magic != magic:
                raise DataError(f"MNIST file {path} has magic number {got_magic}, expected {magic}: {fix}")
            if tuple(dims) != shape:
                raise DataError(f"MNIST file {path} holds shape {tuple(dims)}, expected {shape}: {fix}")
            if info.st_size != size:
                raise DataError(f"MNIST file {path} is {info.st_size} bytes, expected {size}: {fix}")
            array = np.frombuffer(f.read(size - header), dtype=np.uint8).reshape(shape).copy()
    except OSError as e:
        raise DataError(f"cannot read MNIST file {path} ({e.strerror}): {fix}") from None
    if magic == 2049 and array.max(initial=0) > 9:
        raise DataError(f"MNIST file {path} holds label {int(array.max())}, but labels are digits 0-9: {fix}")
    return array


def file_size(name: str) -> int:
    """The size in bytes of the IDX file ``name``."""
    _, magic, count = IDX_FILES[name]
    return 4 * (2 if magic == 2049 else 4) + count * (784 if magic == 2051 else 1)


def idx_bytes(array: np.ndarray) -> bytes:
    """A uint8 array (N, 28, 28) or (N,) as the bytes of an IDX file."""
    magic = 2051 if array.ndim == 3 else 2049
    header = np.array([magic, *array.shape], dtype=">u4").tobytes()
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
