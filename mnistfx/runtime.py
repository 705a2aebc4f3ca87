"""Where code runs: the device, the on-disk compile cache, and the environment results record."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from pathlib import Path

import torch

from ._cpu import BF16_FLAGS, cpu_info
from ._io import user_cache_dir
from .constants import DEVICES_HINT, VERSION
from .errors import ConfigError

_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def resolve_device(name: str) -> torch.device:
    """``torch.device(name)``, or a :class:`~mnistfx.ConfigError` that says why it cannot be used here."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {name!r}: use {DEVICES_HINT}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but no CUDA device is available here: use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r} asked for, but there are only {torch.cuda.device_count()} CUDA "
                          f"devices: use cuda:0 to cuda:{torch.cuda.device_count() - 1}")
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
            _ALLOCATOR_TUNED = bool(libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
                                    and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
        except (OSError, AttributeError):  # not glibc
            _ALLOCATOR_TUNED = False
    return _ALLOCATOR_TUNED


def use_compile_cache(folder=None) -> Path | None:
    """Keep torch.compile's kernels in a folder that outlives the process (opt in).

    Inductor caches compiled kernels on disk, by default in the system's temp folder, which is
    often cleaned; a run that finds them starts compiling in about 2 s instead of 25. This points
    the cache at ``folder`` (default: ``mnistfx/inductor`` in the user cache folder,
    ``$XDG_CACHE_HOME`` or ``~/.cache``), unless ``$TORCHINDUCTOR_CACHE_DIR`` already names one,
    which is kept. Where that folder cannot be created or written (or there is no home folder),
    inductor's own cache in the temp folder is used. The folder itself is made when torch first
    compiles.

    Returns:
        The cache folder chosen, or ``None`` for inductor's default.
    """
    if folder is None and os.environ.get(_CACHE_ENV):
        return Path(os.environ[_CACHE_ENV])
    if folder is None:
        cache = user_cache_dir()
        folder = cache / "mnistfx" / "inductor" if cache is not None else None
    elif not str(folder):
        raise ConfigError("the compile cache folder is an empty name: pass a folder")
    folder = Path(folder).expanduser().absolute() if folder is not None else None
    if folder is None or not _can_create(folder):
        return None
    os.environ[_CACHE_ENV] = str(folder)
    return folder


def _can_create(folder: Path) -> bool:
    """Whether ``folder`` is a writable folder or could be made one (nothing is created here)."""
    for path in (folder, *folder.parents):
        if os.path.lexists(path):  # a dangling link is there, and no folder can be made through it
            return path.is_dir() and os.access(path, os.W_OK | os.X_OK)
    return False


def cpu_description() -> str:
    """The CPU's model and the vector features that decide its speed with torch, e.g. ``"AMD EPYC, 2 cores:
    AVX2, AVX-512, BF16 (no AMX)"``: figures measured on one CPU kind need not hold on another."""
    model, flags = cpu_info()
    model = model or platform.processor() or platform.machine() or "unknown CPU"
    if flags:
        features = {"AVX2": {"avx2"}, "AVX-512": {"avx512f"}, "BF16": BF16_FLAGS, "AMX": {"amx_tile"}}
        have = [name for name, names in features.items() if flags & names]
        lacks = [name for name in features if name not in have]
        vector = ", ".join(have) or "none of AVX2, AVX-512, BF16, AMX"
        if have and lacks:
            vector += f" (no {', '.join(lacks)})"
    else:  # not Linux: what torch dispatches its kernels for
        vector = torch.backends.cpu.get_cpu_capability()
    return f"{model}, {os.cpu_count() or '?'} cores: {vector}"


def environment(device) -> dict:
    """What a measurement runs on: the device, its name (GPU model, or CPU threads), the CPU (see
    :func:`cpu_description`) and the versions.

    Raises:
        ConfigError: the device is unknown or not available here (see :func:`resolve_device`).
    """
    dev = resolve_device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    return {"device": str(dev), "device_name": name, "cpu": cpu_description(), "torch": torch.__version__,
            "mnistfx": VERSION}
