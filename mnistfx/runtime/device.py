"""Where code runs: the device, how its memory is kept, and the record of what a measurement ran on."""

from __future__ import annotations

import ctypes
import ctypes.util

import torch

from .._types import Device
from ..constants import DEVICES_HINT, VERSION
from ..errors import ConfigError
from .cpu import cpu_description


def resolve_device(name: Device) -> torch.device:
    """``torch.device(name)``, or a :class:`~mnistfx.ConfigError` that says why it cannot be used here."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {name!r}: use {DEVICES_HINT}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but no CUDA device is available here: use `device='cpu'`")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(
            f"device {name!r} asked for, but there are only {torch.cuda.device_count()} CUDA "
            f"devices: use cuda:0 to cuda:{torch.cuda.device_count() - 1}"
        )
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {name!r} is not supported: use {DEVICES_HINT}")
    return device


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_ALLOCATOR_TUNED = False


def keep_freed_memory() -> bool:
    """Let glibc's ``malloc`` keep freed memory for the next allocation instead of giving it back to
    the system (on other C libraries: nothing). Returns whether it is in effect.

    Every call of a compiled step allocates its outputs afresh. An ensemble's tensors are tens of
    MB each, above glibc's default limits, so each step would map fresh pages and fault on every
    one of them (measured on the 2-core CPU: an 8-member ``tuned`` step about a fifth slower
    without this). A single model's tensors are small enough not to notice. The setting is
    process-wide: :func:`~mnistfx.train` makes it for ensembles on the CPU.
    """
    global _ALLOCATOR_TUNED
    if not _ALLOCATOR_TUNED:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            # the largest mmap threshold glibc accepts (32 MB), and a trim threshold that keeps 1 GB
            _ALLOCATOR_TUNED = bool(
                libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20) and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
            )
        except (OSError, AttributeError):  # not glibc
            _ALLOCATOR_TUNED = False
    return _ALLOCATOR_TUNED


def environment(device: Device) -> dict:
    """What a measurement runs on: the device, its name (GPU model, or CPU threads), the CPU (see
    :func:`cpu_description`) and the versions.

    Raises:
        ConfigError: the device is unknown or not available here (see :func:`resolve_device`).
    """
    dev = resolve_device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    return {
        "device": str(dev),
        "device_name": name,
        "cpu": cpu_description(),
        "torch": torch.__version__,
        "mnistfx": VERSION,
    }
