"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

import os
import tempfile
import time
from pathlib import Path

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
