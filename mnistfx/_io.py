"""Internal: files written atomically (a reader sees the old file or the new one, never half of
one), files read only after ``stat`` says they can be, and strict JSON."""

from __future__ import annotations

import contextlib
import json
import math
import os
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

STALE_SECONDS = 3600  # a save takes seconds: a temp file this old belongs to a killed writer


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder, fsync and rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def remove_stale_temps(folder, names) -> None:
    """Remove temp files that killed saves of ``names`` left in ``folder`` (only old ones, so
    that a save still running in another process keeps its file); errors are ignored."""
    cutoff = time.time() - STALE_SECONDS
    for name in names:
        for tmp in Path(folder).glob(f".{name}.*.tmp"):
            try:
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
            except OSError:
                pass


@contextlib.contextmanager
def open_checked(path, limit: int, *, what: str, fix: str, error):
    """Open the regular file ``path`` for reading, checked with ``stat`` first (kind and size).

    Arguments as :func:`read_limited`; yields ``(file, size)``.
    """
    path = Path(path)
    try:
        info = path.stat()  # before opening: opening a FIFO would wait for a writer
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{what} {path} is not a regular file: {fix}")
        if info.st_size > limit:
            raise error(
                f"{what} {path} is {info.st_size:,} bytes, more than any {what} mnistfx reads ({limit:,}): {fix}"
            )
        f = open(path, "rb")
    except OSError as e:
        raise error(f"cannot read {what} {path} ({e.strerror}): {fix}") from None
    with f:
        yield f, info.st_size


def read_limited(path, limit: int, *, what: str, fix: str, error) -> bytes:
    """The bytes of the regular file ``path``, checked with ``stat`` before anything is read.

    Arguments:
        path: the file.
        limit: the most bytes such a file can hold; a larger one is refused unread.
        what: what the file is, for messages ("weights", "image").
        fix: what the user can do, ending every message.
        error: the exception class to raise.
    """
    with open_checked(path, limit, what=what, fix=fix, error=error) as (f, _):
        try:
            data = f.read(limit + 1)
        except OSError as e:
            raise error(f"cannot read {what} {path} ({e.strerror}): {fix}") from None
    if len(data) > limit:  # it grew while being read
        raise error(f"{what} {path} is more than {limit:,} bytes: {fix}")
    return data


def user_cache_dir() -> Path | None:
    """The user's cache folder: ``$XDG_CACHE_HOME`` if it is an absolute path, else ``~/.cache``;
    ``None`` where there is no home folder."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):
        return Path(xdg)
    home = os.environ.get("HOME")
    if home is not None:  # set: use it only if it is a real path ("" would mean the current folder)
        return Path(home) / ".cache" if os.path.isabs(home) else None
    try:
        return Path.home() / ".cache"
    except (RuntimeError, KeyError):
        return None


def finite_json(value):
    """``value`` with every NaN or infinite float replaced by ``None``, so that it is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def to_json(value: Any, **kwargs: Any) -> str:
    """``value`` as strict JSON (no ``NaN`` or ``Infinity``: non-finite numbers become ``null``)."""
    return json.dumps(finite_json(value), allow_nan=False, **kwargs)


def write_new(path: Path, data: bytes, overwrite: bool, error: type = OSError) -> None:
    """Write ``data`` atomically, refusing (with ``error``) to replace a file unless ``overwrite``."""
    if not overwrite and os.path.lexists(path):
        raise error(f"{path} exists: pass `overwrite=True` to replace it, or another `path`")
    atomic_write_bytes(path, data)


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type's name if it has none), at most 80 characters."""
    try:
        text = str(e)
    except Exception:  # an exception whose message itself fails (user code can raise anything)
        text = ""
    return (text.splitlines() or [type(e).__name__])[0][:80]
