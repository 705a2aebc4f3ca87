"""How a pure step is compiled: one ``torch.compile``\\ d graph with static shapes, a failure to compile
as one line that says what to do, and the on-disk cache that keeps compiled kernels between runs."""

from __future__ import annotations

import os
import types
from collections.abc import Callable
from pathlib import Path

import torch

from .._io import user_cache_dir
from .._types import Device, StrPath
from ..errors import ConfigError, MnistfxError
from .distributed import is_collective_failure

_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"

# On the CPU, inductor's C++ wrapper launches the kernels from C++ instead of Python, and the
# runtime size and alignment asserts only repeat what dynamo's guards already check (shapes are
# static). Measured in one process: +6 % img/s for the train step at batch 32, no change at 256,
# and a cold compile no slower. CUDA keeps inductor's defaults (this combination is untested there).
CPU_COMPILE_OPTIONS: dict[str, str | int | bool | Callable] = {
    "cpp_wrapper": True,
    "size_asserts": False,
    "alignment_asserts": False,
    "scalar_asserts": False,
}


def compile_step(fn: Callable, device: Device, *, layout_optimization: bool = True) -> Callable:
    """``fn`` as one ``torch.compile``\\ d graph with static shapes, compiled for ``device``.

    Compiling happens at the first call; if it fails (no C++ compiler, a cache folder that cannot
    be written, ...), that call raises a one-line :class:`~mnistfx.MnistfxError` that says so.

    Arguments:
        fn: the function (e.g. a train step) to compile.
        device: the device it runs on (on the CPU, with ``CPU_COMPILE_OPTIONS``).
        layout_optimization: let inductor turn convolutions' tensors channels-last where it judges
            that faster (its default); ``False`` keeps the layout ``fn`` gives them. Steps say which
            they want by a ``layout_optimization`` attribute (DP-SGD's: ``False``).
    """
    if not isinstance(layout_optimization, bool):
        raise TypeError(f"layout_optimization must be True or False, not {layout_optimization!r}")
    options = dict(CPU_COMPILE_OPTIONS) if torch.device(device).type == "cpu" else {}
    if not layout_optimization:
        options["layout_optimization"] = False
    compiled = torch.compile(_own_code(fn), fullgraph=True, dynamic=False, options=options or None)
    ready = False

    def call(*args):
        nonlocal ready
        if ready:
            return compiled(*args)
        try:
            out = compiled(*args)
        except Exception as e:  # inductor wraps what went wrong (OSError, CalledProcessError, ...) in its own errors
            for inner in _causes(e):  # not the compiler's: a rank was stopped, or a peer failed
                if isinstance(inner, MnistfxError) or is_collective_failure(inner):
                    raise inner from None
            cause = (str(e).strip().splitlines() or [type(e).__name__])[-1][:160]
            raise MnistfxError(
                f"torch.compile failed ({cause}): run with `compile=False` (a model of one's own must "
                "also trace under torch.compile), or point TORCHINDUCTOR_CACHE_DIR at a writable "
                "folder with room"
            ) from None
        ready = True
        return out

    return call


def _own_code(fn: Callable) -> Callable:
    """``fn`` copied onto a code object of its own (a callable that is not a plain Python function is
    returned as it is).

    Dynamo keeps its compiled graphs on the code object, so every step a factory makes (one code
    object, many closures) shares one cache: compiling steps of several models in one process piles
    their graphs up to the recompile limit, and torch 2.14 fails while explaining a recompile whose
    dict arguments changed keys (``KeyError: 'fc3.bias'`` scoring a second model; pytorch#176211).
    """
    if not isinstance(fn, types.FunctionType):
        return fn
    own = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    own.__kwdefaults__ = fn.__kwdefaults__
    own.__qualname__, own.__doc__, own.__module__ = fn.__qualname__, fn.__doc__, fn.__module__
    return own


def _causes(e: BaseException) -> list[BaseException]:
    """``e`` and the exceptions it was raised from (dynamo wraps what happens while it traces)."""
    seen: list[BaseException] = []
    cause: BaseException | None = e
    while cause is not None and len(seen) < 20 and cause not in seen:
        seen.append(cause)
        cause = cause.__cause__ or cause.__context__
    return seen


def use_compile_cache(folder: StrPath | None = None) -> Path | None:
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
